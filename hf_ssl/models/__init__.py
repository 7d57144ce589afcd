"""One subpackage per method: configuration_<method>.py + modeling_<method>.py (+ its loss)."""

from .dino import DinoConfig, DinoForPretraining, DinoHead, DinoLoss, DinoModel

__all__ = ["DinoConfig", "DinoForPretraining", "DinoHead", "DinoLoss", "DinoModel"]
