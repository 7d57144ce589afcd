"""The training script end to end, as a user runs it: YAML recipe -> trained model, exported backbone,
k-NN numbers; then the k-NN command on what it saved."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import TINY_VIT, random_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Striped images labelled by their orientation, plus pure-noise images under random labels: the stripes
    are easy for any model, and the noise makes a k-NN number depend on the exact features of the model measured."""
    root = tmp_path_factory.mktemp("images")
    images = random_images(24)
    for split, indices in (("train", range(16)), ("test", range(16, 24))):
        for index in indices:
            folder = root / split / ("horizontal" if index % 2 else "vertical")
            folder.mkdir(parents=True, exist_ok=True)
            images[index].save(folder / f"{index}.png")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for index in range(16):
            folder = root / split / ("horizontal", "vertical")[int(rng.integers(2))]
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"noise-{index}.png")
    return root


def run(arguments, timeout=300, returncode=0):
    """Run ``python <arguments>`` from the repository root; check the exit code; return stdout (or, for an
    expected failure, the whole result)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, *arguments], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == returncode, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout if returncode == 0 else result


def error_line(stderr: str) -> str:
    """The script's one-line error (progress bars may still write to stderr after it)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def folder_knn(backbone_dir, image_folder, k=5):
    """k-NN top-1 of an exported backbone on the image folder, with plain transformers only."""
    from transformers import AutoImageProcessor, AutoModel

    from hf_ssl.evaluation import knn_accuracy

    model, processor = AutoModel.from_pretrained(backbone_dir).eval(), AutoImageProcessor.from_pretrained(backbone_dir)
    splits = {}
    for split in ("train", "test"):
        files = sorted((image_folder / split).glob("*/*.png"))
        with torch.no_grad():
            features = model(**processor([Image.open(path) for path in files], return_tensors="pt")).pooler_output
        labels = torch.tensor([0 if path.parent.name == "horizontal" else 1 for path in files])
        splits[split] = (features, labels)
    return knn_accuracy(*splits["train"], *splits["test"], k=k)["knn_top1"]


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    recipe = {
        "model": {"backbone_config": TINY_VIT, "out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16},
        "data": {
            "dataset": "imagefolder",
            "data_dir": str(image_folder),
            "train_split": "train",
            "eval_split": "test",
        },
        "augmentation": {"global_crop_size": 16, "local_crops_number": 2, "local_crop_size": 8},
        "training": {
            "output_dir": str(output_dir),
            "max_steps": 3,
            "per_device_train_batch_size": 4,
            "warmup_epochs": 0,
            "dataloader_num_workers": 0,
            # a constant lr and momentum that move the teacher in 3 steps (DINO's defaults would leave it at its init)
            "learning_rate": 0.01,
            "min_lr": 0.01,
            "scale_learning_rate": False,
            "teacher_momentum": 0.5,
            "teacher_momentum_end": 0.5,
        },
        "evaluation": {"knn_k": 5, "knn_at_start": True, "knn_max_train_samples": None, "knn_max_eval_samples": None},
    }
    config = output_dir / "tiny.yaml"
    config.write_text(yaml.safe_dump(recipe))
    stdout = run(["recipes/train_dino.py", "--config", str(config), "training.logging_steps=1"])
    return output_dir, stdout


def test_script_trains_saves_and_reports_knn(trained, image_folder):
    output_dir, stdout = trained
    assert "k-NN top-1 (random init)" in stdout and "k-NN top-1 (trained)" in stdout
    for name in (
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "recipe.yaml",
        "knn_results.json",
        "backbone/config.json",
        "backbone/model.safetensors",
        "backbone/preprocessor_config.json",
    ):
        assert (output_dir / name).is_file(), name
    results = json.loads((output_dir / "knn_results.json").read_text())
    # the reported number is that of the exported (trained teacher) backbone, measured here without hf_ssl's
    # evaluator; the noise images make it another number than the random initialisation's
    assert results["trained"]["knn_top1"] == pytest.approx(folder_knn(output_dir / "backbone", image_folder), abs=0.01)
    assert results["trained"]["knn_top1"] != results["random_init"]["knn_top1"]
    card = (output_dir / "README.md").read_text()
    # the root is an hf_ssl model (the plain transformers one is backbone/): no transformers pipeline_tag
    assert (
        "library_name: hf_ssl" in card
        and "pipeline_tag" not in card
        and "ViTModel" in card
        and "optimizer steps | 3" in card
    )
    assert f"top-1 {results['trained']['knn_top1']:.2f}%" in card
    saved = yaml.safe_load((output_dir / "recipe.yaml").read_text())
    assert saved["training"]["max_steps"] == 3 and saved["training"]["logging_steps"] == 1


def test_knn_command_gives_the_same_numbers_on_hf_ssl_and_plain_backbone(trained, image_folder):
    output_dir, _ = trained
    arguments = [
        "-m",
        "hf_ssl.evaluation.knn",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(image_folder),
        "--k",
        "5",
    ]
    from_hf_ssl = json.loads(run([*arguments, "--model", str(output_dir)]).strip().splitlines()[-1])
    from_backbone = json.loads(run([*arguments, "--model", str(output_dir / "backbone")]).strip().splitlines()[-1])
    assert from_hf_ssl == from_backbone
    recorded = json.loads((output_dir / "knn_results.json").read_text())["trained"]
    assert from_hf_ssl["knn_top1"] == pytest.approx(recorded["knn_top1"], abs=0.01)


def test_resolved_recipe_can_be_rerun(trained):
    from hf_ssl.training.setup.recipe import Recipe

    output_dir, _ = trained
    recipe = Recipe.for_method("dino").from_yaml(output_dir / "recipe.yaml")
    assert recipe.training.max_steps == 3 and recipe.augmentation.global_crop_size == 16


def test_accelerate_engine_script_checkpoints_and_resume_errors(trained, image_folder, tmp_path):
    output_dir, _ = trained
    config = output_dir / "recipe.yaml"  # the first run's resolved recipe, on the other engine
    run_dir = tmp_path / "accelerate"
    common = [
        "recipes/train_dino.py",
        "--config",
        str(config),
        f"training.output_dir={run_dir}",
        "training.engine=accelerate",
    ]
    stdout = run([*common, "training.max_steps=4", "training.save_strategy=steps", "training.save_steps=2"])
    assert "k-NN top-1 (trained)" in stdout
    assert sorted(path.name for path in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    for name in ("model.safetensors", "backbone/model.safetensors", "history.json", "history.png", "README.md"):
        assert (run_dir / name).is_file(), name
    state = json.loads((run_dir / "checkpoint-4" / "hf_ssl_state.json").read_text())
    assert state["engine"] == "accelerate" and state["step"] == 4

    # resuming the accelerate checkpoint with the Trainer, or from a missing folder, stops before training
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for extra, message in (
        (
            ["training.engine=trainer", "--resume", str(run_dir / "checkpoint-4")],
            "resume it with training.engine=accelerate",
        ),
        (["--resume", str(run_dir / "checkpoint-99")], "checkpoint-99' does not exist"),
    ):
        result = subprocess.run(
            [sys.executable, *common, *extra], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr[-2000:]


def test_a_failure_after_training_keeps_the_model_and_a_resume_writes_only_what_is_missing(trained, tmp_path):
    output_dir, _ = trained
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "backbone").write_text("a file where the export goes")  # the export step will fail
    common = [
        "recipes/train_dino.py",
        "--config",
        str(output_dir / "recipe.yaml"),
        "--output_dir",
        str(run_dir),
        "--max_steps",
        "2",
        "training.save_strategy=steps",
        "training.save_steps=2",
        "evaluation.knn_at_start=false",
    ]
    failed = run(common, returncode=1)
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    message = error_line(failed.stderr)
    assert message.startswith("error: writing the plain transformers backbone (backbone/) failed after training"), (
        message
    )
    assert f"Saved in {run_dir}: the trained model (config.json, model.safetensors); the image processor" in message
    assert "Not written: the plain transformers backbone (backbone/); the resolved recipe (recipe.yaml)" in message
    assert "checkpoint-2 holds the final weights" in message
    model_file = run_dir / "model.safetensors"
    saved_model = model_file.read_bytes()
    modified = model_file.stat().st_mtime_ns

    (run_dir / "backbone").unlink()  # fixed: the same command with --resume auto finishes the job without training
    stdout = run([*common, "--resume", "auto"])
    assert "Saved to" in stdout
    for name in ("backbone/model.safetensors", "recipe.yaml", "README.md", "knn_results.json"):
        assert (run_dir / name).is_file(), name
    assert model_file.stat().st_mtime_ns == modified and model_file.read_bytes() == saved_model
    assert sorted(path.name for path in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]


def test_unreadable_images_in_the_labelled_splits_are_skipped_by_the_end_of_training_knn(
    trained, image_folder, tmp_path
):
    output_dir, _ = trained
    broken_folder = tmp_path / "images"
    shutil.copytree(image_folder, broken_folder)
    for split in ("train", "test"):
        (broken_folder / split / "vertical" / "broken.png").write_bytes(b"not a png")
    run_dir = tmp_path / "run"
    stdout = run(
        [
            "recipes/train_dino.py",
            "--config",
            str(output_dir / "recipe.yaml"),
            f"training.output_dir={run_dir}",
            f"data.data_dir={broken_folder}",
            "training.max_steps=1",
            "evaluation.knn_at_start=false",
        ]
    )
    assert "k-NN top-1 (trained)" in stdout
    assert (run_dir / "backbone" / "model.safetensors").is_file()
    assert "trained" in json.loads((run_dir / "knn_results.json").read_text())


def test_a_nonfinite_streak_stops_with_a_message_naming_the_last_good_checkpoint(trained, tmp_path):
    output_dir, _ = trained
    run_dir = tmp_path / "run"
    failed = run(
        [
            "recipes/train_dino.py",
            "--config",
            str(output_dir / "recipe.yaml"),
            f"training.output_dir={run_dir}",
            "training.learning_rate=1e6",
            "training.max_steps=40",
            "training.save_strategy=steps",
            "training.save_steps=1",
            "training.save_total_limit=1",
            "training.max_consecutive_nonfinite_steps=3",
            "evaluation.knn_at_start=false",
        ],
        returncode=1,
    )
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    message = error_line(failed.stderr)
    kept = [path.name for path in run_dir.glob("checkpoint-*")]
    assert len(kept) == 1 and f"{run_dir / kept[0]}" in message, (kept, message)
    assert message.startswith("error: the loss was NaN or inf for 3 optimizer steps in a row")
    assert not (run_dir / "model.safetensors").exists()  # no final model from a diverged run


def test_values_that_make_no_sense_stop_before_anything_runs(trained):
    output_dir, _ = trained
    failed = run(
        ["recipes/train_dino.py", "--config", str(output_dir / "recipe.yaml"), "--per_device_train_batch_size", "0"],
        returncode=2,
    )
    assert (
        error_line(failed.stderr)
        == "error: invalid 'training' section: per_device_train_batch_size must be an integer >= 1, got 0"
    )


def test_the_documented_command_pretrains_on_a_folder_of_unlabelled_images(tmp_path):
    # python recipes/train_dino.py --config recipes/dino.yaml data.data_dir=/path/to/images, on images without class
    # folders: dino.yaml's eval_split (validation) does not exist there, so k-NN is skipped with one line
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(random_images(8)):
        image.save(images / f"{index}.png")
    tiny = [
        f"training.output_dir={tmp_path / 'run'}",
        "training.max_steps=2",
        "training.per_device_train_batch_size=4",
        "training.dataloader_num_workers=0",
        "training.fp16=false",
        f"model.backbone_config={json.dumps(TINY_VIT)}",
        "model.out_dim=64",
        "augmentation.global_crop_size=16",
        "augmentation.local_crop_size=8",
        "augmentation.local_crops_number=2",
    ]
    command = ["recipes/train_dino.py", "--config", "recipes/dino.yaml", f"data.data_dir={images}"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, *command, *tiny], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if "k-NN evaluation is off" in line]
    assert len(skipped) == 1, result.stderr[-3000:]
    assert "data.eval_split='validation' of the recipe is not a split of 'imagefolder'" in skipped[0]
    assert "to turn it on, set data.eval_split" in skipped[0] and "data.label_column" in skipped[0]
    assert (tmp_path / "run" / "backbone" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "knn_results.json").read_text()) == {}
    # the same split asked for on the command line is a mistake to fix, not something to skip
    failed = run([*command, *tiny, "data.eval_split=validation"], returncode=2)
    assert error_line(failed.stderr) == (
        "error: data.eval_split='validation' is not a split of 'imagefolder'; splits: ['train'] "
        "(set it to null to skip k-NN)"
    )
