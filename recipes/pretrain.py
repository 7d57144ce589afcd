"""Pretrain any registered method from its recipe, with the transformers Trainer or a raw Accelerate loop
(training.engine); the recipe's `method:` key picks the method (`hf-ssl methods` lists them).

    python recipes/pretrain.py --config recipes/simclr_fashion_mnist_demo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/pretrain.py \\
        --config recipes/dino.yaml data.data_dir=/path/to/images --output_dir outputs/run1

The same as `hf-ssl pretrain --config ...`. Every key of the YAML file can be overridden as section.key=value
(or --key value for a key only one section has); --help lists the keys of the recipe's method. Checkpoints go to
<output_dir>/checkpoint-<step>; --resume auto continues from the latest. recipes/train_<method>.py are the same
script with the method fixed (a recipe without a `method:` key is read as that method's).
"""

import sys

from hf_ssl.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
