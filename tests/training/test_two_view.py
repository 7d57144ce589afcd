"""SimCLR, BYOL and VICReg on one two-view augmentation and one two-view step: the presets' defaults and the
recipes' augmentation sections as checkpoints record them (``to_plain``: a resume compares them key by key), the
per-view keys of BYOL and VICReg, presets that are siblings rather than a chain, and the shared step."""

import pickle
from pathlib import Path

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.training import ByolViewConfig, SimClrViewConfig, VicRegViewConfig, get_method
from hf_ssl.training.methods import EmaTeacherMethod, PretrainingMethod
from hf_ssl.training.methods.two_view import TwoViewConfig, TwoViewMethod, two_view_preset
from hf_ssl.training.setup.config import ConfigError, to_plain
from hf_ssl.training.setup.recipe import Recipe
from tests.helpers import TINY_VIT
from tests.training.test_methods import TINY_SETUPS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PRESETS = {"simclr": SimClrViewConfig, "byol": ByolViewConfig, "vicreg": VicRegViewConfig}

# the sections as the code before the presets recorded them, in its key order
SIMCLR_DEFAULTS = {
    "input_size": 224,
    "min_scale": 0.08,
    "crop_ratio": [0.75, 1.3333333333333333],
    "interpolation": "bilinear",
    "hf_prob": 0.5,
    "cj_prob": 0.8,
    "cj_strength": 1.0,
    "cj_bright": 0.8,
    "cj_contrast": 0.8,
    "cj_sat": 0.8,
    "cj_hue": 0.2,
    "random_gray_scale": 0.2,
    "gaussian_blur": 0.5,
    "kernel_size": None,
    "sigmas": [0.1, 2.0],
    "solarize_prob": 0.0,
    "num_channels": None,
    "mean": None,
    "std": None,
}
BYOL_DEFAULTS = {
    **SIMCLR_DEFAULTS,
    "interpolation": "bicubic",
    "cj_bright": 0.4,
    "cj_contrast": 0.4,
    "cj_sat": 0.2,
    "cj_hue": 0.1,
    "gaussian_blur": [1.0, 0.1],
    "solarize_prob": [0.0, 0.2],
}
DEFAULTS = {"simclr": SIMCLR_DEFAULTS, "byol": BYOL_DEFAULTS, "vicreg": BYOL_DEFAULTS}
DEMO = {"input_size": 28, "min_scale": 0.3, "sigmas": [0.1, 0.6], "num_channels": 3}
RECIPE_SECTIONS = {
    "simclr.yaml": {**SIMCLR_DEFAULTS, "cj_strength": 0.5, "kernel_size": 0.1, "num_channels": 3},
    "simclr_fashion_mnist_demo.yaml": {**SIMCLR_DEFAULTS, **DEMO, "cj_strength": 0.5, "gaussian_blur": 0.3},
    "simclr_multispectral_demo.yaml": {
        **SIMCLR_DEFAULTS,
        **DEMO,
        "cj_sat": 0.0,
        "cj_hue": 0.0,
        "random_gray_scale": 0.0,
        "gaussian_blur": 0.3,
        "num_channels": 8,
    },
    "simclr_hyperspectral.yaml": {
        **SIMCLR_DEFAULTS,
        "input_size": 64,
        "min_scale": 0.2,
        "cj_strength": 0.5,
        "cj_sat": 0.0,
        "cj_hue": 0.0,
        "random_gray_scale": 0.0,
        "sigmas": [0.1, 1.0],
        "num_channels": 408,
    },
    "byol.yaml": {**BYOL_DEFAULTS, "kernel_size": 0.1, "num_channels": 3},
    "byol_fashion_mnist_demo.yaml": {**BYOL_DEFAULTS, **DEMO},
    "vicreg.yaml": {**BYOL_DEFAULTS, "num_channels": 3},
    "vicreg_fashion_mnist_demo.yaml": {**BYOL_DEFAULTS, **DEMO},
}


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_each_preset_records_its_defaults_as_before(method):
    recorded = to_plain(PRESETS[method]())
    assert recorded == DEFAULTS[method]
    assert list(recorded) == list(SIMCLR_DEFAULTS)  # the order a checkpoint's YAML writes them in


@pytest.mark.parametrize(("recipe", "expected"), RECIPE_SECTIONS.items())
def test_the_recipes_augmentation_sections_record_as_before(recipe, expected):
    section = Recipe.from_yaml(RECIPES / recipe).augmentation
    assert type(section) is PRESETS[recipe.split("_")[0].removesuffix(".yaml")]
    assert to_plain(section) == expected


def test_the_presets_views_are_the_papers():
    simclr = SimClrViewConfig().to_views_config().groups["views"]
    assert (simclr.number, simclr.interpolation, simclr.brightness, simclr.saturation, simclr.hue) == (
        2,
        "bilinear",
        0.8,
        0.8,
        0.2,
    )
    assert simclr.blur_probabilities == (0.5, 0.5) and simclr.solarize_probabilities == (0.0, 0.0)
    byol = ByolViewConfig().to_views_config()
    assert byol == VicRegViewConfig().to_views_config()
    group = byol.groups["views"]
    assert (group.interpolation, group.brightness, group.contrast, group.saturation, group.hue) == (
        "bicubic",
        0.4,
        0.4,
        0.2,
        0.1,
    )
    assert group.blur_probabilities == (1.0, 0.1) and group.solarize_probabilities == (0.0, 0.2)


@pytest.mark.parametrize("method", ["byol", "vicreg"])
def test_asymmetric_presets_take_one_probability_per_view_only(method, tmp_path):
    preset = PRESETS[method]
    assert preset.per_view_keys == ("gaussian_blur", "solarize_prob")
    group = preset(gaussian_blur=(0.5, 0.0), solarize_prob=(0.3, 0.1)).to_views_config().groups["views"]
    assert group.blur_probabilities == (0.5, 0.0) and group.solarize_probabilities == (0.3, 0.1)
    with pytest.raises(ValueError, match=r"solarize_prob must be a \(view 1, view 2\) pair"):
        preset(solarize_prob=0.2)
    raw = {
        "method": method,
        "model": {"backbone_config": dict(TINY_VIT)},
        "training": {"output_dir": str(tmp_path)},
        "augmentation": {"input_size": 16, "gaussian_blur": 0.5},
    }
    with pytest.raises(ConfigError, match=r"augmentation\.gaussian_blur: expected a list"):
        Recipe.from_dict(raw)


def test_simclr_takes_one_probability_for_both_views():
    assert SimClrViewConfig.per_view_keys == ()
    with pytest.raises(ValueError, match=r"gaussian_blur must be a probability in \[0, 1\]"):
        SimClrViewConfig(gaussian_blur=(0.5, 0.5))


@pytest.mark.parametrize(("method", "name"), [("simclr", "SimCLR"), ("byol", "BYOL"), ("vicreg", "VICReg")])
def test_errors_name_the_methods_views(method, name):
    with pytest.raises(ValueError, match=f"invalid {name} views: "):
        PRESETS[method](input_size=0)


def test_the_presets_are_siblings_not_a_chain():
    for method, preset in PRESETS.items():
        assert preset.__mro__[1] is TwoViewConfig, method
        assert not set(preset.__mro__) & (set(PRESETS.values()) - {preset}), method
        assert get_method(method).view_config_class is preset
    assert SimClrViewConfig not in ByolViewConfig.__mro__ and ByolViewConfig not in VicRegViewConfig.__mro__


def test_presets_keep_their_names_and_pickle():
    for module, preset in [("simclr", SimClrViewConfig), ("byol", ByolViewConfig), ("vicreg", VicRegViewConfig)]:
        assert preset.__module__ == f"hf_ssl.training.methods.{module}"
        views = preset(input_size=32)
        assert repr(views).startswith(f"{preset.__name__}(input_size=32,")
        assert pickle.loads(pickle.dumps(views)) == views


def test_a_preset_changes_defaults_only():
    preset = two_view_preset(
        "WideCropViews", __name__, doc="Wide crops.", views_name="wide views", min_scale=0.5, solarize_prob=(0.0, 0.5)
    )
    assert preset.__mro__[1] is TwoViewConfig and preset.per_view_keys == ("solarize_prob",)
    assert to_plain(preset()) == {**SIMCLR_DEFAULTS, "min_scale": 0.5, "solarize_prob": [0.0, 0.5]}
    with pytest.raises(TypeError, match=r"no keys \['min_scales'\]"):
        two_view_preset("Typo", __name__, doc="", views_name="typo", min_scales=0.5)


@pytest.mark.parametrize(
    ("method", "base"), [("simclr", PretrainingMethod), ("byol", EmaTeacherMethod), ("vicreg", PretrainingMethod)]
)
def test_the_three_methods_share_the_two_view_step(method, base):
    method_class = get_method(method).method_class
    # the mixin first, then the method's own base in its own order
    assert method_class.__mro__[1:3] == (TwoViewMethod, base)
    assert not issubclass(TwoViewMethod, PretrainingMethod)
    for hook in ("check_view_groups", "compute_outputs", "empty_batch_loss"):
        assert hook not in vars(method_class), (method, hook)


@pytest.mark.parametrize(("method", "gathered_width"), [("simclr", 16), ("vicreg", 32), ("byol", None)])
def test_an_empty_batch_takes_part_in_the_gather_of_a_gathering_loss(method, gathered_width, monkeypatch):
    from hf_ssl.models.simclr import loss_simclr
    from hf_ssl.models.vicreg import loss_vicreg

    class Gathered(Exception):
        pass

    def gather(local):
        raise Gathered(tuple(local.shape))

    monkeypatch.setattr(loss_simclr, "all_gather_with_grad_and_offset", gather)
    monkeypatch.setattr(loss_vicreg, "all_gather_with_grad", gather)
    spec = get_method(method)
    config, views, _ = TINY_SETUPS[method]()
    model = spec.pretraining_model_class(config)
    step = spec.method_class(
        model, views, seed=0, process_index=0, max_consecutive_nonfinite_steps=3, reduce=lambda t: t
    )
    if gathered_width is None:  # BYOL's loss is per image: a zero that reaches every trained parameter
        loss = step.empty_batch_loss(model)
        loss.backward()
        assert loss.item() == 0.0 and all(p.grad is not None for p in model.parameters() if p.requires_grad)
        return
    with pytest.raises(Gathered) as gathered:
        step.empty_batch_loss(model)
    # SimCLR gathers its two views' projections (2N, P); VICReg both views' embeddings side by side (N, 2D)
    assert gathered.value.args[0] == ((0, gathered_width) if method == "simclr" else (0, 2 * gathered_width))


@pytest.mark.parametrize("method", ["simclr", "byol", "vicreg"])
def test_the_forward_gets_the_views_group(method):
    spec = get_method(method)
    config, views, _ = TINY_SETUPS[method]()
    step = spec.method_class(
        spec.pretraining_model_class(config),
        views,
        seed=0,
        process_index=0,
        max_consecutive_nonfinite_steps=3,
        reduce=lambda t: t,
    )
    received = {}

    def model(**inputs):
        received.update(inputs)
        return "outputs"

    pair = torch.zeros(2, 3, 3, 16, 16)
    assert step.compute_outputs(model, {"views": pair}, step=0) == "outputs"
    assert received.keys() == {"views"} and received["views"] is pair
