"""SimCLR: a simple framework for contrastive learning of visual representations (Chen et al., 2020)."""

from .configuration_simclr import RESNET18_KWARGS, RESNET50_KWARGS, SimClrConfig
from .loss_simclr import NTXentLoss, NTXentOutput
from .modeling_simclr import (
    SimClrForPreTraining,
    SimClrForPretraining,
    SimClrForPreTrainingOutput,
    SimClrForPretrainingOutput,
    SimClrModel,
    SimClrPreTrainedModel,
    SimClrProjectionHead,
)

__all__ = [
    "NTXentLoss",
    "NTXentOutput",
    "RESNET18_KWARGS",
    "RESNET50_KWARGS",
    "SimClrConfig",
    "SimClrForPreTraining",
    "SimClrForPreTrainingOutput",
    "SimClrForPretraining",
    "SimClrForPretrainingOutput",
    "SimClrModel",
    "SimClrPreTrainedModel",
    "SimClrProjectionHead",
]
