"""DINO: self-distillation with no labels (Caron et al., 2021)."""

from ..backbone import check_input_sizes, get_backbone_embed_dim, get_backbone_features
from .configuration_dino import DinoConfig
from .loss_dino import DinoLoss
from .modeling_dino import (
    DinoForPreTraining,
    DinoForPretraining,
    DinoForPreTrainingOutput,
    DinoForPretrainingOutput,
    DinoHead,
    DinoModel,
    DinoNetwork,
    DinoPreTrainedModel,
)

__all__ = [
    "DinoConfig",
    "DinoForPreTraining",
    "DinoForPreTrainingOutput",
    "DinoForPretraining",
    "DinoForPretrainingOutput",
    "DinoHead",
    "DinoLoss",
    "DinoModel",
    "DinoNetwork",
    "DinoPreTrainedModel",
    "check_input_sizes",
    "get_backbone_embed_dim",
    "get_backbone_features",
]
