"""One tiny config and one input batch per pretraining method, for the tests that go over every method at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from hf_ssl.models import (
    ByolConfig,
    ByolForPreTraining,
    DinoConfig,
    DinoForPreTraining,
    HJepaConfig,
    HJepaForPreTraining,
    IJepaForPreTraining,
    IJepaPretrainingConfig,
    SimClrConfig,
    SimClrForPreTraining,
    VicRegConfig,
    VicRegForPreTraining,
)
from tests.helpers import TINY_HEAD, TINY_RESNET, TINY_VIT

METHODS = ("dino", "simclr", "byol", "vicreg", "ijepa", "hjepa")
TINY_IJEPA = {**TINY_VIT, "model_type": "ijepa"}  # 16 px, 4 px patches: a 4 x 4 grid
TINY_PREDICTOR = {"predictor_hidden_size": 16, "predictor_num_hidden_layers": 2}


@dataclass(frozen=True)
class PretrainingCase:
    model_class: type
    config: PretrainedConfig
    inputs: dict[str, torch.Tensor]

    def build(self, seed: int = 0):
        torch.manual_seed(seed)
        return self.model_class(self.config)


def pretraining_case(method: str) -> PretrainingCase:
    """The tiny `method` model (its class and config) and a batch of 2 images its forward takes."""
    generator = torch.Generator().manual_seed(1)
    views = torch.randn(2, 2, 3, 16, 16, generator=generator)  # (views, B, C, H, W)
    if method == "dino":
        return PretrainingCase(
            DinoForPreTraining, DinoConfig(backbone_config=dict(TINY_VIT), **TINY_HEAD), {"global_crops": views}
        )
    if method == "simclr":
        config = SimClrConfig(backbone_config=dict(TINY_RESNET), projection_hidden_dim=24, projection_dim=8)
        return PretrainingCase(SimClrForPreTraining, config, {"views": views})
    if method == "byol":
        config = ByolConfig(
            backbone_config=dict(TINY_RESNET), projection_hidden_dim=24, projection_dim=8, prediction_hidden_dim=12
        )
        return PretrainingCase(ByolForPreTraining, config, {"views": views})
    if method == "vicreg":
        config = VicRegConfig(backbone_config=dict(TINY_RESNET), expander_dims=[24, 24, 8])
        return PretrainingCase(VicRegForPreTraining, config, {"views": views})
    if method in ("ijepa", "hjepa"):
        # one 2 x 2 target block per image (rectangles, as H-JEPA needs), 6 context patches
        masks_target = torch.tensor([[[0, 1, 4, 5], [10, 11, 14, 15]]])  # (T=1, B=2, 4)
        masks_context = torch.tensor([[2, 3, 6, 8, 12, 13], [0, 2, 4, 5, 7, 9]])  # (B=2, 6)
        inputs = {"pixel_values": views[0], "masks_context": masks_context, "masks_target": masks_target}
        if method == "ijepa":
            return PretrainingCase(
                IJepaForPreTraining, IJepaPretrainingConfig(backbone_config=dict(TINY_IJEPA), **TINY_PREDICTOR), inputs
            )
        config = HJepaConfig(
            backbone_config=dict(TINY_IJEPA), num_hierarchies=2, level_pool_sizes=[1, 2], **TINY_PREDICTOR
        )
        return PretrainingCase(HJepaForPreTraining, config, inputs)
    raise ValueError(f"no tiny case for {method!r}; methods: {METHODS}")
