"""Pretrain VICReg (Bardes et al., 2022) with the transformers Trainer or a raw Accelerate loop (training.engine).

    python recipes/train_vicreg.py --config recipes/vicreg_fashion_mnist_demo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/train_vicreg.py \\
        --config recipes/vicreg.yaml data.data_dir=/path/to/images --output_dir outputs/run1

Every key of the YAML file can be overridden as section.key=value (or --key value for a key only one
section has); --help lists them all. The variance and covariance terms are computed over the global batch:
under several processes the expanded embeddings are gathered with their gradients. The output directory
receives the hf_ssl model, the backbone as a plain transformers model in backbone/, the image processor, the
resolved recipe.yaml and a model card. The steps themselves are hf_ssl.training.pretrain.run_pretraining.
"""

import sys

from hf_ssl.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main(method="vicreg", description=__doc__))
