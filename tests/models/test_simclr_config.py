"""SimClrConfig: defaults, validation errors that name the argument, nested backbone_config round-trip."""

import json

import pytest
from transformers import AutoConfig, Dinov2Config, ResNetConfig, ViTConfig

from hf_ssl import SimClrConfig
from hf_ssl.models.backbone import build_backbone, get_backbone_embed_dim
from hf_ssl.models.simclr import RESNET18_KWARGS, RESNET50_KWARGS
from tests.helpers import TINY_DINOV2, TINY_RESNET, TINY_VIT


def test_defaults_are_the_paper_resnet50_setup():
    config = SimClrConfig()
    backbone = config.backbone_config
    assert isinstance(backbone, ResNetConfig)
    assert list(backbone.hidden_sizes) == [256, 512, 1024, 2048] and list(backbone.depths) == [3, 4, 6, 3]
    assert backbone.layer_type == "bottleneck"
    assert get_backbone_embed_dim(backbone) == 2048
    assert (config.projection_hidden_dim, config.projection_dim, config.projection_num_layers) == (2048, 128, 2)
    assert config.projection_use_bn is True
    assert (config.temperature, config.drop_path_rate) == (0.1, 0.0)


def test_resnet50_kwargs_are_transformers_resnet_defaults():
    defaults = ResNetConfig()
    for name, value in RESNET50_KWARGS.items():
        expected = getattr(defaults, name)
        assert (list(expected) if isinstance(expected, (list, tuple)) else expected) == value, name


def test_resnet18_kwargs_build_a_resnet18():
    config = SimClrConfig(backbone_config={"model_type": "resnet", **RESNET18_KWARGS})
    assert isinstance(config.backbone_config, ResNetConfig)
    assert get_backbone_embed_dim(config.backbone_config) == 512
    backbone = build_backbone(config.backbone_config)
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in the classifier the backbone lacks
    assert sum(parameter.numel() for parameter in backbone.parameters()) == 11_689_512 - 513_000


@pytest.mark.parametrize(
    "argument, value",
    [
        ("projection_hidden_dim", 0),
        ("projection_hidden_dim", 2.5),
        ("projection_dim", -1),
        ("projection_dim", True),
        ("projection_num_layers", 0),
        ("projection_use_bn", "yes"),
        ("projection_use_bn", 1),
        ("temperature", 0.0),
        ("temperature", -0.1),
        ("temperature", "0.1"),
        ("drop_path_rate", 1.0),
        ("drop_path_rate", -0.1),
        ("backbone_config", {"model_type": "not_a_transformers_model"}),
        ("backbone_config", {"hidden_size": 32}),
        ("backbone_config", 42),
        ("backbone_config", SimClrConfig()),
    ],
)
def test_invalid_argument_raises_error_naming_it(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        SimClrConfig(**{argument: value})


def test_backbone_config_accepts_config_objects_and_dicts():
    from_object = SimClrConfig(backbone_config=ViTConfig(**{k: v for k, v in TINY_VIT.items() if k != "model_type"}))
    from_dict = SimClrConfig(backbone_config=dict(TINY_VIT))
    for config in (from_object, from_dict):
        assert isinstance(config.backbone_config, ViTConfig)
        assert config.backbone_config.hidden_size == 32


def test_save_and_load_round_trip_with_nested_backbone_config(tmp_path):
    config = SimClrConfig(
        backbone_config=dict(TINY_RESNET),
        projection_hidden_dim=24,
        projection_dim=8,
        projection_num_layers=3,
        projection_use_bn=False,
        temperature=0.5,
    )
    config.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ssl_simclr"
    assert saved["backbone_config"]["model_type"] == "resnet"  # nested as a dict, not copied into our fields
    assert saved["backbone_config"]["hidden_sizes"] == [8, 16]
    assert "hidden_sizes" not in saved

    for loaded in (SimClrConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert isinstance(loaded, SimClrConfig)
        assert isinstance(loaded.backbone_config, ResNetConfig)
        assert loaded.backbone_config.to_dict() == config.backbone_config.to_dict()
        for name in (
            "projection_hidden_dim",
            "projection_dim",
            "projection_num_layers",
            "projection_use_bn",
            "temperature",
            "drop_path_rate",
        ):
            assert getattr(loaded, name) == getattr(config, name), name


def test_drop_path_applies_to_training_only_and_only_where_supported():
    dinov2 = SimClrConfig(backbone_config={**TINY_DINOV2, "drop_path_rate": 0.3}, drop_path_rate=0.2)
    assert isinstance(dinov2.backbone_config, Dinov2Config)
    assert dinov2.backbone_config_for_training().drop_path_rate == 0.2
    assert dinov2.feature_backbone_config().drop_path_rate == 0.0
    assert dinov2.backbone_config.drop_path_rate == 0.3  # the nested config itself is left as given
    assert dinov2.backbone_config_for_training().use_mask_token is False  # SimCLR never masks patches

    resnet = SimClrConfig(backbone_config=dict(TINY_RESNET), drop_path_rate=0.2)
    assert not hasattr(resnet.backbone_config_for_training(), "drop_path_rate")
