"""Fine-tuning pretrained backbones for image classification (full fine-tune, linear probe, layer-wise lr decay).

    python recipes/finetune_classification.py --config recipes/finetune_fashion_mnist.yaml \\
        model.model_name_or_path=outputs/dino-fashion-mnist-demo

See ``hf_ssl.finetuning.run`` for the steps, ``hf_ssl.finetuning.arguments`` for the recipe keys.
"""

from hf_ssl.finetuning.metrics import classification_metrics, compute_metrics

__all__ = ["classification_metrics", "compute_metrics"]
