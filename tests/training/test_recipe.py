"""Recipe checks that run before anything else: sizes that the backbone and its export accept, values that make
no sense, model keys beside a pretrained model, data paths, and fp16 on a machine without a GPU."""

import copy

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hf_ssl import DinoForPreTraining
from hf_ssl.errors import ConfigError
from hf_ssl.training.setup.recipe import Recipe
from tests.helpers import TINY_DINOV2, TINY_HEAD, TINY_RESNET, TINY_VIT

RECIPE = {
    "model": {"backbone_config": TINY_VIT, **TINY_HEAD},
    "augmentation": {"global_crop_size": 16, "local_crops_number": 2, "local_crop_size": 8},
    "training": {"max_steps": 2},
}


def recipe_file(tmp_path, **sections):
    raw = copy.deepcopy(RECIPE)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ----- sizes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["augmentation.global_crop_size=32"],
            r"augmentation.global_crop_size=32 differs from the vit backbone's image_size 16"
            r".*ViTModel runs only at 16",
        ),
        (
            ["augmentation.local_crop_size=6"],
            r"augmentation.local_crop_size=6 is not a multiple of the vit backbone's patch_size 4",
        ),
        (["augmentation.local_crop_size=32"], r"local_crop_size \(32\) is larger than global_crop_size \(16\)"),
        (["evaluation.image_size=224"], r"evaluation.image_size=224 differs from the vit backbone's image_size 16"),
    ],
)
def test_sizes_the_exported_backbone_would_reject_stop_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.for_method("dino").from_yaml(recipe_file(tmp_path), overrides)


def test_the_official_recipe_derives_its_evaluation_size_and_checks_it_against_a_smaller_backbone():
    recipe = Recipe.for_method("dino").from_yaml("recipes/dino.yaml")
    assert recipe.evaluation.image_size is None and recipe.evaluation_image_size == 224
    smaller = [
        "model.backbone_config.image_size=112",
        "augmentation.global_crop_size=112",
        "augmentation.local_crop_size=48",
    ]
    assert Recipe.for_method("dino").from_yaml("recipes/dino.yaml", smaller).evaluation_image_size == 112
    with pytest.raises(ConfigError, match="evaluation.image_size=224 differs from the vit backbone's image_size 112"):
        Recipe.for_method("dino").from_yaml("recipes/dino.yaml", [*smaller, "evaluation.image_size=224"])


@pytest.mark.parametrize("backbone, global_size", [(TINY_VIT, 16), (TINY_DINOV2, 24), (TINY_RESNET, 20)])
def test_the_export_loads_and_runs_with_its_own_processor(tmp_path, backbone, global_size):
    """What the training script exports (the backbone + the processor it evaluated with), loaded by plain
    transformers, on an image of another size and shape."""
    from transformers import AutoImageProcessor, AutoModel

    from hf_ssl.models import build_image_processor

    recipe = Recipe.for_method("dino").from_yaml(
        recipe_file(tmp_path, model={"backbone_config": backbone}, augmentation={"global_crop_size": global_size})
    )
    model = DinoForPreTraining(recipe.model_config)
    processor = build_image_processor(
        backbone["model_type"], recipe.evaluation_image_size, recipe.view_config.mean, recipe.view_config.std
    )
    model.export_backbone(tmp_path / "backbone", image_processor=processor)
    exported = AutoModel.from_pretrained(tmp_path / "backbone")
    loaded_processor = AutoImageProcessor.from_pretrained(tmp_path / "backbone")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8))
    with torch.no_grad():
        output = exported(**loaded_processor(image, return_tensors="pt"))
    assert torch.isfinite(output.pooler_output).all()


# ----- values that make no sense -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.per_device_train_batch_size=0", r"per_device_train_batch_size must be an integer >= 1, got 0"),
        ("training.learning_rate=-1", r"learning_rate must be a finite number >= 0, got -1"),
        ("training.gradient_accumulation_steps=0", r"gradient_accumulation_steps must be an integer >= 1"),
        ("training.adam_beta2=1.5", r"adam_beta2 must be in \[0, 1\)"),
        ("training.max_steps=0", r"max_steps must be > 0, or -1"),
        ("training.save_total_limit=0", r"save_total_limit must be >= 1"),
        ("model.out_dim=0", r"invalid 'model' section: `out_dim` must be an integer >= 1, got 0"),
        ("evaluation.knn_k=0", r"knn_k must be >= 1"),
        ("evaluation.knn_temperature=0", r"knn_temperature must be > 0"),
        ("data.max_train_samples=0", r"max_train_samples must be >= 1"),
    ],
)
def test_values_that_make_no_sense_are_named_before_anything_runs(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.for_method("dino").from_yaml(recipe_file(tmp_path), [override])


# ----- continuing from a pretrained model ----------------------------------------------------------------------------


@pytest.fixture
def pretrained(tmp_path):
    recipe = Recipe.for_method("dino").from_yaml(recipe_file(tmp_path))
    DinoForPreTraining(recipe.model_config).save_pretrained(tmp_path / "pretrained")
    return tmp_path / "pretrained"


def test_the_recipe_that_trained_a_model_can_continue_it_with_new_loss_settings(tmp_path, pretrained):
    recipe = Recipe.for_method("dino").from_yaml(
        recipe_file(tmp_path),
        [
            f"model.pretrained_model_name_or_path={pretrained}",
            "model.teacher_temperature=0.07",
            "model.center_momentum=0.5",
        ],
    )
    model = recipe.build_model()
    assert model.config.teacher_temperature == 0.07 and model.config.center_momentum == 0.5
    assert model.loss.center_momentum == 0.5  # applied to the model, not only recorded
    assert torch.count_nonzero(model.loss.pending_center_statistics) == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.out_dim=128", r"model.out_dim: 128 here, 64 in the pretrained model"),
        (
            "model.backbone_config.hidden_size=64",
            r"model.backbone_config.hidden_size: 64 here, 32 in the pretrained model",
        ),
    ],
)
def test_an_architecture_other_than_the_pretrained_one_is_refused(tmp_path, pretrained, override, message):
    with pytest.raises(ConfigError, match=message + r".*remove these keys"):
        Recipe.for_method("dino").from_yaml(
            recipe_file(tmp_path), [f"model.pretrained_model_name_or_path={pretrained}", override]
        )


def test_a_pretrained_model_that_does_not_exist_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path=.*cannot be loaded"):
        Recipe.for_method("dino").from_yaml(
            recipe_file(tmp_path), [f"model.pretrained_model_name_or_path={tmp_path / 'nowhere'}"]
        )


# ----- data and hardware ---------------------------------------------------------------------------------------------


def test_a_data_dir_that_does_not_exist_says_so(tmp_path):
    recipe = Recipe.for_method("dino").from_yaml(
        recipe_file(tmp_path, data={"dataset": "imagefolder", "data_dir": str(tmp_path / "missing")})
    )
    with pytest.raises(ConfigError, match=r"data.data_dir='.*missing' does not exist"):
        recipe.load_datasets()


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="checks the behaviour without a GPU"
)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_without_a_gpu_warns_and_records_float32(tmp_path, caplog, precision):
    with caplog.at_level("WARNING"):
        recipe = Recipe.for_method("dino").from_yaml(recipe_file(tmp_path), [f"training.{precision}=true"])
    assert f"training.{precision}=true needs a GPU" in caplog.text
    assert getattr(recipe.training, precision) is False and recipe.to_dict()["training"][precision] is False
