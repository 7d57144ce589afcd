"""Fine-tune a pretrained backbone for image classification, in the conventions of transformers' image-classification
example (AutoModelForImageClassification, label2id / id2label from the dataset, Trainer, best checkpoint by validation
accuracy).

    python recipes/finetune_classification.py --config recipes/finetune_fashion_mnist.yaml \\
        model.model_name_or_path=outputs/dino-fashion-mnist-demo
    python recipes/finetune_classification.py --config recipes/finetune_fashion_mnist_linear_probe.yaml
    accelerate launch recipes/finetune_classification.py --config recipes/finetune_vit_layer_decay.yaml \\
        model.model_name_or_path=org/dino-vits16 data.dataset=imagefolder data.data_dir=/path/to/images

model.model_name_or_path takes an hf_ssl run (folder or Hub repo: its backbone/ is used), a checkpoint-<step>
folder, an exported backbone, or any transformers vision model. model.mode: full or linear_probe;
model.layer_decay: layer-wise lr decay for ViTs. --resume auto / hub continues a cut run. --help lists every key.
The steps themselves are hf_ssl.finetuning.run.run_finetuning.
"""

import sys

from hf_ssl.finetuning.run import main

if __name__ == "__main__":
    sys.exit(main())
