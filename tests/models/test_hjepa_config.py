"""HJepaConfig: level defaults, validation errors that name the argument, save / load round trip."""

import json

import pytest
from transformers import AutoConfig, IJepaConfig

from hf_ssl import HJepaConfig, IJepaPretrainingConfig
from tests.helpers import TINY_VIT

TINY_IJEPA = {**TINY_VIT, "model_type": "ijepa"}  # 2 layers


def tiny_config(**overrides):
    values = dict(backbone_config=dict(TINY_IJEPA), predictor_hidden_size=16, predictor_num_hidden_layers=2)
    values.update(overrides)
    return HJepaConfig(**values)


def test_defaults_are_three_levels_and_the_ijepa_recipe():
    config = HJepaConfig()
    assert config.model_type == "hf_ssl_hjepa" and isinstance(config, IJepaPretrainingConfig)
    assert config.num_hierarchies == 3
    assert config.level_pool_sizes == [1, 2, 4]
    assert config.level_target_layers == [None, None, None]
    assert config.level_loss_weights == [1.0, 0.5, 0.25]
    assert config.contrastive_temperature == 0.1 and config.loss_type == "smooth_l1"
    # the I-JEPA part keeps I-JEPA's defaults
    assert config.backbone_config.hidden_size == 1280 and config.predictor_hidden_size == 384


def test_level_defaults_follow_the_number_of_levels():
    two = tiny_config(num_hierarchies=2)
    assert (two.level_pool_sizes, two.level_loss_weights, two.level_target_layers) == (
        [1, 2],
        [1.0, 0.5],
        [None, None],
    )
    four = tiny_config(num_hierarchies=4)
    assert four.level_pool_sizes == [1, 2, 4, 8] and four.level_loss_weights == [1.0, 0.5, 0.25, 0.125]


def test_explicit_levels_are_kept_as_lists():
    config = tiny_config(
        level_pool_sizes=(1, 3, 3),
        level_target_layers=(1, None, 1),
        level_loss_weights=(2, 0, 1),
        loss_type="contrastive",
        contrastive_temperature=0.2,
    )
    assert config.level_pool_sizes == [1, 3, 3] and config.level_target_layers == [1, None, 1]
    assert config.level_loss_weights == [2.0, 0.0, 1.0] and all(
        isinstance(w, float) for w in config.level_loss_weights
    )
    assert config.contrastive_temperature == 0.2


@pytest.mark.parametrize(
    "argument, value",
    [
        ("num_hierarchies", 0),
        ("num_hierarchies", 2.0),
        ("level_pool_sizes", [1, 2]),  # 2 values for 3 levels
        ("level_pool_sizes", "124"),
        ("level_pool_sizes", [1, 0, 4]),
        ("level_pool_sizes", [1, 2.5, 4]),
        ("level_pool_sizes", [1, True, 4]),
        ("level_target_layers", [None, 0, None]),  # the patch embedding
        ("level_target_layers", [None, 2, None]),  # num_hidden_layers: the final output is None
        ("level_target_layers", [None, -1, None]),
        ("level_target_layers", [None, "1", None]),
        ("level_loss_weights", [1.0, -0.5, 0.25]),
        ("level_loss_weights", [1.0, float("nan"), 0.25]),
        ("level_loss_weights", [1.0, float("inf"), 0.25]),
        ("level_loss_weights", [0.0, 0.0, 0.0]),
        ("level_loss_weights", [1.0, 0.5]),
        ("contrastive_temperature", 0.0),
        ("contrastive_temperature", "0.1"),
        ("loss_type", "l1"),
    ],
)
def test_invalid_argument_raises_error_naming_it(argument, value):
    with pytest.raises(ValueError, match=rf"`{argument}"):
        tiny_config(**{argument: value})


def test_error_messages_say_what_to_change():
    with pytest.raises(
        ValueError, match="None \\(the encoder's final, layer-normed output\\) or an integer in \\[1, 1\\]"
    ):
        tiny_config(level_target_layers=[None, 2, None])
    with pytest.raises(ValueError, match="`num_hierarchies` is 3: give one value per level"):
        tiny_config(level_loss_weights=[1.0])
    with pytest.raises(ValueError, match="single size: give the levels different pool sizes, or use loss_type 'mse'"):
        tiny_config(loss_type="multiscale", level_pool_sizes=[2, 2, 2])
    with pytest.raises(ValueError, match="`loss_type` 'multiscale'"):
        tiny_config(loss_type="multiscale", num_hierarchies=1)
    assert tiny_config(loss_type="multiscale").loss_type == "multiscale"


def test_ijepa_still_refuses_the_hjepa_distances():
    for loss_type in ("contrastive", "multiscale"):
        with pytest.raises(ValueError, match="`loss_type`"):
            IJepaPretrainingConfig(backbone_config=dict(TINY_IJEPA), predictor_hidden_size=16, loss_type=loss_type)


def test_save_and_load_round_trip(tmp_path):
    config = tiny_config(
        num_hierarchies=2,
        level_pool_sizes=[1, 3],
        level_target_layers=[None, 1],
        level_loss_weights=[1.0, 0.3],
        loss_type="contrastive",
        contrastive_temperature=0.07,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ssl_hjepa" and saved["backbone_config"]["model_type"] == "ijepa"
    assert saved["level_target_layers"] == [None, 1] and "supported_loss_types" not in saved
    for loaded in (HJepaConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert type(loaded) is HJepaConfig and isinstance(loaded.backbone_config, IJepaConfig)
        for name in (
            "num_hierarchies",
            "level_pool_sizes",
            "level_target_layers",
            "level_loss_weights",
            "loss_type",
            "contrastive_temperature",
            "predictor_hidden_size",
        ):
            assert getattr(loaded, name) == getattr(config, name), name
