"""Trackers on both engines (transformers' report_to, accelerate's log_with): the DINO metrics reach
TensorBoard event files, an offline W&B run and a local trackio database."""

import importlib.util
import time

import pytest

from tests.helpers import make_dino_trainer

ENGINES = ["trainer", "accelerate"]


def train_with(tmp_path, dataset, engine, report_to, **overrides):
    trainer = make_dino_trainer(
        tmp_path / "out", dataset, engine=engine, report_to=report_to, max_steps=3, **overrides
    )
    trainer.train()
    return trainer


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
@pytest.mark.parametrize("engine", ENGINES)
def test_tensorboard_event_files_hold_dino_metrics(engine, tmp_path, tiny_image_dataset, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    train_with(tmp_path, tiny_image_dataset, engine, "tensorboard")
    event_files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert event_files
    accumulator = EventAccumulator(str(event_files[0].parent))
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    for name in (
        "train/loss",
        "train/teacher_entropy",
        "train/embedding_std",
        "train/teacher_momentum",
        "train/learning_rate",
        "train/grad_norm",
    ):
        assert name in scalars, sorted(scalars)
    assert len(accumulator.Scalars("train/loss")) == 3


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
@pytest.mark.parametrize("engine", ENGINES)
def test_wandb_offline_run_records_dino_metrics(engine, tmp_path, tiny_image_dataset, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    wandb.teardown()  # wandb keeps its settings (the run folder) from an earlier run in this process
    train_with(tmp_path, tiny_image_dataset, engine, "wandb", run_name="tiny-dino")
    wandb.finish()  # flush the offline run files
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    names = (b"train/teacher_entropy", b"train/loss", b"train/teacher_momentum")
    deadline = time.monotonic() + 20  # the run file is written by wandb's service process
    while True:
        records = b"".join(path.read_bytes() for path in runs[0].glob("*.wandb"))
        if all(name in records for name in names) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for name in names:
        assert name in records


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio not installed")
@pytest.mark.parametrize("engine", ENGINES)
def test_trackio_local_database_records_dino_metrics(engine, tmp_path, tiny_image_dataset):
    from trackio.sqlite_storage import SQLiteStorage

    project = f"hf-ssl-test-{engine}-{tmp_path.name}"
    train_with(tmp_path, tiny_image_dataset, engine, "trackio", project=project)
    database = SQLiteStorage.get_project_db_path(project)
    files = list(database.parent.glob(database.name + "*"))  # the database and its write-ahead log
    assert files, f"no trackio database {database}"
    contents = b"".join(path.read_bytes() for path in files)
    for name in (b"teacher_entropy", b"embedding_std", b"loss"):
        assert name in contents
