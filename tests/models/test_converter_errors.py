"""What the official-checkpoint converters do with a folder that is not empty and with a file that is not a checkpoint
of their method: refuse with one `error: ...` line (exit status 2) that says what the folder holds or what the file
is, delete nothing without --overwrite, and advise --no_weights_only only for a sound checkpoint of the method.
"""

import argparse
import os
import pathlib

import pytest
import torch
from torch import nn

from hf_ssl.models.dino import convert_dino_official
from hf_ssl.models.ijepa import convert_ijepa_official
from hf_ssl.models.official_checkpoints import PickledObjectsError

WIDTH, DEPTH, HEADS, PATCH_SIZE, GRID_SIDE = 32, 1, 2, 4, 2
PREDICTOR_WIDTH, HEAD_HIDDEN, BOTTLENECK, OUT_DIM = 16, 24, 8, 16
CONVERTERS = {"DINO": convert_dino_official, "I-JEPA": convert_ijepa_official}


# ---------------------------------------------------------------------------------------------------------------------
# Tiny official checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def official_vit(blocks_prefix="blocks", width=WIDTH, cls_token=True):
    """A timm-style ViT state dict as both official codebases save it (I-JEPA's has no CLS token)."""
    generator = torch.Generator().manual_seed(0)
    patches = GRID_SIDE * GRID_SIDE
    state_dict = {
        "pos_embed": torch.randn(1, patches + int(cls_token), width, generator=generator),
        "patch_embed.proj.weight": torch.randn(width, 3, PATCH_SIZE, PATCH_SIZE, generator=generator),
        "patch_embed.proj.bias": torch.randn(width, generator=generator),
        "norm.weight": torch.ones(width),
        "norm.bias": torch.zeros(width),
    }
    if cls_token:
        state_dict["cls_token"] = torch.randn(1, 1, width, generator=generator)
    for index in range(DEPTH):
        block = nn.ModuleDict(
            {
                "norm1": nn.LayerNorm(width),
                "norm2": nn.LayerNorm(width),
                "attn": nn.ModuleDict({"qkv": nn.Linear(width, 3 * width), "proj": nn.Linear(width, width)}),
                "mlp": nn.ModuleDict({"fc1": nn.Linear(width, 4 * width), "fc2": nn.Linear(4 * width, width)}),
            }
        )
        state_dict.update({f"{blocks_prefix}.{index}.{key}": value for key, value in block.state_dict().items()})
    return state_dict


def dino_training_checkpoint(args=None):
    """What main_dino.py saves: student (DistributedDataParallel's `module.` prefix) and teacher, each a ViT and a
    DINOHead, the loss center and the training state."""
    mlp = nn.Sequential(nn.Linear(WIDTH, HEAD_HIDDEN), nn.GELU(), nn.Linear(HEAD_HIDDEN, BOTTLENECK))
    head = {f"mlp.{key}": value for key, value in mlp.state_dict().items()}
    head["last_layer.weight_g"] = torch.ones(OUT_DIM, 1)  # norm_last_layer: g stays 1
    head["last_layer.weight_v"] = torch.randn(OUT_DIM, BOTTLENECK)
    network = {
        **{f"backbone.{key}": value for key, value in official_vit().items()},
        **{f"head.{key}": value for key, value in head.items()},
    }
    return {
        "student": {f"module.{key}": value.clone() for key, value in network.items()},
        "teacher": network,
        "dino_loss": {"center": torch.zeros(1, OUT_DIM)},
        "epoch": 3,
        "args": args if args is not None else argparse.Namespace(arch="vit_tiny", output_dir="."),
    }


def ijepa_checkpoint():
    """What the official I-JEPA code saves: encoder, target encoder and predictor state dicts and the training
    state."""
    encoder = official_vit(cls_token=False)
    predictor = official_vit("predictor_blocks", width=PREDICTOR_WIDTH, cls_token=False)
    predictor = {key: value for key, value in predictor.items() if key.startswith("predictor_blocks.")}
    predictor.update(
        {
            "predictor_embed.weight": torch.randn(PREDICTOR_WIDTH, WIDTH),
            "predictor_embed.bias": torch.zeros(PREDICTOR_WIDTH),
            "mask_token": torch.zeros(1, 1, PREDICTOR_WIDTH),
            "predictor_pos_embed": torch.randn(1, GRID_SIDE * GRID_SIDE, PREDICTOR_WIDTH),
            "predictor_norm.weight": torch.ones(PREDICTOR_WIDTH),
            "predictor_norm.bias": torch.zeros(PREDICTOR_WIDTH),
            "predictor_proj.weight": torch.randn(WIDTH, PREDICTOR_WIDTH),
            "predictor_proj.bias": torch.zeros(WIDTH),
        }
    )
    return {
        "encoder": {f"module.{key}": value for key, value in encoder.items()},
        "predictor": predictor,
        "target_encoder": {key: value.clone() for key, value in encoder.items()},
        "epoch": 7,
        "lr": 1e-3,
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A valid file of each method."""
    folder = tmp_path_factory.mktemp("official")
    paths = {"DINO": folder / "dino-checkpoint.pth", "I-JEPA": folder / "ijepa-ep7.pth.tar"}
    torch.save(dino_training_checkpoint(), paths["DINO"])
    torch.save(ijepa_checkpoint(), paths["I-JEPA"])
    return paths


def run_command_line(method, checkpoint, output_dir, *options):
    """`main` of the method's converter, as `python -m ...` runs it."""
    return CONVERTERS[method].main(
        [
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(output_dir),
            "--num_attention_heads",
            str(HEADS),
            *options,
        ]
    )


def command_line_error(capsys, method, checkpoint, output_dir, *options):
    """The message of the one `error: ...` line the command line ends with, at exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_command_line(method, checkpoint, output_dir, *options)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and error.endswith("\n"), error
    return error.removeprefix("error: ").strip()


def previous_run(folder):
    """A finished run of another method: its model, recipe, card and checkpoints; returns {file: content}."""
    files = {
        "model.safetensors": "simclr weights",
        "config.json": '{"model_type": "simclr"}',
        "recipe.yaml": "method: simclr",
        "README.md": "# SimCLR run",
        "checkpoint-100/hf_ssl_state.json": "{}",
        "backbone/config.json": "{}",
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    return files


def contents(folder):
    return {str(path.relative_to(folder)): path.read_text() for path in folder.rglob("*") if path.is_file()}


# ---------------------------------------------------------------------------------------------------------------------
# Output folders
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", CONVERTERS)
def test_a_folder_holding_another_run_is_refused_and_left_as_it_was(method, checkpoints, tmp_path, capsys):
    run = tmp_path / "simclr-run"
    files = previous_run(run)
    error = command_line_error(capsys, method, checkpoints[method], run)
    assert f"output_dir '{run}' is not empty" in error
    for name in ("README.md", "checkpoint-100/", "config.json", "model.safetensors", "recipe.yaml"):
        assert name in error
    assert "--overwrite" in error
    assert contents(run) == files


@pytest.mark.parametrize("method", CONVERTERS)
def test_overwrite_clears_the_previous_run_before_saving(method, checkpoints, tmp_path, capsys, caplog):
    run = tmp_path / "simclr-run"
    previous_run(run)
    model = run_command_line(method, checkpoints[method], run, "--overwrite")
    saved = sorted(path.name for path in run.iterdir())
    assert saved == (
        ["backbone", "config.json", "model.safetensors", "preprocessor_config.json"]
        if method == "DINO"
        else ["config.json", "model.safetensors", "preprocessor_config.json"]
    )
    assert "recipe.yaml" in caplog.text and "checkpoint-100" in caplog.text  # the deletion is reported
    reloaded = type(model).from_pretrained(run)
    assert reloaded.config.backbone_config.hidden_size == WIDTH


@pytest.mark.parametrize(
    ("method", "convert_to_folder"),
    [
        ("DINO", convert_dino_official.convert_dino_checkpoint_to_folder),
        ("I-JEPA", convert_ijepa_official.convert_official_checkpoint_to_folder),
    ],
)
def test_the_library_call_follows_the_same_rule(method, convert_to_folder, checkpoints, tmp_path):
    run = tmp_path / "run"
    files = previous_run(run)
    with pytest.raises(FileExistsError, match=r"is not empty.*recipe\.yaml.*overwrite=True"):
        convert_to_folder(checkpoints[method], run, num_attention_heads=HEADS)
    assert contents(run) == files
    convert_to_folder(checkpoints[method], run, num_attention_heads=HEADS, overwrite=True)
    assert not (run / "recipe.yaml").exists() and (run / "model.safetensors").read_bytes() != b"simclr weights"


def test_overwrite_deletes_nothing_when_the_conversion_fails(checkpoints, tmp_path, capsys):
    run = tmp_path / "run"
    files = previous_run(run)
    error = command_line_error(capsys, "DINO", checkpoints["DINO"], run, "--overwrite", "--num_attention_heads", "5")
    assert "num_attention_heads" in error
    assert contents(run) == files


def test_overwrite_never_clears_a_folder_that_may_be_a_wrong_path(checkpoints, tmp_path, capsys, monkeypatch):
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work")
    error = command_line_error(capsys, "DINO", checkpoints["DINO"], documents, "--overwrite")
    assert "thesis.tex" in error and "no saved model or run" in error

    downloads = tmp_path / "downloads"  # the checkpoint beside an older conversion: overwriting would delete it
    previous_run(downloads)
    checkpoint = downloads / "dino.pth"
    checkpoint.write_bytes(checkpoints["DINO"].read_bytes())
    error = command_line_error(capsys, "DINO", checkpoint, downloads, "--overwrite")
    assert "holds the checkpoint being converted" in error

    repository = tmp_path / "repository"
    previous_run(repository)
    (repository / ".git").mkdir()
    assert "a git repository" in command_line_error(capsys, "I-JEPA", checkpoints["I-JEPA"], repository, "--overwrite")

    monkeypatch.chdir(repository / "backbone")
    error = command_line_error(capsys, "DINO", checkpoints["DINO"], repository, "--overwrite")
    assert "the current folder, a folder above it or the home folder" in error
    for folder in (documents, downloads, repository):
        assert folder.is_dir() and any(folder.iterdir())
    assert (documents / "thesis.tex").read_text() == "years of work" and checkpoint.is_file()


def test_output_dir_that_is_a_file_or_a_backbone_dir_over_it_is_refused(checkpoints, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert "is a file, not a folder" in command_line_error(capsys, "DINO", checkpoints["DINO"], notes, "--overwrite")
    assert notes.read_text() == "keep me"
    output_dir = tmp_path / "converted"
    error = command_line_error(capsys, "DINO", checkpoints["DINO"], output_dir, "--backbone_dir", str(output_dir))
    assert "backbone_dir" in error and "is or holds output_dir" in error
    assert not output_dir.exists()


def test_a_backbone_dir_outside_output_dir_follows_the_same_rule(checkpoints, tmp_path, capsys):
    backbone_dir = tmp_path / "plain-vit"
    files = previous_run(backbone_dir)
    error = command_line_error(
        capsys,
        "I-JEPA",
        checkpoints["I-JEPA"],
        tmp_path / "new",
        "--export_backbone",
        "target",
        "--backbone_dir",
        str(backbone_dir),
    )
    assert f"backbone_dir '{backbone_dir}' is not empty" in error
    assert contents(backbone_dir) == files and not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Files that are not checkpoints of the method
# ---------------------------------------------------------------------------------------------------------------------


def truncated_copy(source, path):
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("method", CONVERTERS)
@pytest.mark.parametrize(
    ("make_file", "expected"),
    [
        (lambda path, _: path.write_bytes(b""), "is empty (0 bytes), not an official {method} checkpoint"),
        (
            lambda path, _: path.write_text("epoch 300: loss 2.31\n"),
            "is a text file, not an official {method} checkpoint: it starts with 'epoch 300: loss 2.31'",
        ),
        (lambda path, source: truncated_copy(source, path), "is a truncated or corrupt zip archive"),
        (lambda path, _: path.write_text("<!DOCTYPE html><html><body>Sign in</body></html>"), "is an HTML page"),
    ],
    ids=["empty", "text", "truncated", "html"],
)
def test_a_file_that_is_no_checkpoint_says_what_it_is(method, make_file, expected, checkpoints, tmp_path, capsys):
    path = tmp_path / "model.pth"
    make_file(path, checkpoints[method])
    error = command_line_error(capsys, method, path, tmp_path / "out")
    assert f"checkpoint '{path}' {expected.format(method=method)}" in error
    assert "weights_only" not in error
    assert not (tmp_path / "out").exists()


def test_a_truncated_checkpoint_of_the_legacy_format_is_called_damaged(tmp_path, capsys):
    legacy = tmp_path / "legacy.pth"
    torch.save(dino_training_checkpoint(), legacy, _use_new_zipfile_serialization=False)
    path = truncated_copy(legacy, tmp_path / "cut.pth")
    error = command_line_error(capsys, "DINO", path, tmp_path / "out")
    assert "is a PyTorch checkpoint that cannot be read: it is damaged or cut short" in error
    assert "weights_only" not in error


@pytest.mark.parametrize(("method", "other"), [("DINO", "I-JEPA"), ("I-JEPA", "DINO")])
def test_a_checkpoint_of_the_other_method_names_its_converter(method, other, checkpoints, tmp_path, capsys):
    error = command_line_error(capsys, method, checkpoints[other], tmp_path / "out")
    assert f"is an official {other} checkpoint" in error
    assert f"python -m {CONVERTERS[other].__name__}" in error
    assert "weights_only" not in error


def test_a_dino_file_that_safe_loading_refuses_is_still_named_a_dino_checkpoint(tmp_path, capsys):
    # a PurePosixPath in args: torch.load(weights_only=True) refuses the file; its layout shows nonetheless
    path = tmp_path / "dino-with-path.pth"
    torch.save(dino_training_checkpoint(argparse.Namespace(output_dir=pathlib.PurePosixPath("runs"))), path)
    error = command_line_error(capsys, "I-JEPA", path, tmp_path / "out")
    assert "is an official DINO checkpoint" in error and "weights_only" not in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("method", "extra"),
    [("DINO", argparse.Namespace(output_dir=pathlib.PurePosixPath("runs"))), ("I-JEPA", argparse.Namespace(lr=1e-3))],
)
def test_no_weights_only_is_advised_for_a_sound_checkpoint_with_refused_classes(method, extra, tmp_path, capsys):
    checkpoint = dino_training_checkpoint(extra) if method == "DINO" else {**ijepa_checkpoint(), "args": extra}
    path = tmp_path / "trusted.pth"
    torch.save(checkpoint, path)
    refused = "pathlib.PurePosixPath" if method == "DINO" else "argparse.Namespace"
    read = (
        convert_dino_official.read_dino_checkpoint
        if method == "DINO"
        else convert_ijepa_official.read_official_checkpoint
    )
    with pytest.raises(PickledObjectsError, match=rf"refuses to rebuild \({refused}\)") as error_info:
        read(path)
    assert error_info.value.classes == [refused]
    error = command_line_error(capsys, method, path, tmp_path / "out")
    assert "--no_weights_only" in error and refused in error
    run_command_line(method, path, tmp_path / "out", "--no_weights_only")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_the_checkpoint_path_must_be_a_file(tmp_path, capsys):
    error = command_line_error(capsys, "I-JEPA", tmp_path, tmp_path / "out")
    assert f"checkpoint '{tmp_path}' is a folder" in error
    missing = os.path.join(tmp_path, "missing.pth")
    assert f"no DINO checkpoint file at '{missing}'" in command_line_error(capsys, "DINO", missing, tmp_path / "out")
