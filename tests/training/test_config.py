from pathlib import Path

import pytest
import yaml

from hf_ssl.training import ConfigError, DinoRecipe
from hf_ssl.training.config import parse_overrides

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def write(tmp_path, content: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize("name", ["dino.yaml", "dino_fashion_mnist_demo.yaml"])
def test_shipped_recipes_parse(name):
    recipe = DinoRecipe.from_yaml(RECIPES / name)
    assert recipe.build_model_config().model_type == "hf_ssl_dino"
    assert recipe.augmentation.global_crops_number == 2


def test_official_recipe_values():
    recipe = DinoRecipe.from_yaml(RECIPES / "dino.yaml")
    config = recipe.build_model_config()
    assert config.out_dim == 65536 and config.backbone_config.layer_norm_eps == 1e-6
    assert (recipe.training.learning_rate, recipe.training.min_lr, recipe.training.warmup_epochs) == (5e-4, 1e-6, 10)
    assert (recipe.training.weight_decay, recipe.training.weight_decay_end, recipe.training.max_grad_norm) == (0.04, 0.4, 3.0)
    assert recipe.augmentation.local_crops_number == 8 and recipe.augmentation.local_crop_size == 96
    assert tuple(recipe.augmentation.global_crops_scale) == (0.4, 1.0)


def test_overrides_reach_every_section_with_types(tmp_path):
    path = write(tmp_path, {"training": {"output_dir": str(tmp_path / "out")}})
    recipe = DinoRecipe.from_yaml(
        path,
        ["training.max_steps=7", "--training.learning_rate", "1e-3", "augmentation.global_crops_scale=[0.3, 1]", "model.out_dim=128"],
    )
    assert recipe.training.max_steps == 7
    assert recipe.training.learning_rate == pytest.approx(1e-3)  # YAML reads "1e-3" as a string: coerced to float
    assert recipe.augmentation.global_crops_scale == (0.3, 1.0)
    assert recipe.build_model_config().out_dim == 128


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    path = write(tmp_path, {"training": {"learning_rat": 0.1}})
    with pytest.raises(ConfigError) as error:
        DinoRecipe.from_yaml(path)
    message = str(error.value)
    assert "training.learning_rat" in message and "'learning_rate'" in message and "Valid keys" in message


def test_unknown_section_and_model_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key .*optimiser.*Valid keys"):
        DinoRecipe.from_yaml(write(tmp_path, {"optimiser": {"lr": 1}}))
    with pytest.raises(ConfigError, match="model.out_dimension.*out_dim"):
        DinoRecipe.from_yaml(write(tmp_path, {"model": {"out_dimension": 5}}))


@pytest.mark.parametrize(
    "override, where",
    [
        ("training.max_steps=ten", "training.max_steps"),
        ("training.bf16=maybe", "training.bf16"),
        ("augmentation.global_crop_size=[1,2]", "augmentation.global_crop_size"),
        ("evaluation.knn_k=2.5", "evaluation.knn_k"),
    ],
)
def test_wrong_type_names_the_key(tmp_path, override, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        DinoRecipe.from_yaml(write(tmp_path, {}), [override])


def test_invalid_value_is_reported_with_its_section(tmp_path):
    with pytest.raises(ConfigError, match="training"):
        DinoRecipe.from_yaml(write(tmp_path, {}), ["training.teacher_momentum=1.5"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section"):
        parse_overrides(["max_steps=3"])
    with pytest.raises(ConfigError, match="no value"):
        parse_overrides(["--training.max_steps"])
    assert parse_overrides(["a.b=null", "a.c=[1, 2]"]) == [("a.b", None), ("a.c", [1, 2])]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        DinoRecipe.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        DinoRecipe.from_yaml(bad)


def test_resolved_recipe_round_trips(tmp_path):
    recipe = DinoRecipe.from_yaml(RECIPES / "dino_fashion_mnist_demo.yaml", [f"training.output_dir={tmp_path}"])
    saved = recipe.save(tmp_path)
    reloaded = yaml.safe_load(saved.read_text())
    assert reloaded["training"]["max_steps"] == recipe.training.max_steps
    assert reloaded["augmentation"]["global_crop_size"] == 28
    assert reloaded["model"]["backbone_config"]["patch_size"] == 7
