"""hf_ssl: self-supervised vision pretraining as Hugging Face transformers models.

Importing the package registers every method with the transformers Auto classes, so
``AutoModel.from_pretrained`` and ``AutoModelForPreTraining.from_pretrained`` load hf_ssl checkpoints.
"""

__version__ = "0.1.0"
