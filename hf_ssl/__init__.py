"""hf_ssl: self-supervised vision pretraining as Hugging Face transformers models.

Importing the package registers every method with the transformers Auto classes, so
``AutoModel.from_pretrained`` and ``AutoModelForPreTraining.from_pretrained`` load hf_ssl checkpoints.
"""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .models import (
    ByolConfig,
    ByolForPretraining,
    ByolLoss,
    ByolModel,
    DinoConfig,
    DinoForPretraining,
    DinoHead,
    DinoLoss,
    DinoModel,
    HJepaConfig,
    HJepaFeatureModel,
    HJepaForPretraining,
    HJepaLoss,
    HJepaPredictor,
    IJepaFeatureModel,
    IJepaForPretraining,
    IJepaLoss,
    IJepaPredictor,
    IJepaPretrainingConfig,
    NTXentLoss,
    SimClrConfig,
    SimClrForPretraining,
    SimClrModel,
    SimClrProjectionHead,
    VicRegConfig,
    VicRegForPretraining,
    VicRegLoss,
    VicRegModel,
)

__version__ = "0.1.0"

AutoConfig.register(DinoConfig.model_type, DinoConfig, exist_ok=True)
AutoModel.register(DinoConfig, DinoModel, exist_ok=True)
AutoModelForPreTraining.register(DinoConfig, DinoForPretraining, exist_ok=True)
AutoConfig.register(SimClrConfig.model_type, SimClrConfig, exist_ok=True)
AutoModel.register(SimClrConfig, SimClrModel, exist_ok=True)
AutoModelForPreTraining.register(SimClrConfig, SimClrForPretraining, exist_ok=True)
AutoConfig.register(IJepaPretrainingConfig.model_type, IJepaPretrainingConfig, exist_ok=True)
AutoModel.register(IJepaPretrainingConfig, IJepaFeatureModel, exist_ok=True)
AutoModelForPreTraining.register(IJepaPretrainingConfig, IJepaForPretraining, exist_ok=True)
AutoConfig.register(HJepaConfig.model_type, HJepaConfig, exist_ok=True)
AutoModel.register(HJepaConfig, HJepaFeatureModel, exist_ok=True)
AutoModelForPreTraining.register(HJepaConfig, HJepaForPretraining, exist_ok=True)
AutoConfig.register(ByolConfig.model_type, ByolConfig, exist_ok=True)
AutoModel.register(ByolConfig, ByolModel, exist_ok=True)
AutoModelForPreTraining.register(ByolConfig, ByolForPretraining, exist_ok=True)
AutoConfig.register(VicRegConfig.model_type, VicRegConfig, exist_ok=True)
AutoModel.register(VicRegConfig, VicRegModel, exist_ok=True)
AutoModelForPreTraining.register(VicRegConfig, VicRegForPretraining, exist_ok=True)

__all__ = [
    "ByolConfig", "ByolForPretraining", "ByolLoss", "ByolModel",
    "DinoConfig", "DinoForPretraining", "DinoHead", "DinoLoss", "DinoModel", "HJepaConfig", "HJepaFeatureModel",
    "HJepaForPretraining", "HJepaLoss", "HJepaPredictor", "IJepaFeatureModel", "IJepaForPretraining",
    "IJepaLoss", "IJepaPredictor", "IJepaPretrainingConfig", "NTXentLoss", "SimClrConfig", "SimClrForPretraining",
    "SimClrModel", "SimClrProjectionHead", "VicRegConfig", "VicRegForPretraining", "VicRegLoss", "VicRegModel",
    "__version__",
]
