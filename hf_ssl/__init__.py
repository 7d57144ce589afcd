"""hf_ssl: self-supervised pretraining as Hugging Face transformers models.

Importing the package registers every method shipped with it (``hf_ssl.training.methods``) with the transformers
Auto classes, so ``AutoModel.from_pretrained`` and ``AutoModelForPreTraining.from_pretrained`` load hf_ssl
checkpoints.
"""

from .models import *  # noqa: F403 (the public names of hf_ssl.models are the package's)
from .models import __all__ as _model_names
from .training.methods.registry import load_builtin_methods

__version__ = "0.1.0"

load_builtin_methods()  # each method registers its config and models with the Auto classes

__all__ = [*_model_names, "__version__"]
