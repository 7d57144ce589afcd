"""hf_ssl: self-supervised pretraining as Hugging Face transformers models.

Importing the package registers every method shipped with it (``hf_ssl.training.methods``) with the transformers
Auto classes, so ``AutoModel.from_pretrained`` and ``AutoModelForPreTraining.from_pretrained`` load hf_ssl
checkpoints.
"""

from .models import (
    ByolConfig,
    ByolForPreTraining,
    ByolForPretraining,
    ByolLoss,
    ByolModel,
    DinoConfig,
    DinoForPreTraining,
    DinoForPretraining,
    DinoHead,
    DinoLoss,
    DinoModel,
    HJepaConfig,
    HJepaFeatureModel,
    HJepaForPreTraining,
    HJepaForPretraining,
    HJepaLoss,
    HJepaPredictor,
    IJepaFeatureModel,
    IJepaForPreTraining,
    IJepaForPretraining,
    IJepaLoss,
    IJepaPredictor,
    IJepaPretrainingConfig,
    NTXentLoss,
    SimClrConfig,
    SimClrForPreTraining,
    SimClrForPretraining,
    SimClrModel,
    SimClrProjectionHead,
    VicRegConfig,
    VicRegForPreTraining,
    VicRegForPretraining,
    VicRegLoss,
    VicRegModel,
)
from .training.methods.registry import load_builtin_methods

__version__ = "0.1.0"

load_builtin_methods()  # each method registers its config and models with the Auto classes

__all__ = [
    "ByolConfig",
    "ByolForPreTraining",
    "ByolLoss",
    "ByolModel",
    "DinoConfig",
    "DinoForPreTraining",
    "DinoHead",
    "DinoLoss",
    "DinoModel",
    "HJepaConfig",
    "HJepaFeatureModel",
    "HJepaForPreTraining",
    "HJepaLoss",
    "HJepaPredictor",
    "IJepaFeatureModel",
    "IJepaForPreTraining",
    "IJepaLoss",
    "IJepaPredictor",
    "IJepaPretrainingConfig",
    "NTXentLoss",
    "SimClrConfig",
    "SimClrForPreTraining",
    "SimClrModel",
    "SimClrProjectionHead",
    "VicRegConfig",
    "VicRegForPreTraining",
    "VicRegLoss",
    "VicRegModel",
    "__version__",
    # the names before transformers' spelling: the same classes, so that code written for them keeps working
    "ByolForPretraining",
    "DinoForPretraining",
    "HJepaForPretraining",
    "IJepaForPretraining",
    "SimClrForPretraining",
    "VicRegForPretraining",
]
