"""Configuration of VICReg: variance-invariance-covariance regularization (Bardes et al., 2022, arXiv:2105.04906)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..backbone import DropPathBackboneConfigMixin, resolve_backbone_config
from ..simclr.configuration_simclr import RESNET50_KWARGS
from ..validation import check_integer, check_number

# the official ImageNet expander: three layers of 8192
DEFAULT_EXPANDER_DIMS = (8192, 8192, 8192)


class VicRegConfig(DropPathBackboneConfigMixin, PretrainedConfig):
    r"""
    Everything needed to rebuild a VICReg model: the backbone (a nested transformers config), the expander and the
    loss weights. Defaults are the official ImageNet setup (facebookresearch/vicreg): ResNet-50, an
    8192-8192-8192 expander, weights 25 (invariance) / 25 (variance) / 1 (covariance), epsilon 1e-4.

    Every argument is validated when the config is built; a bad value raises a `ValueError` naming the argument.

    Args:
        backbone_config (`dict`, `PretrainedConfig` or `None`):
            Config of any transformers vision model that `AutoModel` can build (ResNet, ViT, Dinov2, ConvNext, ...).
            A dict must carry its `"model_type"`. `None` gives transformers' `ResNetConfig()`, a ResNet-50. Stored
            nested (a dict inside `config.json`).
        expander_dims (`list[int]`, defaults to `[8192, 8192, 8192]`):
            Output size of each linear layer of the expander; every layer but the last is followed by BatchNorm and
            ReLU. The last size is the dimension D of the embeddings the loss regularises.
        invariance_weight (`float`, defaults to 25.0): weight of the invariance term (the MSE between the views).
        variance_weight (`float`, defaults to 25.0): weight of the variance term (the hinge on each dimension's std).
        covariance_weight (`float`, defaults to 1.0): weight of the covariance term (off-diagonal covariances).
        variance_epsilon (`float`, defaults to 1e-4): added to the variance before its square root, > 0.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth of the backbone during pretraining, in [0, 1). Applied only when the backbone config
            has a `drop_path_rate` field (e.g. Dinov2, ConvNext; not ResNet or ViT). `VicRegModel` and the exported
            backbone always run with drop path 0.
    """

    model_type = "hf_ssl_vicreg"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet", init_kwargs=RESNET50_KWARGS)
    }

    backbone_config: dict | PretrainedConfig | None = None
    expander_dims: list[int] = DEFAULT_EXPANDER_DIMS  # a tuple here (a dataclass default must not be a list)
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0
    variance_epsilon: float = 1e-4
    drop_path_rate: float = 0.0

    def __post_init__(self, **kwargs):
        # transformers 5 configs are dataclasses: this runs at the end of the generated `__init__`.
        self.backbone_config = resolve_backbone_config(
            self.backbone_config, "resnet", RESNET50_KWARGS, owner=VicRegConfig
        )
        if not isinstance(self.expander_dims, (list, tuple)) or not self.expander_dims:
            raise ValueError(f"`expander_dims` must be a non-empty list of layer sizes, got {self.expander_dims!r}")
        for index, size in enumerate(self.expander_dims):
            check_integer(f"expander_dims[{index}]", size, minimum=1)
        self.expander_dims = list(self.expander_dims)
        for name in ("invariance_weight", "variance_weight", "covariance_weight"):
            check_number(name, getattr(self, name), low=0.0, high=None, allowed=">= 0")
        check_number("variance_epsilon", self.variance_epsilon, low=0.0, high=None, low_inclusive=False, allowed="> 0")
        check_number("drop_path_rate", self.drop_path_rate, low=0.0, high=1.0, allowed="in [0, 1)")
        super().__post_init__(**kwargs)
