"""I-JEPA: self-supervised learning from images with a joint-embedding predictive architecture (Assran et al., 2023)."""

from .configuration_ijepa import VIT_HUGE_PATCH14_KWARGS, IJepaPretrainingConfig
from .loss_ijepa import IJepaLoss
from .modeling_ijepa import (
    IJepaFeatureModel,
    IJepaForPretraining,
    IJepaForPretrainingOutput,
    IJepaPredictor,
    IJepaPretrainingPreTrainedModel,
    forward_kept_tokens,
    gather_tokens,
    sincos_position_embeddings_2d,
)

__all__ = [
    "IJepaFeatureModel",
    "IJepaForPretraining",
    "IJepaForPretrainingOutput",
    "IJepaLoss",
    "IJepaPredictor",
    "IJepaPretrainingConfig",
    "IJepaPretrainingPreTrainedModel",
    "VIT_HUGE_PATCH14_KWARGS",
    "forward_kept_tokens",
    "gather_tokens",
    "sincos_position_embeddings_2d",
]
