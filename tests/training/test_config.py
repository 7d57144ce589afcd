from pathlib import Path

import pytest
import yaml

from hf_ssl.errors import ConfigError
from hf_ssl.training.setup.config import coerce, docstring_arguments, load_yaml, parse_overrides
from hf_ssl.training.setup.recipe import Recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def write(tmp_path, content: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize("name", ["dino.yaml", "dino_fashion_mnist_demo.yaml"])
def test_shipped_recipes_parse(name):
    recipe = Recipe.for_method("dino").from_yaml(RECIPES / name)
    assert recipe.model_config.model_type == "hf_ssl_dino"
    assert recipe.augmentation.global_crops_number == 2


def test_official_recipe_values():
    recipe = Recipe.for_method("dino").from_yaml(RECIPES / "dino.yaml")
    config = recipe.model_config
    assert config.out_dim == 65536 and config.backbone_config.layer_norm_eps == 1e-6
    assert (recipe.training.learning_rate, recipe.training.min_lr, recipe.training.warmup_epochs) == (5e-4, 1e-6, 10)
    assert (recipe.training.weight_decay, recipe.training.weight_decay_end, recipe.training.max_grad_norm) == (
        0.04,
        0.4,
        3.0,
    )
    assert recipe.augmentation.local_crops_number == 8 and recipe.augmentation.local_crop_size == 96
    assert tuple(recipe.augmentation.global_crops_scale) == (0.4, 1.0)


def test_overrides_reach_every_section_with_types(tmp_path):
    path = write(tmp_path, {"training": {"output_dir": str(tmp_path / "out")}})
    recipe = Recipe.for_method("dino").from_yaml(
        path,
        [
            "training.max_steps=7",
            "--training.learning_rate",
            "1e-3",
            "augmentation.global_crops_scale=[0.3, 1]",
            "model.out_dim=128",
        ],
    )
    assert recipe.training.max_steps == 7
    assert recipe.training.learning_rate == pytest.approx(1e-3)  # YAML reads "1e-3" as a string: coerced to float
    assert recipe.augmentation.global_crops_scale == (0.3, 1.0)
    assert recipe.model_config.out_dim == 128


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    path = write(tmp_path, {"training": {"learning_rat": 0.1}})
    with pytest.raises(ConfigError) as error:
        Recipe.for_method("dino").from_yaml(path)
    message = str(error.value)
    assert "training.learning_rat" in message and "'learning_rate'" in message and "Valid keys" in message


def test_unknown_section_and_model_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key .*optimiser.*Valid keys"):
        Recipe.for_method("dino").from_yaml(write(tmp_path, {"optimiser": {"lr": 1}}))
    with pytest.raises(ConfigError, match="model.out_dimension.*out_dim"):
        Recipe.for_method("dino").from_yaml(write(tmp_path, {"model": {"out_dimension": 5}}))


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
        Recipe.for_method("dino").from_yaml(write(tmp_path, {}), [override])


def test_invalid_value_is_reported_with_its_section(tmp_path):
    with pytest.raises(ConfigError, match="training"):
        Recipe.for_method("dino").from_yaml(write(tmp_path, {}), ["training.teacher_momentum=1.5"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section"):
        parse_overrides(["max_steps=3"])
    with pytest.raises(ConfigError, match="no value"):
        parse_overrides(["--training.max_steps"])
    assert parse_overrides(["a.b=null", "a.c=[1, 2]"]) == [("a.b", None), ("a.c", [1, 2])]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.for_method("dino").from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Recipe.for_method("dino").from_yaml(bad)


def test_resolved_recipe_round_trips(tmp_path):
    recipe = Recipe.for_method("dino").from_yaml(
        RECIPES / "dino_fashion_mnist_demo.yaml", [f"training.output_dir={tmp_path}"]
    )
    saved = recipe.save(tmp_path)
    reloaded = yaml.safe_load(saved.read_text())
    assert reloaded["training"]["max_steps"] == recipe.training.max_steps
    assert reloaded["augmentation"]["global_crop_size"] == 28
    assert reloaded["model"]["backbone_config"]["patch_size"] == 7


# ----- values read the way a user means them ----------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("1e-8", 1e-8),
        ("5E-4", 5e-4),
        ("1.0e+3", 1000.0),
        (".5", 0.5),
        ("-2e3", -2000.0),
        ("1.5", 1.5),
        ("no", "no"),
        ("yes", "yes"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("n", "n"),
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("null", None),
        ("10", 10),
        ("2024-01-01", "2024-01-01"),
        ("4.40.0", "4.40.0"),
        ("[1e-3, no]", [1e-3, "no"]),
    ],
)
def test_values_are_read_as_a_user_means_them(tmp_path, text, expected):
    assert parse_overrides([f"training.key={text}"]) == [("training.key", expected)]
    path = tmp_path / "recipe.yaml"
    path.write_text(f"training:\n  key: {text}\n")
    value = load_yaml(path)["training"]["key"]
    assert value == expected and type(value) is type(expected)


def test_plain_yaml_keeps_yaml_1_1():
    load_yaml(RECIPES / "dino.yaml")  # the recipe loader must not change how everyone else's PyYAML reads
    assert yaml.safe_load("no") is False and yaml.safe_load("1e-8") == "1e-8"


def test_yaml_1_1_words_and_exponents_reach_every_section(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model:\n  backbone_config: {{model_type: vit, layer_norm_eps: 1e-6}}\ntraining:\n  output_dir: {tmp_path}\n"
    )
    recipe = Recipe.for_method("dino").from_yaml(
        path, ["training.save_strategy=no", "training.min_lr=1e-7", "data.train_split=on"]
    )
    layer_norm_eps = recipe.model["backbone_config"]["layer_norm_eps"]
    assert layer_norm_eps == 1e-6 and isinstance(layer_norm_eps, float)  # YAML 1.1 leaves "1e-6" a string here
    assert recipe.training.save_strategy == "no" and recipe.training.min_lr == 1e-7 and recipe.data.train_split == "on"
    recipe = Recipe.for_method("dino").from_yaml(path, ["model.backbone_config.layer_norm_eps=1e-5"])
    assert recipe.model["backbone_config"]["layer_norm_eps"] == 1e-5


@pytest.mark.parametrize(
    "value, annotation, expected",
    [
        ("no", bool, False),
        ("Yes", bool, True),
        ("ON", bool, True),
        ("off", bool, False),
        ("1", bool, True),
        ("0", bool, False),
        (1, bool, True),
        (0, bool, False),
        (False, bool, False),
        (2024, str, "2024"),
        (1.5, str, "1.5"),
        ("text", str, "text"),
        ("1000", int, 1000),
        ("1e3", int, 1000),
        (3.0, int, 3),
        (7, int, 7),
        ("1e-4", float, 1e-4),
        (2, float, 2.0),
        ("no", bool | None, False),
        (None, bool | None, None),
        (5, str | None, "5"),
    ],
)
def test_coerce_accepts_what_a_user_means(value, annotation, expected):
    result = coerce(value, annotation, "section.key")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    "value, annotation, expected",
    [
        ("maybe", bool, "true or false"),
        (2, bool, "true or false"),
        (0.5, bool, "true or false"),
        (True, str, "a string"),
        ([1], str, "a string"),
        ({"a": 1}, str, "a string"),
        ("1.5", int, "an integer"),
        ("ten", int, "an integer"),
        (2.5, int, "an integer"),
        (True, int, "an integer"),
        ("inf", int, "an integer"),
        ("fast", float, "a number"),
        (True, float, "a number"),
    ],
)
def test_coerce_refuses_and_names_the_key(value, annotation, expected):
    with pytest.raises(ConfigError, match=rf"section\.key: expected {expected}"):
        coerce(value, annotation, "section.key")


def test_coercion_through_the_recipe(tmp_path):
    path = write(tmp_path, {"training": {"output_dir": str(tmp_path / "out")}})
    recipe = Recipe.for_method("dino").from_yaml(
        path,
        [
            'training.max_steps="1e3"',
            "data.skip_bad_images=no",
            "evaluation.knn_at_end=0",
            "training.scale_learning_rate=Yes",
            "training.run_name=2024",
            "model.norm_last_layer=0",
        ],
    )
    assert recipe.training.max_steps == 1000 and recipe.training.run_name == "2024"
    assert recipe.data.skip_bad_images is False and recipe.evaluation.knn_at_end is False
    assert recipe.training.scale_learning_rate is True
    assert recipe.model["norm_last_layer"] is False  # model keys are coerced by DinoConfig's annotations
    with pytest.raises(ConfigError, match=r"model\.out_dim: expected an integer"):
        Recipe.for_method("dino").from_yaml(path, ["model.out_dim=ten"])
    with pytest.raises(ConfigError, match=r"training\.run_name: expected str \| None, got True"):
        Recipe.for_method("dino").from_yaml(path, ["training.run_name=true"])


# ----- keys without their section -----------------------------------------------------------------------
SECTION_KEYS = {
    "model": ["out_dim", "backbone_config"],
    "data": ["x", "dataset"],
    "training": ["max_steps", "output_dir"],
    "evaluation": ["x"],
}


def test_a_key_without_its_section_gets_the_one_that_has_it():
    arguments = [
        "--max_steps",
        "5",
        "--output_dir=runs/a",
        "out_dim=64",
        "--training.max_steps",
        "6",
        "backbone_config.hidden_size=8",
    ]
    assert parse_overrides(arguments, SECTION_KEYS) == [
        ("training.max_steps", 5),
        ("training.output_dir", "runs/a"),
        ("model.out_dim", 64),
        ("training.max_steps", 6),
        ("model.backbone_config.hidden_size", 8),
    ]


def test_a_key_of_several_sections_or_of_none():
    with pytest.raises(ConfigError, match=r"write data\.x or evaluation\.x"):
        parse_overrides(["--x", "1"], SECTION_KEYS)
    with pytest.raises(
        ConfigError, match=r"unknown key 'max_step'.*'training\.max_steps'.*model, data, training, evaluation"
    ):
        parse_overrides(["max_step=1"], SECTION_KEYS)
    with pytest.raises(ConfigError, match=r"names a section but no key"):
        parse_overrides(["training=1"], SECTION_KEYS)
    with pytest.raises(ConfigError, match="no value"):
        parse_overrides(["--bf16", "--max_steps", "5"], SECTION_KEYS)


def test_recipe_takes_the_flat_flags_of_transformers_scripts(tmp_path):
    recipe = Recipe.for_method("dino").from_yaml(
        write(tmp_path, {}), ["--output_dir", str(tmp_path / "run"), "--max_steps=5", "save_steps=2", "--knn_k", "7"]
    )
    assert recipe.training.output_dir == str(tmp_path / "run") and recipe.training.max_steps == 5
    assert recipe.training.save_steps == 2 and recipe.evaluation.knn_k == 7
    with pytest.raises(ConfigError, match=r"unknown key 'max_step'.*training\.max_steps"):
        Recipe.for_method("dino").from_yaml(write(tmp_path, {}), ["--max_step", "5"])


def test_section_keys_are_what_each_section_accepts():
    keys = Recipe.for_method("dino").section_keys()
    assert list(keys) == ["model", "data", "augmentation", "training", "evaluation"]
    assert {"out_dim", "backbone_config", "pretrained_model_name_or_path", "return_dict"} <= set(keys["model"])
    assert {"max_steps", "save_steps", "output_dir", "teacher_momentum", "seed"} <= set(keys["training"])
    assert (
        "global_crops_scale" in keys["augmentation"] and "knn_k" in keys["evaluation"] and "data_dir" in keys["data"]
    )


def test_docstring_arguments():
    docstring = """Summary.

    Args:
        out_dim (`int`, defaults to 65536): number of
            prototypes.
        norm_last_layer (`bool`, defaults to `True`):
            Fix the `last layer`.

        > A sub-heading

        tuple_key (`tuple(int)`, *optional*): a (min, max) pair.

    Returns: nothing.
    """
    assert docstring_arguments(docstring) == {
        "out_dim": "number of prototypes.",
        "norm_last_layer": "Fix the last layer.",
        "tuple_key": "a (min, max) pair.",
    }
