"""Pretrain I-JEPA (Assran et al., 2023) with the transformers Trainer or a raw Accelerate loop (training.engine).

    python recipes/train_ijepa.py --config recipes/ijepa_fashion_mnist_demo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/train_ijepa.py \\
        --config recipes/ijepa.yaml data.data_dir=/path/to/images --output_dir outputs/run1

Every key of the YAML file can be overridden as section.key=value (or --key value for a key only one
section has); --help lists them all. The context encoder sees the context block of each image (its masked
patches dropped), the predictor predicts the EMA target encoder's features of the target blocks; the masks
are drawn by the collator in the DataLoader workers. The output directory receives the hf_ssl model, the
target encoder as a plain transformers IJepaModel in backbone/, the image processor, the resolved recipe.yaml
and a model card. The steps themselves are hf_ssl.training.pretrain.run_pretraining.
"""

import sys

from hf_ssl.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main(method="ijepa", description=__doc__))
