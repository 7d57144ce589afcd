"""IJepaPretrainingConfig: defaults, validation errors that name the argument, nested backbone_config round-trip."""

import json

import pytest
from transformers import AutoConfig, IJepaConfig, ViTConfig

from hf_ssl import IJepaPretrainingConfig
from hf_ssl.models.ijepa import VIT_HUGE_PATCH14_KWARGS
from tests.helpers import TINY_VIT

TINY_IJEPA = {**TINY_VIT, "model_type": "ijepa"}


def test_defaults_are_the_official_vith14_recipe():
    config = IJepaPretrainingConfig()
    backbone = config.backbone_config
    assert isinstance(backbone, IJepaConfig) and backbone.model_type == "ijepa"
    assert (backbone.hidden_size, backbone.num_hidden_layers, backbone.num_attention_heads) == (1280, 32, 16)
    assert (backbone.intermediate_size, backbone.patch_size, backbone.image_size) == (5120, 14, 224)
    assert backbone.layer_norm_eps == 1e-6 and backbone.qkv_bias is True
    assert config.patch_grid_size == (16, 16)
    # pred_depth 12, pred_emb_dim 384 (configs/in1k_vith14_ep300.yaml); heads = the encoder's, as vit_predictor
    assert (config.predictor_hidden_size, config.predictor_num_hidden_layers) == (384, 12)
    assert config.predictor_num_attention_heads == 16
    assert config.predictor_mlp_ratio == 4.0
    assert (config.loss_type, config.normalize_targets, config.fixed_position_embeddings) == ("smooth_l1", True, True)
    assert config.model_type == "hf_ssl_ijepa"


def test_vith14_kwargs_build_the_official_vit_huge():
    config = IJepaConfig(**VIT_HUGE_PATCH14_KWARGS)
    # vit_huge: embed_dim 1280, depth 32, 16 heads, mlp_ratio 4
    assert config.intermediate_size == 4 * config.hidden_size


def test_predictor_heads_default_to_the_encoder_heads_and_an_explicit_value_is_kept():
    assert (
        IJepaPretrainingConfig(
            backbone_config=dict(TINY_IJEPA), predictor_hidden_size=16
        ).predictor_num_attention_heads
        == 2
    )
    explicit = IJepaPretrainingConfig(
        backbone_config=dict(TINY_IJEPA), predictor_hidden_size=16, predictor_num_attention_heads=4
    )
    assert explicit.predictor_num_attention_heads == 4


@pytest.mark.parametrize(
    "argument, value",
    [
        ("predictor_hidden_size", 0),
        ("predictor_hidden_size", 2.5),
        ("predictor_hidden_size", 18),  # not a multiple of 4
        ("predictor_hidden_size", 36),  # multiple of 4, not of the 8 heads below
        ("predictor_num_hidden_layers", 0),
        ("predictor_num_hidden_layers", True),
        ("predictor_num_attention_heads", 0),
        ("predictor_mlp_ratio", 0.0),
        ("predictor_mlp_ratio", "4"),
        ("loss_type", "l2"),
        ("loss_type", None),
        ("normalize_targets", 1),
        ("fixed_position_embeddings", "yes"),
        ("backbone_config", {"model_type": "not_a_transformers_model"}),
        ("backbone_config", 42),
        ("backbone_config", dict(TINY_VIT)),  # a ViT has a CLS token: not an I-JEPA encoder
        ("backbone_config", {**TINY_IJEPA, "image_size": 18}),  # not a multiple of the patch size 4
        ("backbone_config", IJepaPretrainingConfig()),
    ],
)
def test_invalid_argument_raises_error_naming_it(argument, value):
    values = {"backbone_config": dict(TINY_IJEPA), "predictor_hidden_size": 16, "predictor_num_attention_heads": 8}
    values[argument] = value
    with pytest.raises(ValueError, match=f"`{argument}`"):
        IJepaPretrainingConfig(**values)


def test_fixed_position_embeddings_need_a_hidden_size_multiple_of_4():
    odd = {**TINY_IJEPA, "hidden_size": 30, "num_attention_heads": 2}
    with pytest.raises(ValueError, match="`fixed_position_embeddings=True`"):
        IJepaPretrainingConfig(backbone_config=odd, predictor_hidden_size=16)
    assert IJepaPretrainingConfig(backbone_config=odd, predictor_hidden_size=16, fixed_position_embeddings=False)


def test_vit_backbone_error_says_what_to_use():
    with pytest.raises(ValueError, match="model_type 'ijepa'.*got model_type 'vit'"):
        IJepaPretrainingConfig(backbone_config=ViTConfig(hidden_size=32, num_attention_heads=2))


def test_backbone_config_accepts_config_objects_and_dicts():
    from_object = IJepaPretrainingConfig(
        backbone_config=IJepaConfig(**{k: v for k, v in TINY_IJEPA.items() if k != "model_type"}),
        predictor_hidden_size=16,
    )
    from_dict = IJepaPretrainingConfig(backbone_config=dict(TINY_IJEPA), predictor_hidden_size=16)
    for config in (from_object, from_dict):
        assert isinstance(config.backbone_config, IJepaConfig)
        assert config.backbone_config.hidden_size == 32 and config.patch_grid_size == (4, 4)
    assert from_dict.encoder_backbone_config() is not from_dict.backbone_config  # each encoder owns its config
    assert from_dict.encoder_backbone_config().to_dict() == from_dict.backbone_config.to_dict()


def test_save_and_load_round_trip_with_nested_backbone_config(tmp_path):
    config = IJepaPretrainingConfig(
        backbone_config=dict(TINY_IJEPA),
        predictor_hidden_size=16,
        predictor_num_hidden_layers=2,
        predictor_mlp_ratio=2.0,
        loss_type="mse",
        normalize_targets=False,
        fixed_position_embeddings=False,
    )
    config.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ssl_ijepa"
    assert saved["backbone_config"]["model_type"] == "ijepa"  # nested as a dict, not copied into our fields
    assert saved["backbone_config"]["hidden_size"] == 32
    assert "hidden_size" not in saved
    assert saved["predictor_num_attention_heads"] == 2  # resolved, so the checkpoint says what was built

    for loaded in (IJepaPretrainingConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert isinstance(loaded, IJepaPretrainingConfig)
        assert isinstance(loaded.backbone_config, IJepaConfig)
        assert loaded.backbone_config.to_dict() == config.backbone_config.to_dict()
        for name in (
            "predictor_hidden_size",
            "predictor_num_hidden_layers",
            "predictor_num_attention_heads",
            "predictor_mlp_ratio",
            "loss_type",
            "normalize_targets",
            "fixed_position_embeddings",
        ):
            assert getattr(loaded, name) == getattr(config, name), name
