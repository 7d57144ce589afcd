"""Configuration of SimCLR: contrastive learning of visual representations (Chen et al., 2020, arXiv:2002.05709)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..backbone import DropPathBackboneConfigMixin, resolve_backbone_config
from ..validation import check_integer, check_number

# transformers ResNetConfig sizes, for `backbone_config: {model_type: resnet, **RESNET18_KWARGS}` in a recipe.
RESNET18_KWARGS = {
    "embedding_size": 64,
    "hidden_sizes": [64, 128, 256, 512],
    "depths": [2, 2, 2, 2],
    "layer_type": "basic",
}
# ResNetConfig's own defaults, written out: the SimCLR paper's ResNet-50 (2048-d embedding).
RESNET50_KWARGS = {
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
}


class SimClrConfig(DropPathBackboneConfigMixin, PretrainedConfig):
    r"""
    Everything needed to rebuild a SimCLR model: the backbone (a nested transformers config), the projection head
    and the NT-Xent temperature. Defaults are the paper's ImageNet setup: ResNet-50, a 2048-2048-128 head with
    BatchNorm, temperature 0.1.

    Every argument is validated when the config is built; a bad value raises a `ValueError` naming the argument.

    Args:
        backbone_config (`dict`, `PretrainedConfig` or `None`):
            Config of any transformers vision model that `AutoModel` can build (ResNet, ViT, Dinov2, ConvNext, ...).
            A dict must carry its `"model_type"`. `None` gives transformers' `ResNetConfig()`, a ResNet-50
            (`RESNET50_KWARGS`). Stored nested (a dict inside `config.json`).
        projection_hidden_dim (`int`, defaults to 2048): width of the projection head's hidden layers.
        projection_dim (`int`, defaults to 128): size of the projections the loss compares.
        projection_num_layers (`int`, defaults to 2):
            Number of linear layers of the projection head (at least 1). 2 is SimCLR v1's
            Linear-BN-ReLU-Linear; 3 is SimCLR v2's deeper head; 1 is a single linear projection.
        projection_use_bn (`bool`, defaults to `True`): BatchNorm after each hidden linear layer of the head.
        temperature (`float`, defaults to 0.1): NT-Xent softmax temperature, > 0 (the paper uses 0.5 on CIFAR-10).
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth of the backbone during pretraining, in [0, 1). Applied only when the backbone config
            has a `drop_path_rate` field (e.g. Dinov2, ConvNext; not ResNet or ViT). `SimClrModel` and the
            exported backbone always run with drop path 0.
    """

    model_type = "hf_ssl_simclr"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet", init_kwargs=RESNET50_KWARGS)
    }

    backbone_config: dict | PretrainedConfig | None = None
    projection_hidden_dim: int = 2048
    projection_dim: int = 128
    projection_num_layers: int = 2
    projection_use_bn: bool = True
    temperature: float = 0.1
    drop_path_rate: float = 0.0

    def __post_init__(self, **kwargs):
        # transformers 5 configs are dataclasses: this runs at the end of the generated `__init__`.
        self.backbone_config = resolve_backbone_config(
            self.backbone_config, "resnet", RESNET50_KWARGS, owner=SimClrConfig
        )
        for name in ("projection_hidden_dim", "projection_dim", "projection_num_layers"):
            check_integer(name, getattr(self, name), minimum=1)
        if not isinstance(self.projection_use_bn, bool):
            raise ValueError(f"`projection_use_bn` must be True or False, got {self.projection_use_bn!r}")
        check_number("temperature", self.temperature, low=0.0, high=None, low_inclusive=False, allowed="> 0")
        check_number("drop_path_rate", self.drop_path_rate, low=0.0, high=1.0, allowed="in [0, 1)")
        super().__post_init__(**kwargs)
