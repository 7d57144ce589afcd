"""Starting a method's backbones from a pretrained plain transformers model (``model.pretrained_backbone``,
``load_pretrained_backbone``, ``from_pretrained_backbone``): every backbone gets the weights, heads keep their
init, an RGB first layer is adapted to N channels, position embeddings to another image size, and whatever does not
fit is refused with the key or the model at fault. Every pretrained model is a tiny one made here."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, PreTrainedModel, ResNetConfig, ResNetForImageClassification

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.errors import ConfigError
from hf_ssl.models.backbone import adapt_input_channels, build_backbone, load_pretrained_backbone
from hf_ssl.models.simclr import SimClrConfig, SimClrForPreTraining
from hf_ssl.training import Recipe, build_trainer, get_method
from tests.helpers import TINY_DINOV2, TINY_HEAD, TINY_RESNET, TINY_VIT, random_images
from tests.training.test_methods import TINY_SETUPS

TINY_PROJECTION = {"projection_hidden_dim": 32, "projection_dim": 16}
TINY_IJEPA = {**TINY_VIT, "model_type": "ijepa"}
TINY_PREDICTOR = {"predictor_hidden_size": 16, "predictor_num_hidden_layers": 1}
HUB_ID = "tiny-org/tiny-vit"


def save_plain_backbone(backbone_config, directory, seed: int = 7) -> PreTrainedModel:
    """A randomly initialised plain transformers base model of ``backbone_config`` (a dict with its model_type, or a
    config; ViT-like ones with their pooler), saved to ``directory`` as ``save_pretrained`` writes it."""
    torch.manual_seed(seed)
    if isinstance(backbone_config, dict):
        config = AutoConfig.for_model(**copy.deepcopy(backbone_config))
    else:
        config = copy.deepcopy(backbone_config)
    model = AutoModel.from_config(config).eval()
    model.save_pretrained(directory)
    return model


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def assert_holds(backbone: torch.nn.Module, expected: dict[str, torch.Tensor], adapted: dict | None = None) -> None:
    """Every tensor of ``backbone`` is the pretrained one of the same name, bit for bit, or ``adapted[name]`` (up to
    float32 rounding: a sum of three filters may add in another order)."""
    adapted = adapted or {}
    for name, tensor in backbone.state_dict().items():
        if name in adapted:
            torch.testing.assert_close(tensor, adapted[name], msg=name)
        else:
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


@pytest.fixture
def vit_folder(tmp_path):
    save_plain_backbone(TINY_VIT, tmp_path / "vit")
    return tmp_path / "vit"


@pytest.fixture
def resnet_folder(tmp_path):
    """A ResNet saved with an image-classification head, as microsoft/resnet-50 is."""
    torch.manual_seed(7)
    config = ResNetConfig(**{key: value for key, value in TINY_RESNET.items() if key != "model_type"}, num_labels=5)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "resnet")
    return tmp_path / "resnet"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding ``HUB_ID`` in the layout ``huggingface_hub`` resolves offline:
    ``models--<org>--<name>/refs/main`` names the commit of ``snapshots/<commit>/``."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    model = save_plain_backbone(TINY_VIT, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import: the environment is too late
    return state_of(model)


# ----- the first-layer rule ----------------------------------------------------------------------------------------


def test_the_rgb_filters_are_summed_or_repeated_and_rescaled_as_computed_by_hand():
    rgb = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(2, 3, 1, 1)
    by_hand = {
        1: [[6.0], [15.0]],
        2: [[1.5, 3.0], [6.0, 7.5]],  # [1, 2] and [4, 5] times 3/2
        3: [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
        4: [[0.75, 1.5, 2.25, 0.75], [3.0, 3.75, 4.5, 3.0]],  # [1, 2, 3, 1] and [4, 5, 6, 4] times 3/4
        5: [[0.6, 1.2, 1.8, 0.6, 1.2], [2.4, 3.0, 3.6, 2.4, 3.0]],  # [1, 2, 3, 1, 2] and [4, 5, 6, 4, 5] times 3/5
    }
    for num_channels, expected in by_hand.items():
        adapted = adapt_input_channels(rgb, num_channels)
        torch.testing.assert_close(
            adapted, torch.tensor(expected).reshape(2, num_channels, 1, 1), msg=str(num_channels)
        )
    # a linear first layer (out, in) and a half-precision kernel keep their layout and dtype
    torch.testing.assert_close(adapt_input_channels(rgb.reshape(2, 3), 1), torch.tensor([[6.0], [15.0]]))
    assert adapt_input_channels(rgb.half(), 4).dtype == torch.float16


@pytest.mark.parametrize(
    "weight, num_channels, message",
    [
        (torch.ones(2, 4, 1, 1), 1, r"only an RGB-pretrained first layer .* shape \(2, 4, 1, 1\)"),
        (torch.ones(2, 3, 1, 1), 0, "num_channels must be an integer >= 1, got 0"),
    ],
)
def test_the_rule_refuses_what_it_is_not_for(weight, num_channels, message):
    with pytest.raises(ValueError, match=message):
        adapt_input_channels(weight, num_channels)


# ----- every backbone of every method --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(TINY_SETUPS))
def test_every_backbone_of_every_method_starts_from_the_pretrained_weights_and_the_rest_keeps_its_init(
    tmp_path, method
):
    spec = get_method(method)
    config = TINY_SETUPS[method]()[0]
    source = save_plain_backbone(config.backbone_config, tmp_path / "pretrained")
    torch.manual_seed(0)
    model = spec.pretraining_model_class(config)
    initial = state_of(model)
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    filled = load_pretrained_backbone(model, tmp_path / "pretrained")

    # every transformers model the method holds is filled: an EMA teacher / target starts equal to its student
    held = [name for name, module in model.named_modules() if name and isinstance(module, PreTrainedModel)]
    assert set(filled) == {name for name in held if not any(name.startswith(f"{other}.") for other in held)}
    expected = state_of(source)
    for name in filled:
        assert_holds(model.get_submodule(name), expected)
    backbone_keys = {f"{name}.{key}" for name in filled for key in model.get_submodule(name).state_dict()}
    untouched = [key for key in initial if key not in backbone_keys]
    assert untouched, f"{method}: no head or predictor tensor left to check"
    final = model.state_dict()
    for key in untouched:
        torch.testing.assert_close(final[key], initial[key], rtol=0, atol=0, msg=f"{method}: {key} changed")
    assert {name: parameter.requires_grad for name, parameter in model.named_parameters()} == trainable


# method -> (pretrained backbone, tiny head arguments, module names of its backbones)
FROM_PRETRAINED_BACKBONE = {
    "dino": (TINY_VIT, TINY_HEAD, ("student.backbone", "teacher.backbone")),
    "ijepa": (
        TINY_IJEPA,
        {**TINY_PREDICTOR, "fixed_position_embeddings": False},
        ("context_encoder", "target_encoder"),
    ),
    "simclr": (TINY_RESNET, TINY_PROJECTION, ("backbone",)),
    "byol": (
        TINY_VIT,
        {"projection_hidden_dim": 32, "projection_dim": 16, "prediction_hidden_dim": 32},
        ("online.backbone", "target.backbone"),
    ),
    "vicreg": (TINY_VIT, {"expander_dims": [32, 32]}, ("backbone",)),
}


@pytest.mark.parametrize("method", sorted(FROM_PRETRAINED_BACKBONE))
def test_from_pretrained_backbone_fills_student_and_ema_teacher_alike_and_initialises_the_heads_as_usual(
    tmp_path, method
):
    backbone, head_arguments, backbone_names = FROM_PRETRAINED_BACKBONE[method]
    expected = state_of(save_plain_backbone(backbone, tmp_path / "pretrained"))
    model_class = get_method(method).pretraining_model_class
    torch.manual_seed(0)
    model = model_class.from_pretrained_backbone(tmp_path / "pretrained", **head_arguments)
    torch.manual_seed(0)
    reference = state_of(model_class(model.config))

    assert model.config.backbone_config.model_type == backbone["model_type"]
    assert tuple(model.backbones()) == backbone_names
    for name in backbone_names:
        assert_holds(model.get_submodule(name), expected)
    own = {key: tensor for key, tensor in model.state_dict().items() if not key.startswith(backbone_names)}
    for key, tensor in own.items():  # heads, predictor, loss state: what a new model of this config starts with
        torch.testing.assert_close(tensor, reference[key], rtol=0, atol=0, msg=f"{method}: {key}")
    for name in backbone_names[1:]:  # an EMA copy stays frozen
        assert not any(parameter.requires_grad for parameter in model.get_submodule(name).parameters())


def test_a_resnet_saved_with_its_classification_head_gives_its_backbone_and_batchnorm_statistics(resnet_folder):
    expected = state_of(ResNetForImageClassification.from_pretrained(resnet_folder).resnet)
    model = SimClrForPreTraining.from_pretrained_backbone(resnet_folder, **TINY_PROJECTION)
    assert_holds(model.backbone, expected)
    assert any("running_mean" in name for name in model.backbone.state_dict())


# ----- N input channels and another image size -----------------------------------------------------------------------


def rgb_rule(weight: torch.Tensor, num_channels: int) -> torch.Tensor:
    """The documented rule written channel by channel: band c gets RGB filter c % 3 times 3/N (N=1: the sum)."""
    if num_channels == 1:
        return weight[:, 0:1] + weight[:, 1:2] + weight[:, 2:3]
    return torch.stack([weight[:, band % 3] for band in range(num_channels)], dim=1) * (3 / num_channels)


@pytest.mark.parametrize("num_channels", [1, 4, 32])
def test_a_vit_patch_embedding_is_adapted_to_n_channels_and_the_model_trains_and_exports_with_them(
    tmp_path, vit_folder, num_channels
):
    expected = state_of(AutoModel.from_pretrained(vit_folder))
    model = SimClrForPreTraining.from_pretrained_backbone(
        vit_folder, backbone_config={"num_channels": num_channels}, **TINY_PROJECTION
    )
    patch_weight = "embeddings.patch_embeddings.projection.weight"
    adapted = {patch_weight: rgb_rule(expected[patch_weight], num_channels)}
    assert_holds(model.backbone, expected, adapted)

    views = torch.randn(2, 3, num_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    output = model(views)
    output.loss.backward()
    assert (
        torch.isfinite(output.loss) and model.backbone.embeddings.patch_embeddings.projection.weight.grad is not None
    )

    model.export_backbone(tmp_path / "export", image_mean=[0.5] * num_channels, image_std=[0.25] * num_channels)
    exported = AutoModel.from_pretrained(tmp_path / "export").eval()
    assert exported.config.num_channels == num_channels
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            exported(pixel_values=views[0]).last_hidden_state, model.backbone(pixel_values=views[0]).last_hidden_state
        )


def test_a_resnet_first_convolution_is_adapted_to_four_bands(resnet_folder):
    expected = state_of(ResNetForImageClassification.from_pretrained(resnet_folder).resnet)
    model = SimClrForPreTraining.from_pretrained_backbone(
        resnet_folder, backbone_config={"num_channels": 4}, **TINY_PROJECTION
    )
    first_conv = "embedder.embedder.convolution.weight"
    assert_holds(model.backbone, expected, {first_conv: rgb_rule(expected[first_conv], 4)})
    assert model(torch.randn(2, 2, 4, 32, 32)).loss.isfinite()


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_DINOV2], ids=["vit", "dinov2"])
def test_another_image_size_resamples_the_position_embeddings_as_the_pretrained_model_interpolates(tmp_path, backbone):
    source = save_plain_backbone(backbone, tmp_path / "pretrained")
    model = SimClrForPreTraining.from_pretrained_backbone(
        tmp_path / "pretrained", backbone_config={"image_size": 24}, **TINY_PROJECTION
    ).eval()
    assert model.backbone.embeddings.position_embeddings.shape[1] == 1 + 6 * 6
    images = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # at its own image_size, without interpolation: what the pretrained model computes when it interpolates
        loaded = model.backbone(pixel_values=images).last_hidden_state
        interpolated_kwargs = {"interpolate_pos_encoding": True} if backbone["model_type"] == "vit" else {}
        reference = source(pixel_values=images, **interpolated_kwargs).last_hidden_state
    torch.testing.assert_close(loaded, reference)


# ----- recipes ------------------------------------------------------------------------------------------------------


def simclr_recipe(tmp_path, augmentation: dict | None = None, **model) -> dict:
    return {
        "method": "simclr",
        "model": {**TINY_PROJECTION, **model},
        "augmentation": {"input_size": 16, **(augmentation or {})},
        "training": {"output_dir": str(tmp_path / "run")},
    }


def test_a_recipe_starts_from_a_folder_and_from_a_hub_id_resolved_offline(tmp_path, vit_folder, hub_cache):
    expected = state_of(AutoModel.from_pretrained(vit_folder))
    recipe = Recipe.from_dict(simclr_recipe(tmp_path, pretrained_backbone=str(vit_folder)))
    assert recipe.model_config.backbone_config.model_type == "vit"
    assert recipe.model_config.backbone_config.architectures is None  # the architecture, not the file's metadata
    assert_holds(recipe.build_model().backbone, expected)

    from_hub = Recipe.from_dict(simclr_recipe(tmp_path, pretrained_backbone=HUB_ID)).build_model()
    assert_holds(from_hub.backbone, hub_cache)


def test_backbone_config_keys_beside_it_must_agree_but_num_channels_and_image_size(tmp_path, vit_folder):
    agreeing = {"model_type": "vit", "hidden_size": 32, "num_channels": 2, "image_size": 24}
    two_band_views = {"input_size": 24, "cj_sat": 0.0, "cj_hue": 0.0, "random_gray_scale": 0.0}  # no RGB-only jitter
    recipe = Recipe.from_dict(
        simclr_recipe(tmp_path, two_band_views, pretrained_backbone=str(vit_folder), backbone_config=agreeing)
    )
    assert recipe.model_config.backbone_config.num_channels == 2
    assert recipe.build_model().backbone.embeddings.patch_embeddings.projection.weight.shape[1] == 2
    differing = {"hidden_size": 64, "patch_size": 8}
    with pytest.raises(
        ConfigError,
        match=r"backbone_config.hidden_size: 64 here, 32 in the pretrained model; "
        r"backbone_config.patch_size: 8 here, 4",
    ):
        Recipe.from_dict(simclr_recipe(tmp_path, pretrained_backbone=str(vit_folder), backbone_config=differing))


def test_a_recipe_refuses_resnet_weights_for_a_vit_backbone(tmp_path, resnet_folder):
    raw = simclr_recipe(tmp_path, pretrained_backbone=str(resnet_folder), backbone_config=dict(TINY_VIT))
    with pytest.raises(
        ConfigError, match=r"is a 'resnet' model \(ResNetModel\) and backbone_config asks for a 'vit' one"
    ):
        Recipe.from_dict(raw)


def test_a_folder_that_does_not_exist_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.pretrained_backbone=.*nowhere.*cannot load the pretrained backbone"):
        Recipe.from_dict(simclr_recipe(tmp_path, pretrained_backbone=str(tmp_path / "nowhere")))


def test_both_pretrained_keys_at_once_are_refused(tmp_path, vit_folder):
    raw = simclr_recipe(tmp_path, pretrained_backbone=str(vit_folder), pretrained_model_name_or_path=str(vit_folder))
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path .* or model.pretrained_backbone .*not both"):
        Recipe.from_dict(raw)


def test_continuing_from_a_plain_transformers_model_points_to_pretrained_backbone(tmp_path, vit_folder):
    raw = simclr_recipe(tmp_path, pretrained_model_name_or_path=str(vit_folder))
    message = r"is a plain transformers 'vit' model, not a trained hf_ssl simclr model.*model.pretrained_backbone: "
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(raw)


# ----- what does not fit -------------------------------------------------------------------------------------------


def test_weights_of_another_model_type_are_refused_by_the_library_too(resnet_folder):
    model = SimClrForPreTraining(SimClrConfig(backbone_config=dict(TINY_VIT), **TINY_PROJECTION))
    message = r"is a 'resnet' model \(ResNetModel\) and SimClrForPreTraining.backbone is a 'vit' one \(ViTModel\)"
    with pytest.raises(ValueError, match=message):
        load_pretrained_backbone(model, resnet_folder)


def test_a_checkpoint_without_a_tensor_of_its_model_is_refused(vit_folder):
    weights = load_file(vit_folder / "model.safetensors")
    weights.pop("encoder.layer.1.output.dense.bias")
    save_file(weights, vit_folder / "model.safetensors", metadata={"format": "pt"})
    model = SimClrForPreTraining(SimClrConfig(backbone_config=dict(TINY_VIT), **TINY_PROJECTION))
    with pytest.raises(ValueError, match=r"does not hold a whole ViTModel: tensors it lacks \['[^']*1[^']*bias'\]"):
        load_pretrained_backbone(model, vit_folder)


def test_an_hf_ssl_checkpoint_is_not_a_plain_backbone(tmp_path):
    SimClrForPreTraining(SimClrConfig(backbone_config=dict(TINY_VIT), **TINY_PROJECTION)).save_pretrained(
        tmp_path / "simclr"
    )
    with pytest.raises(ConfigError, match=r"is an hf_ssl 'hf_ssl_simclr' checkpoint.*pretrained_model_name_or_path"):
        Recipe.from_dict(simclr_recipe(tmp_path, pretrained_backbone=str(tmp_path / "simclr")))


def test_a_method_that_does_not_list_its_ema_backbone_is_stopped_before_it_starts_half_pretrained(vit_folder):
    class WithTargetBackbone(SimClrForPreTraining):
        def __init__(self, config):
            super().__init__(config)
            self.target_backbone = build_backbone(config.backbone_config_for_training())

    model = WithTargetBackbone(SimClrConfig(backbone_config=dict(TINY_VIT), **TINY_PROJECTION))
    with pytest.raises(
        RuntimeError, match=r"\['target_backbone'\] that backbone_module_names \('backbone',\) leaves out"
    ):
        load_pretrained_backbone(model, vit_folder)


# ----- training ------------------------------------------------------------------------------------------------------


def test_a_run_started_from_a_pretrained_backbone_trains(tmp_path, vit_folder):
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    from hf_ssl.data import ViewCropTransform, with_view_crops
    from hf_ssl.training.methods.simclr import SimClrViewConfig

    spec = get_method("simclr")
    model = SimClrForPreTraining.from_pretrained_backbone(vit_folder, **TINY_PROJECTION)
    pretrained = state_of(model.backbone)
    views = SimClrViewConfig(input_size=16, sigmas=(0.1, 0.5))
    dataset = Dataset.from_dict({"image": random_images(8)}, features=Features({"image": ImageFeature()}))
    arguments = spec.training_arguments_class(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=0.3,
        optimizer="lars",
        scale_learning_rate=False,
        warmup_epochs=0.0,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        seed=0,
        save_strategy="no",
    )
    trainer = build_trainer(
        model=model,
        args=arguments,
        view_config=views,
        method="simclr",
        train_dataset=with_view_crops(dataset, ViewCropTransform(views), seed=0),
    )
    trainer.train()

    assert trainer.state.global_step == 3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    moved = [name for name, tensor in model.backbone.state_dict().items() if not torch.equal(tensor, pretrained[name])]
    assert len(moved) > len(pretrained) // 2
