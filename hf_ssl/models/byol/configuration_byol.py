"""Configuration of BYOL: bootstrap your own latent (Grill et al., 2020, arXiv:2006.07733)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..backbone import DropPathBackboneConfigMixin, resolve_backbone_config
from ..simclr.configuration_simclr import RESNET50_KWARGS
from ..validation import check_integer, check_number


class ByolConfig(DropPathBackboneConfigMixin, PretrainedConfig):
    r"""
    Everything needed to rebuild a BYOL model: the backbone (a nested transformers config), the projector and the
    predictor. Defaults are the paper's ImageNet setup: ResNet-50, projector and predictor both 4096 -> 256 MLPs
    with BatchNorm.

    The target network's EMA momentum is a training setting, not part of the model:
    `ByolTrainingArguments.teacher_momentum` (0.99 for 100-epoch runs, 0.996 for 1000 epochs, then a cosine to 1).

    Every argument is validated when the config is built; a bad value raises a `ValueError` naming the argument.

    Args:
        backbone_config (`dict`, `PretrainedConfig` or `None`):
            Config of any transformers vision model that `AutoModel` can build (ResNet, ViT, Dinov2, ConvNext, ...).
            A dict must carry its `"model_type"`. `None` gives transformers' `ResNetConfig()`, a ResNet-50. Stored
            nested (a dict inside `config.json`).
        projection_hidden_dim (`int`, defaults to 4096): width of the projector's hidden layer.
        projection_dim (`int`, defaults to 256): size of the projections (the predictor's input and output).
        prediction_hidden_dim (`int`, defaults to 4096): width of the predictor's hidden layer.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth of the online backbone during pretraining, in [0, 1). Applied only when the backbone
            config has a `drop_path_rate` field (e.g. Dinov2, ConvNext; not ResNet or ViT). The target backbone,
            `ByolModel` and the exported backbone always run with drop path 0.
    """

    model_type = "hf_ssl_byol"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet", init_kwargs=RESNET50_KWARGS)
    }

    backbone_config: dict | PretrainedConfig | None = None
    projection_hidden_dim: int = 4096
    projection_dim: int = 256
    prediction_hidden_dim: int = 4096
    drop_path_rate: float = 0.0

    def __post_init__(self, **kwargs):
        # transformers 5 configs are dataclasses: this runs at the end of the generated `__init__`.
        self.backbone_config = resolve_backbone_config(
            self.backbone_config, "resnet", RESNET50_KWARGS, owner=ByolConfig
        )
        for name in ("projection_hidden_dim", "projection_dim", "prediction_hidden_dim"):
            check_integer(name, getattr(self, name), minimum=1)
        check_number("drop_path_rate", self.drop_path_rate, low=0.0, high=1.0, allowed="in [0, 1)")
        super().__post_init__(**kwargs)
