import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_ssl.errors import ConfigError
from hf_ssl.training import registered_methods
from hf_ssl.training.setup.cli import parse_command_line
from hf_ssl.training.setup.recipe import Recipe

REPOSITORY = Path(__file__).resolve().parents[2]


def parse_dino(argv, **kwargs):
    """The command line of recipes/train_dino.py: a recipe without a method: key is a DINO recipe."""
    return parse_command_line(argv, method="dino", **kwargs)


def write(tmp_path, content: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_config_resume_and_overrides_in_every_form(tmp_path):
    path = write(tmp_path, {"training": {"output_dir": str(tmp_path / "from_file")}})
    recipe, resume = parse_dino(
        [
            "--config",
            str(path),
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "5",
            "--resume",
            "auto",
            "save_steps=2",
            "--training.seed=3",
            "evaluation.knn_k=7",
            "--augmentation.local_crops_number",
            "2",
        ]
    )
    assert resume == "auto"
    assert recipe.training.output_dir == str(tmp_path / "run") and recipe.training.max_steps == 5
    assert (recipe.training.save_steps, recipe.training.seed) == (2, 3)
    assert recipe.evaluation.knn_k == 7 and recipe.augmentation.local_crops_number == 2
    recipe, resume = parse_dino([f"--config={path}"])
    assert resume is None and recipe.training.output_dir == str(tmp_path / "from_file")


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "arguments are required: --config"),
        (["--resume", "auto"], "arguments are required: --config"),
        (["--config"], "--config: expected one argument"),
        (
            ["--config", "RECIPE", "--res", "auto"],
            "unknown key 'res'",
        ),  # no abbreviation: a misspelt key is not --resume
        (["--config", "RECIPE", "--max_step", "5"], r"'training\.max_steps'"),
        (["--config", "RECIPE", "training.bf16=maybe"], r"training\.bf16"),
        (["--config", "RECIPE", "--max_steps"], "no value"),
        (["--config", "missing.yaml"], "does not exist"),
    ],
)
def test_every_mistake_is_a_config_error(tmp_path, arguments, message):
    recipe = str(write(tmp_path, {}))
    with pytest.raises(ConfigError, match=message):
        parse_dino([recipe if argument == "RECIPE" else argument for argument in arguments])


def print_help(capsys, monkeypatch, columns: int) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit) as exit_info:
        parse_dino(["--help"], description="Pretrain DINO.")
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_section_and_key(capsys, monkeypatch):
    text = print_help(capsys, monkeypatch, 100)
    assert text.startswith("usage:") and "Pretrain DINO." in text and "--resume" in text
    lines = text.splitlines()
    for section, keys in Recipe.for_method("dino").section_keys().items():
        assert f"{section}:" in lines
        for key in keys:
            assert any(line.lstrip().startswith(f"{key} (") for line in lines), f"{section}.{key} missing from --help"
    assert "    save_steps (float, default: 500)" in lines
    assert "    out_dim (int, default: 65536)" in lines
    assert "every other transformers.TrainingArguments key" in text
    # help texts from the DinoConfig docstring, the dataclass metadata, and transformers
    for help_text in (
        "number of prototypes K",
        "Global (large) crops per image",
        "Number of neighbours",
        "Peak lr",
        "Total number of training",
    ):
        assert help_text in text
    # hf_ssl's own DINO keys come before the TrainingArguments ones
    assert (
        text.index("    teacher_momentum (")
        < text.index("every other transformers.TrainingArguments key")
        < text.index("    save_steps (")
    )


def test_every_key_of_the_hf_ssl_sections_has_help():
    sections = {section.name: section for section in Recipe.for_method("dino").sections_help()}
    for name in ("data", "augmentation", "evaluation"):
        assert [key.name for _, keys in sections[name].groups for key in keys if not key.help] == [], name
    dino_model_keys = sections["model"].groups[0][1]
    assert [key.name for key in dino_model_keys if not key.help] == []


@pytest.mark.parametrize("columns", [80, 120])
def test_help_fits_the_terminal(capsys, monkeypatch, columns):
    text = print_help(capsys, monkeypatch, columns)
    assert max(len(line) for line in text.splitlines()) <= columns


def test_help_from_a_fresh_interpreter(tmp_path):
    code = "from hf_ssl.training.setup.cli import parse_command_line; parse_command_line(['--help'])"
    environment = {**os.environ, "COLUMNS": "100", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPOSITORY, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert (
        "--config CONFIG" in result.stdout and "\naugmentation:\n" in result.stdout and "save_steps (" in result.stdout
    )


def test_the_recipe_names_its_method(tmp_path):
    simclr = write(tmp_path, {"method": "simclr", "augmentation": {"input_size": 32}, "model": {"temperature": 0.2}})
    recipe, _ = parse_command_line(["--config", str(simclr), "--max_steps", "3"])
    assert recipe.method == "simclr" and recipe.model["temperature"] == 0.2 and recipe.training.max_steps == 3
    assert type(recipe.training).__name__ == "SimClrTrainingArguments" and recipe.training.optimizer == "lars"
    assert (
        recipe.view_config.names == ("views",)
        and recipe.view_config.first.number == 2
        and recipe.view_config.first.size == 32
    )
    assert recipe.to_dict()["method"] == "simclr"
    # a DINO key in a SimCLR recipe names the key and the SimCLR keys
    with pytest.raises(ConfigError, match=r"local_crops_number.*input_size"):
        parse_command_line(["--config", str(simclr), "augmentation.local_crops_number=2"])
    with pytest.raises(ConfigError, match=r"train_simclr.py, or with recipes/pretrain.py"):
        parse_dino(["--config", str(simclr)])
    assert parse_command_line(["--config", str(write(tmp_path, {}))], method="simclr")[0].method == "simclr"
    with pytest.raises(ConfigError, match=r"names no method.*" + re.escape(str(registered_methods()))):
        parse_command_line(["--config", str(write(tmp_path, {}))], method=None)
    with pytest.raises(ConfigError, match="unknown method 'swav'"):
        parse_command_line(["--config", str(write(tmp_path, {"method": "swav"}))])


def test_help_lists_the_keys_of_the_recipe_method(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    simclr = write(tmp_path, {"method": "simclr"})
    with pytest.raises(SystemExit):
        parse_command_line(["--config", str(simclr), "--help"])
    text = capsys.readouterr().out
    assert "keys of a 'simclr' recipe" in text and "    cj_strength (" in text and "    projection_dim (" in text
    assert "    out_dim (" not in text and "    local_crops_number (" not in text
