"""Pretrain BYOL (Grill et al., 2020) with the transformers Trainer or a raw Accelerate loop (training.engine).

    python recipes/train_byol.py --config recipes/byol_fashion_mnist_demo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/train_byol.py \\
        --config recipes/byol.yaml data.data_dir=/path/to/images --output_dir outputs/run1

Every key of the YAML file can be overridden as section.key=value (or --key value for a key only one
section has); --help lists them all. The target network follows the online one as an exponential moving
average after every optimizer step (training.teacher_momentum -> training.teacher_momentum_end on a cosine).
The output directory receives the hf_ssl model, the online backbone as a plain transformers model in
backbone/, the image processor, the resolved recipe.yaml and a model card. The steps themselves are
hf_ssl.training.pretrain.run_pretraining.
"""

import sys

from hf_ssl.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main(method="byol", description=__doc__))
