"""VicRegConfig: the official defaults, validation errors that name the argument, nested backbone_config round-trip."""

import json

import pytest
from transformers import AutoConfig, ResNetConfig

from hf_ssl import VicRegConfig
from hf_ssl.models.backbone import get_backbone_embed_dim
from tests.helpers import TINY_RESNET


def test_defaults_are_the_official_resnet50_setup():
    config = VicRegConfig()
    assert isinstance(config.backbone_config, ResNetConfig) and get_backbone_embed_dim(config.backbone_config) == 2048
    assert config.expander_dims == [8192, 8192, 8192]
    assert (config.invariance_weight, config.variance_weight, config.covariance_weight) == (25.0, 25.0, 1.0)
    assert (config.variance_epsilon, config.drop_path_rate) == (1e-4, 0.0)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("expander_dims", []),
        ("expander_dims", "8192"),
        ("expander_dims[1]", [16, 0]),
        ("invariance_weight", -1.0),
        ("covariance_weight", "1"),
        ("variance_epsilon", 0.0),
        ("drop_path_rate", -0.1),
    ],
)
def test_invalid_argument_raises_error_naming_it(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`".replace("[", r"\[").replace("]", r"\]")):
        VicRegConfig(**{argument.split("[")[0]: value})


def test_save_and_load_round_trip(tmp_path):
    config = VicRegConfig(
        backbone_config=dict(TINY_RESNET), expander_dims=(24, 8), invariance_weight=10.0, variance_epsilon=1e-3
    )
    assert config.expander_dims == [24, 8]
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ssl_vicreg" and saved["expander_dims"] == [24, 8]
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VicRegConfig) and isinstance(loaded.backbone_config, ResNetConfig)
    assert (loaded.expander_dims, loaded.invariance_weight, loaded.variance_epsilon) == ([24, 8], 10.0, 1e-3)
