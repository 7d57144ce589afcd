"""One subpackage per method: configuration_<method>.py + modeling_<method>.py (+ its loss)."""

from .byol import ByolConfig, ByolForPreTraining, ByolForPretraining, ByolLoss, ByolModel
from .dino import DinoConfig, DinoForPreTraining, DinoForPretraining, DinoHead, DinoLoss, DinoModel
from .hjepa import HJepaConfig, HJepaFeatureModel, HJepaForPreTraining, HJepaForPretraining, HJepaLoss, HJepaPredictor
from .ijepa import (
    IJepaFeatureModel,
    IJepaForPreTraining,
    IJepaForPretraining,
    IJepaLoss,
    IJepaPredictor,
    IJepaPretrainingConfig,
)
from .image_processing import build_image_processor
from .simclr import (
    NTXentLoss,
    SimClrConfig,
    SimClrForPreTraining,
    SimClrForPretraining,
    SimClrModel,
    SimClrProjectionHead,
)
from .vicreg import VicRegConfig, VicRegForPreTraining, VicRegForPretraining, VicRegLoss, VicRegModel

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
    "build_image_processor",
    # the names before transformers' spelling, the same classes (see the end of each modeling_<method>.py)
    "ByolForPretraining",
    "DinoForPretraining",
    "HJepaForPretraining",
    "IJepaForPretraining",
    "SimClrForPretraining",
    "VicRegForPretraining",
]
