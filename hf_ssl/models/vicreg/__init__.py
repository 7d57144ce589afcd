"""VICReg: variance-invariance-covariance regularization for self-supervised learning (Bardes et al., 2022)."""

from .configuration_vicreg import DEFAULT_EXPANDER_DIMS, VicRegConfig
from .loss_vicreg import VicRegLoss, VicRegOutput, covariance_term, off_diagonal, variance_term
from .modeling_vicreg import (
    VicRegExpander,
    VicRegForPreTraining,
    VicRegForPretraining,
    VicRegForPreTrainingOutput,
    VicRegForPretrainingOutput,
    VicRegModel,
    VicRegPreTrainedModel,
)

__all__ = [
    "DEFAULT_EXPANDER_DIMS",
    "VicRegConfig",
    "VicRegExpander",
    "VicRegForPreTraining",
    "VicRegForPreTrainingOutput",
    "VicRegForPretraining",
    "VicRegForPretrainingOutput",
    "VicRegLoss",
    "VicRegModel",
    "VicRegOutput",
    "VicRegPreTrainedModel",
    "covariance_term",
    "off_diagonal",
    "variance_term",
]
