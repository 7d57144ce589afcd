"""One subpackage per method: configuration_<method>.py + modeling_<method>.py (+ its loss)."""

from .byol import ByolConfig, ByolForPretraining, ByolLoss, ByolModel
from .dino import DinoConfig, DinoForPretraining, DinoHead, DinoLoss, DinoModel
from .hjepa import HJepaConfig, HJepaFeatureModel, HJepaForPretraining, HJepaLoss, HJepaPredictor
from .ijepa import IJepaFeatureModel, IJepaForPretraining, IJepaLoss, IJepaPredictor, IJepaPretrainingConfig
from .image_processing import build_image_processor
from .simclr import NTXentLoss, SimClrConfig, SimClrForPretraining, SimClrModel, SimClrProjectionHead
from .vicreg import VicRegConfig, VicRegForPretraining, VicRegLoss, VicRegModel

__all__ = [
    "ByolConfig", "ByolForPretraining", "ByolLoss", "ByolModel",
    "DinoConfig", "DinoForPretraining", "DinoHead", "DinoLoss", "DinoModel", "HJepaConfig", "HJepaFeatureModel",
    "HJepaForPretraining", "HJepaLoss", "HJepaPredictor", "IJepaFeatureModel", "IJepaForPretraining",
    "IJepaLoss", "IJepaPredictor", "IJepaPretrainingConfig", "NTXentLoss", "SimClrConfig", "SimClrForPretraining",
    "SimClrModel", "SimClrProjectionHead", "VicRegConfig", "VicRegForPretraining", "VicRegLoss", "VicRegModel",
    "build_image_processor",
]
