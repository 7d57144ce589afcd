"""One subpackage per method: configuration_<method>.py + modeling_<method>.py (+ its loss)."""

from .dino import DinoConfig, DinoForPretraining, DinoHead, DinoLoss, DinoModel
from .image_processing import build_image_processor

__all__ = ["DinoConfig", "DinoForPretraining", "DinoHead", "DinoLoss", "DinoModel", "build_image_processor"]
