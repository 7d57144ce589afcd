"""Pretrain DINO (Caron et al., 2021) with the transformers Trainer or a raw Accelerate loop (training.engine).

    python recipes/train_dino.py --config recipes/dino_fashion_mnist_demo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/train_dino.py \\
        --config recipes/dino.yaml data.data_dir=/path/to/images --output_dir outputs/run1

Every key of the YAML file can be overridden as section.key=value (or --key value for a key only one
section has, e.g. --max_steps 100); --help lists them all. Checkpoints go to <output_dir>/checkpoint-<step>;
--resume auto continues from the latest (SIGTERM/SIGINT and training.max_time_seconds save one and stop).
The output directory receives the hf_ssl model (AutoModelForPreTraining / AutoModel), the teacher backbone
as a plain transformers model in backbone/, the image processor, the resolved recipe.yaml and a model card.
The steps themselves (data, model, k-NN, trainer, outputs) are hf_ssl.training.pretrain.run_pretraining;
recipes/pretrain.py runs any method's recipe the same way.
"""

import sys

from hf_ssl.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main(method="dino", description=__doc__))
