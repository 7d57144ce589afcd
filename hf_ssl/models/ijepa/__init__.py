"""I-JEPA: self-supervised learning from images with a joint-embedding predictive architecture (Assran et al.,
2023)."""

from .configuration_ijepa import VIT_HUGE_PATCH14_KWARGS, IJepaPretrainingConfig
from .loss_ijepa import IJepaLoss
from .modeling_ijepa import (
    IJepaFeatureModel,
    IJepaForPreTraining,
    IJepaForPretraining,
    IJepaForPreTrainingOutput,
    IJepaForPretrainingOutput,
    IJepaPredictor,
    IJepaPretrainingPreTrainedModel,
    IJepaSslPreTrainedModel,
    forward_kept_tokens,
    gather_tokens,
    sincos_position_embeddings_2d,
)

# The checkpoint converter is imported on first use: importing it here would put it in `sys.modules` before
# `python -m hf_ssl.models.ijepa.convert_ijepa_official` runs it, which runpy warns about.
CONVERTER_EXPORTS = (
    "OFFICIAL_NUM_ATTENTION_HEADS",
    "convert_official_checkpoint",
    "load_official_state_dicts",
    "official_pretraining_config",
    "read_official_checkpoint",
)


def __getattr__(name: str):
    if name in CONVERTER_EXPORTS:
        from . import convert_ijepa_official

        return getattr(convert_ijepa_official, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *CONVERTER_EXPORTS,
    "IJepaFeatureModel",
    "IJepaForPreTraining",
    "IJepaForPreTrainingOutput",
    "IJepaForPretraining",
    "IJepaForPretrainingOutput",
    "IJepaLoss",
    "IJepaPredictor",
    "IJepaPretrainingConfig",
    "IJepaPretrainingPreTrainedModel",
    "IJepaSslPreTrainedModel",
    "VIT_HUGE_PATCH14_KWARGS",
    "forward_kept_tokens",
    "gather_tokens",
    "sincos_position_embeddings_2d",
]
