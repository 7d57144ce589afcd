"""DinoConfig: defaults, validation errors that name the argument, nested backbone_config round-trip."""

import json

import pytest
from transformers import AutoConfig, Dinov2Config, ViTConfig

from hf_ssl import DinoConfig
from tests.helpers import TINY_DINOV2, TINY_VIT


def test_default_backbone_is_vit_small_16():
    config = DinoConfig()
    backbone = config.backbone_config
    assert isinstance(backbone, ViTConfig)
    assert (backbone.hidden_size, backbone.num_hidden_layers, backbone.num_attention_heads) == (384, 12, 6)
    assert (backbone.intermediate_size, backbone.patch_size, backbone.image_size) == (1536, 16, 224)
    assert backbone.layer_norm_eps == 1e-6
    assert (config.out_dim, config.student_temperature, config.teacher_temperature) == (65536, 0.1, 0.04)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("out_dim", 0),
        ("out_dim", 3.5),
        ("head_hidden_dim", 0),
        ("head_bottleneck_dim", -1),
        ("head_num_layers", 0),
        ("head_use_bn", "yes"),
        ("norm_last_layer", 1),
        ("student_temperature", 0.0),
        ("teacher_temperature", -0.04),
        ("warmup_teacher_temperature", 0),
        ("warmup_teacher_temperature_epochs", -1),
        ("center_momentum", 1.0),
        ("center_momentum", -0.1),
        ("student_drop_path_rate", 1.0),
        ("backbone_config", {"model_type": "not_a_transformers_model"}),
        ("backbone_config", {"hidden_size": 32}),
        ("backbone_config", 42),
    ],
)
def test_invalid_argument_raises_error_naming_it(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        DinoConfig(**{argument: value})


def test_backbone_config_accepts_config_objects_and_dicts():
    from_object = DinoConfig(
        backbone_config=Dinov2Config(**{k: v for k, v in TINY_DINOV2.items() if k != "model_type"})
    )
    from_dict = DinoConfig(backbone_config=dict(TINY_DINOV2))
    for config in (from_object, from_dict):
        assert isinstance(config.backbone_config, Dinov2Config)
        assert config.backbone_config.hidden_size == 32


def test_save_and_load_round_trip_with_nested_backbone_config(tmp_path):
    config = DinoConfig(backbone_config=dict(TINY_VIT), out_dim=128, norm_last_layer=False, center_momentum=0.8)
    config.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ssl_dino"
    assert saved["backbone_config"]["model_type"] == "vit"  # nested as a dict, not copied into our fields
    assert saved["backbone_config"]["hidden_size"] == 32
    assert "hidden_size" not in saved

    loaded = DinoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.backbone_config, ViTConfig)
    assert loaded.backbone_config.to_dict() == config.backbone_config.to_dict()
    for name in ("out_dim", "norm_last_layer", "center_momentum", "student_temperature", "head_num_layers"):
        assert getattr(loaded, name) == getattr(config, name)


def test_auto_config_dispatch_after_import(tmp_path):
    DinoConfig(backbone_config=dict(TINY_VIT)).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DinoConfig)


def test_drop_path_applies_to_the_student_only_and_only_where_supported():
    dinov2 = DinoConfig(backbone_config={**TINY_DINOV2, "drop_path_rate": 0.3}, student_drop_path_rate=0.2)
    assert dinov2.student_backbone_config().drop_path_rate == 0.2
    assert dinov2.teacher_backbone_config().drop_path_rate == 0.0
    assert dinov2.backbone_config.drop_path_rate == 0.3  # the nested config itself is left as given

    vit = DinoConfig(backbone_config=dict(TINY_VIT))
    assert not hasattr(vit.student_backbone_config(), "drop_path_rate")
