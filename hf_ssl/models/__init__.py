"""One subpackage per method: configuration_<method>.py + modeling_<method>.py (+ its loss)."""

from .dino import DinoConfig, DinoForPretraining, DinoHead, DinoLoss, DinoModel
from .hjepa import HJepaConfig, HJepaFeatureModel, HJepaForPretraining, HJepaLoss, HJepaPredictor
from .ijepa import IJepaFeatureModel, IJepaForPretraining, IJepaLoss, IJepaPredictor, IJepaPretrainingConfig
from .image_processing import build_image_processor
from .simclr import NTXentLoss, SimClrConfig, SimClrForPretraining, SimClrModel, SimClrProjectionHead

__all__ = [
    "DinoConfig", "DinoForPretraining", "DinoHead", "DinoLoss", "DinoModel", "HJepaConfig", "HJepaFeatureModel",
    "HJepaForPretraining", "HJepaLoss", "HJepaPredictor", "IJepaFeatureModel", "IJepaForPretraining",
    "IJepaLoss", "IJepaPredictor", "IJepaPretrainingConfig", "NTXentLoss", "SimClrConfig", "SimClrForPretraining",
    "SimClrModel", "SimClrProjectionHead", "build_image_processor",
]
