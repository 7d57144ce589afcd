"""The evaluation commands as a user types them (``hf-ssl knn``, ``hf-ssl linear-probe``): their usage line, and a
``--model`` that names no model stopping with one line that says what to give (exit code 2, no traceback)."""

import pytest

from hf_ssl.commands.cli import main as hf_ssl_command

COMMANDS = ["knn", "linear-probe"]


def run_command(capsys, *argv):
    """The exit code and the (stdout, stderr) of ``hf-ssl ARGV`` run in this process."""
    with pytest.raises(SystemExit) as exit_info:
        hf_ssl_command(list(argv))
    output = capsys.readouterr()
    return exit_info.value.code, output.out, output.err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_the_subcommand(capsys, command):
    code, out, _ = run_command(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: hf-ssl {command} [-h] --model MODEL"), out[:200]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_model_path_that_names_no_model_is_one_line_that_says_what_to_give(tmp_path, capsys, command):
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-2" / "config.json").write_text("{}")
    (tmp_path / "run" / "checkpoint-10").mkdir()
    (tmp_path / "run" / "checkpoint-10" / "config.json").write_text("{}")
    (tmp_path / "recipe.yaml").write_text("method: dino\n")
    expected = {
        str(tmp_path / "no-such-run"): "does not exist",  # an absolute path: no Hub id can look like it
        "./outputs/no-such-run": "does not exist",
        "outputs/no-such-run": "is no folder here, and no Hub model of that id could be loaded (",  # could be ORG/NAME
        str(
            tmp_path / "run"
        ): f"is a folder without config.json (its latest checkpoint: {tmp_path / 'run' / 'checkpoint-10'})",
        str(tmp_path / "recipe.yaml"): "is a file",
    }
    for model, problem in expected.items():
        code, _, err = run_command(
            capsys, command, "--model", model, "--dataset", "imagefolder", "--data-dir", str(tmp_path)
        )
        lines = err.splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --model {model} {problem}"), err
        assert lines[0].endswith(
            "give a trained run's output directory (e.g. outputs/run), its backbone/ folder, "
            "or a Hub model id (ORG/NAME)"
        ), err
