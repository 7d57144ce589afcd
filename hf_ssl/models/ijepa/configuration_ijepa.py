"""Configuration of I-JEPA: the image-based joint-embedding predictive architecture (Assran et al., 2023,
arXiv:2301.08243)."""

from __future__ import annotations

import copy
import numbers

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..backbone import resolve_backbone_config
from ..validation import check_integer, check_number

# ViT-H/14 at 224 px, the encoder of the official recipe (facebookresearch/ijepa configs/in1k_vith14_ep300.yaml,
# `vit_huge`): the official ViTs use LayerNorm eps 1e-6 (IJepaConfig's default is 1e-12).
VIT_HUGE_PATCH14_KWARGS = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "intermediate_size": 5120,
    "patch_size": 14,
    "image_size": 224,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
}
LOSS_TYPES = ("smooth_l1", "mse")


class IJepaPretrainingConfig(PretrainedConfig):
    r"""
    Everything needed to rebuild an I-JEPA model: the encoder (a nested transformers `IJepaConfig`, shared by the
    context and the target encoder), the predictor and the loss. Defaults are those of the official ViT-H/14 run:
    a ViT-H/14 encoder, a predictor of 12 blocks of width 384 with the encoder's 16 heads, smooth L1 on layer-normed
    targets, fixed sin-cos position embeddings.

    Every argument is validated when the config is built; a bad value raises a `ValueError` naming the argument.

    Args:
        backbone_config (`dict`, `IJepaConfig` or `None`):
            Config of the encoder: a transformers `IJepaConfig` (model_type `"ijepa"`, a ViT without CLS token), so
            the trained encoder is a plain `IJepaModel`. A dict must carry `"model_type": "ijepa"`. `None` gives
            ViT-H/14 at 224 px (`VIT_HUGE_PATCH14_KWARGS`). Its `image_size` must be a multiple of its `patch_size`;
            the masks index its grid of `image_size // patch_size` patches per side, row-major. Stored nested.
        predictor_hidden_size (`int`, defaults to 384): width of the predictor, a multiple of 4 (its sin-cos
            position embedding) and of `predictor_num_attention_heads`.
        predictor_num_hidden_layers (`int`, defaults to 12): number of predictor blocks (12 in the official ViT-H/14
            recipe, 6 in its `init_model` default).
        predictor_num_attention_heads (`int` or `None`, defaults to `None`): attention heads of the predictor.
            `None` takes the encoder's `num_attention_heads`, as the official code does; the resolved number is
            what the config stores.
        predictor_mlp_ratio (`float`, defaults to 4.0): MLP width of a predictor block over its hidden size.
        loss_type (`str`, defaults to `"smooth_l1"`): `"smooth_l1"` (beta 1, the official code's
            `F.smooth_l1_loss`) or `"mse"` (the squared L2 distance the paper writes).
        normalize_targets (`bool`, defaults to `True`): layer-normalise the target encoder's output over the
            feature dimension, without affine parameters, before taking the targets (as the official code does).
        fixed_position_embeddings (`bool`, defaults to `True`):
            The encoders' position embeddings are the fixed 2-D sin-cos table of the official code, set at init and
            never trained (`requires_grad=False`). `False` keeps transformers' learned, randomly initialised ones.
            A checkpoint's own values are kept either way; the public transformers I-JEPA checkpoints hold the sin-cos
            table. Needs a backbone `hidden_size` that is a multiple of 4.

    There is no drop path: the official runs use none and transformers' `IJepaLayer` has none. The predictor's
    LayerNorms use eps 1e-6 (the official `vit_predictor`).
    """

    model_type = "hf_ssl_ijepa"
    # the values `loss_type` accepts (a subclass with more distances extends it)
    supported_loss_types = LOSS_TYPES
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig, model_type="ijepa", init_kwargs=VIT_HUGE_PATCH14_KWARGS
        )
    }

    backbone_config: dict | PretrainedConfig | None = None
    predictor_hidden_size: int = 384
    predictor_num_hidden_layers: int = 12
    predictor_num_attention_heads: int | None = None
    predictor_mlp_ratio: float = 4.0
    loss_type: str = "smooth_l1"
    normalize_targets: bool = True
    fixed_position_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # transformers 5 configs are dataclasses: this runs at the end of the generated `__init__`.
        self.backbone_config = resolve_backbone_config(
            self.backbone_config, "ijepa", VIT_HUGE_PATCH14_KWARGS, owner=IJepaPretrainingConfig
        )
        self._check_backbone_config()
        if self.predictor_num_attention_heads is None:
            self.predictor_num_attention_heads = self.backbone_config.num_attention_heads
        for name in ("predictor_hidden_size", "predictor_num_hidden_layers", "predictor_num_attention_heads"):
            check_integer(name, getattr(self, name), minimum=1)
        if self.predictor_hidden_size % 4:
            raise ValueError(
                f"`predictor_hidden_size` must be a multiple of 4 (its 2-D sin-cos position embedding gives a quarter "
                f"of the channels to each of sin and cos of the row and the column), got {self.predictor_hidden_size}"
            )
        if self.predictor_hidden_size % self.predictor_num_attention_heads:
            raise ValueError(
                f"`predictor_hidden_size` ({self.predictor_hidden_size}) must be a multiple of "
                f"`predictor_num_attention_heads` ({self.predictor_num_attention_heads})"
            )
        check_number(
            "predictor_mlp_ratio", self.predictor_mlp_ratio, low=0.0, high=None, low_inclusive=False, allowed="> 0"
        )
        if int(self.predictor_hidden_size * self.predictor_mlp_ratio) < 1:
            raise ValueError(
                f"`predictor_mlp_ratio` {self.predictor_mlp_ratio} leaves the predictor MLP without a hidden unit "
                f"(predictor_hidden_size {self.predictor_hidden_size})"
            )
        if self.loss_type not in self.supported_loss_types:
            raise ValueError(f"`loss_type` must be one of {self.supported_loss_types}, got {self.loss_type!r}")
        for name in ("normalize_targets", "fixed_position_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        if self.fixed_position_embeddings and self.backbone_config.hidden_size % 4:
            raise ValueError(
                f"`fixed_position_embeddings=True` needs a backbone hidden_size that is a multiple of 4 (2-D sin-cos "
                f"table), got {self.backbone_config.hidden_size}: change `backbone_config.hidden_size` or set "
                "`fixed_position_embeddings=False`"
            )
        super().__post_init__(**kwargs)

    def _check_backbone_config(self) -> None:
        backbone = self.backbone_config
        if backbone.model_type != "ijepa":
            raise ValueError(
                f"`backbone_config` of I-JEPA must be a transformers IJepaConfig (model_type 'ijepa': a ViT without "
                f"CLS token, whose patch tokens the context encoder drops and the predictor predicts), got model_type "
                f"{backbone.model_type!r}; use {{'model_type': 'ijepa', ...}} with the same ViT sizes"
            )
        for image_side, patch_side in zip(as_pair(backbone.image_size), as_pair(backbone.patch_size)):
            if image_side % patch_side:
                raise ValueError(
                    f"`backbone_config` image_size {backbone.image_size} is not a multiple of its patch_size "
                    f"{backbone.patch_size}: the masks index whole patches; use a multiple of the patch size"
                )

    @property
    def patch_grid_size(self) -> tuple[int, int]:
        """(rows, columns) of the encoder's patch grid at its `image_size`: the grid the masks index, row-major."""
        return tuple(
            image_side // patch_side
            for image_side, patch_side in zip(
                as_pair(self.backbone_config.image_size), as_pair(self.backbone_config.patch_size)
            )
        )

    def encoder_backbone_config(self) -> PretrainedConfig:
        """A copy of `backbone_config` for one encoder (each transformers model then owns its config), and the config
        of `IJepaFeatureModel` and of the exported encoder."""
        return copy.deepcopy(self.backbone_config)


def as_pair(value) -> tuple[int, int]:
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    return tuple(int(side) for side in value)
