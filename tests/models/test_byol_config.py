"""ByolConfig: the paper's defaults, validation errors that name the argument, nested backbone_config round-trip."""

import json

import pytest
from transformers import AutoConfig, Dinov2Config, ResNetConfig

from hf_ssl import ByolConfig
from hf_ssl.models.backbone import get_backbone_embed_dim
from tests.helpers import TINY_DINOV2, TINY_RESNET


def test_defaults_are_the_paper_resnet50_setup():
    config = ByolConfig()
    assert isinstance(config.backbone_config, ResNetConfig) and get_backbone_embed_dim(config.backbone_config) == 2048
    assert list(config.backbone_config.depths) == [3, 4, 6, 3]
    assert (config.projection_hidden_dim, config.projection_dim, config.prediction_hidden_dim) == (4096, 256, 4096)
    assert config.drop_path_rate == 0.0


@pytest.mark.parametrize(
    "argument, value",
    [
        ("projection_hidden_dim", 0),
        ("projection_dim", 2.5),
        ("prediction_hidden_dim", True),
        ("drop_path_rate", 1.0),
        ("backbone_config", {"hidden_size": 32}),
    ],
)
def test_invalid_argument_raises_error_naming_it(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        ByolConfig(**{argument: value})


def test_save_and_load_round_trip_with_nested_backbone_config(tmp_path):
    config = ByolConfig(
        backbone_config=dict(TINY_RESNET), projection_hidden_dim=24, projection_dim=8, prediction_hidden_dim=12
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ssl_byol" and saved["backbone_config"]["model_type"] == "resnet"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ByolConfig) and isinstance(loaded.backbone_config, ResNetConfig)
    assert (loaded.projection_hidden_dim, loaded.projection_dim, loaded.prediction_hidden_dim) == (24, 8, 12)


def test_drop_path_applies_to_the_online_backbone_only():
    config = ByolConfig(backbone_config=dict(TINY_DINOV2), drop_path_rate=0.2)
    assert isinstance(config.backbone_config, Dinov2Config)
    assert config.backbone_config_for_training().drop_path_rate == 0.2
    assert config.feature_backbone_config().drop_path_rate == 0.0
