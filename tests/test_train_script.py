"""The training script end to end, as a user runs it: YAML recipe -> trained model, exported backbone,
k-NN numbers; then the k-NN command on what it saved."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_VIT, random_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    images = random_images(24)
    for split, indices in (("train", range(16)), ("test", range(16, 24))):
        for index in indices:
            folder = root / split / ("horizontal" if index % 2 else "vertical")
            folder.mkdir(parents=True, exist_ok=True)
            images[index].save(folder / f"{index}.png")
    return root


def run(arguments, timeout=300):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, *arguments], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    recipe = {
        "model": {"backbone_config": TINY_VIT, "out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16},
        "data": {"dataset": "imagefolder", "data_dir": str(image_folder), "train_split": "train", "eval_split": "test"},
        "augmentation": {"global_crop_size": 16, "local_crops_number": 2, "local_crop_size": 8},
        "training": {
            "output_dir": str(output_dir), "max_steps": 3, "per_device_train_batch_size": 4, "warmup_epochs": 0,
            "dataloader_num_workers": 0,
        },
        "evaluation": {"knn_k": 5, "knn_at_start": True, "knn_max_train_samples": None, "knn_max_eval_samples": None},
    }
    config = output_dir / "tiny.yaml"
    config.write_text(yaml.safe_dump(recipe))
    stdout = run(["recipes/train_dino.py", "--config", str(config), "training.logging_steps=1"])
    return output_dir, stdout


def test_script_trains_saves_and_reports_knn(trained):
    output_dir, stdout = trained
    assert "k-NN top-1 (random init)" in stdout and "k-NN top-1 (trained)" in stdout
    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", "recipe.yaml", "knn_results.json",
                 "backbone/config.json", "backbone/model.safetensors", "backbone/preprocessor_config.json"):
        assert (output_dir / name).is_file(), name
    results = json.loads((output_dir / "knn_results.json").read_text())
    assert 0 <= results["trained"]["knn_top1"] <= 100
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and "ViTModel" in card and "optimizer steps | 3" in card
    assert f"top-1 {results['trained']['knn_top1']:.2f}%" in card
    saved = yaml.safe_load((output_dir / "recipe.yaml").read_text())
    assert saved["training"]["max_steps"] == 3 and saved["training"]["logging_steps"] == 1


def test_knn_command_gives_the_same_numbers_on_hf_ssl_and_plain_backbone(trained, image_folder):
    output_dir, _ = trained
    arguments = ["-m", "hf_ssl.evaluation.knn", "--dataset", "imagefolder", "--data-dir", str(image_folder), "--k", "5"]
    from_hf_ssl = json.loads(run([*arguments, "--model", str(output_dir)]).strip().splitlines()[-1])
    from_backbone = json.loads(run([*arguments, "--model", str(output_dir / "backbone")]).strip().splitlines()[-1])
    assert from_hf_ssl == from_backbone
    recorded = json.loads((output_dir / "knn_results.json").read_text())["trained"]
    assert from_hf_ssl["knn_top1"] == pytest.approx(recorded["knn_top1"], abs=0.01)


def test_resolved_recipe_can_be_rerun(trained):
    from hf_ssl.training import DinoRecipe

    output_dir, _ = trained
    recipe = DinoRecipe.from_yaml(output_dir / "recipe.yaml")
    assert recipe.training.max_steps == 3 and recipe.augmentation.global_crop_size == 16


def test_accelerate_engine_script_checkpoints_and_resume_errors(trained, image_folder, tmp_path):
    output_dir, _ = trained
    config = output_dir / "recipe.yaml"  # the first run's resolved recipe, on the other engine
    run_dir = tmp_path / "accelerate"
    common = ["recipes/train_dino.py", "--config", str(config), f"training.output_dir={run_dir}", "training.engine=accelerate"]
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
        (["training.engine=trainer", "--resume", str(run_dir / "checkpoint-4")], "resume it with training.engine=accelerate"),
        (["--resume", str(run_dir / "checkpoint-99")], "checkpoint-99' does not exist"),
    ):
        result = subprocess.run([sys.executable, *common, *extra], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
