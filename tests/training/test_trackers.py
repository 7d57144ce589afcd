"""Trackers through transformers' report_to: the DINO metrics reach TensorBoard event files, an
offline W&B run and a local trackio database."""

import importlib.util

import pytest

from hf_ssl import DinoForPretraining
from hf_ssl.data import MultiCropTransform, with_multicrop
from hf_ssl.training import DinoTrainer
from tests.helpers import tiny_dino_config, tiny_multicrop_config, tiny_training_arguments


def train_with(tmp_path, dataset, report_to, **overrides):
    multicrop = tiny_multicrop_config()
    arguments = tiny_training_arguments(tmp_path / "out", report_to=report_to, max_steps=3, **overrides)
    trainer = DinoTrainer(
        model=DinoForPretraining(tiny_dino_config()), args=arguments, multicrop_config=multicrop,
        train_dataset=with_multicrop(dataset, MultiCropTransform(multicrop)),
    )
    trainer.train()
    return trainer


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_event_files_hold_dino_metrics(tmp_path, tiny_image_dataset, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    train_with(tmp_path, tiny_image_dataset, "tensorboard")
    event_files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert event_files
    accumulator = EventAccumulator(str(event_files[0].parent))
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    for name in ("train/loss", "train/teacher_entropy", "train/embedding_std", "train/teacher_momentum", "train/learning_rate"):
        assert name in scalars, sorted(scalars)
    assert len(accumulator.Scalars("train/loss")) == 3


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_offline_run_records_dino_metrics(tmp_path, tiny_image_dataset, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    train_with(tmp_path, tiny_image_dataset, "wandb", run_name="tiny-dino")
    wandb.finish()  # flush the offline run files
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = b"".join(path.read_bytes() for path in runs[0].glob("*.wandb"))
    for name in (b"train/teacher_entropy", b"train/loss", b"train/teacher_momentum"):
        assert name in records
