"""BYOL: bootstrap your own latent, self-supervised learning with an EMA target network (Grill et al., 2020)."""

from .configuration_byol import ByolConfig
from .loss_byol import ByolLoss, normalized_mse
from .modeling_byol import (
    ByolForPreTraining,
    ByolForPretraining,
    ByolForPreTrainingOutput,
    ByolForPretrainingOutput,
    ByolMlp,
    ByolModel,
    ByolNetwork,
    ByolPreTrainedModel,
)

__all__ = [
    "ByolConfig",
    "ByolForPreTraining",
    "ByolForPreTrainingOutput",
    "ByolForPretraining",
    "ByolForPretrainingOutput",
    "ByolLoss",
    "ByolMlp",
    "ByolModel",
    "ByolNetwork",
    "ByolPreTrainedModel",
    "normalized_mse",
]
