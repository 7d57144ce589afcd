"""H-JEPA: I-JEPA whose predictor is asked for the targets at several levels (pool sizes and encoder depths)."""

from .configuration_hjepa import HJepaConfig
from .loss_hjepa import HJepaLoss, contrastive_distance
from .modeling_hjepa import (
    HJepaFeatureModel,
    HJepaForPreTraining,
    HJepaForPretraining,
    HJepaForPreTrainingOutput,
    HJepaForPretrainingOutput,
    HJepaPredictor,
    check_target_blocks,
    infer_target_block_size,
    pool_windows,
)

__all__ = [
    "HJepaConfig",
    "HJepaFeatureModel",
    "HJepaForPreTraining",
    "HJepaForPreTrainingOutput",
    "HJepaForPretraining",
    "HJepaForPretrainingOutput",
    "HJepaLoss",
    "HJepaPredictor",
    "check_target_blocks",
    "contrastive_distance",
    "infer_target_block_size",
    "pool_windows",
]
