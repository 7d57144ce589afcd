import json
import logging
import math
import os

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_ssl.evaluation.collapse import CollapseDetector
from hf_ssl.training.state.history import History, HistoryCallback, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_history() -> History:
    history = History()
    for step, loss in zip(range(1, 5), (4.0, 3.0, 2.0, 1.0)):
        history.record_step(step, {"loss": loss, "learning_rate": 1e-3 * step, "epoch": step / 4, "note": "text"})
    history.record_step(4, {"knn_top1": 50.0})  # same step as the last loss: merged into its entry
    history.record_epoch(1)
    for step, loss in ((5, 0.5), (6, 1.5)):
        history.record_step(step, {"loss": loss, "learning_rate": 5e-3}, epoch=1 + (step - 4) / 4)
    history.record_epoch(2, metrics={"knn_top1": 70.0})
    return history


def test_record_step_keeps_numbers_and_merges_a_step():
    history = small_history()
    assert [entry["step"] for entry in history.steps] == [1, 2, 3, 4, 5, 6]
    assert history.steps[3] == {
        "step": 4,
        "epoch": 1.0,
        "loss": 1.0,
        "learning_rate": pytest.approx(4e-3),
        "knn_top1": 50.0,
    }
    assert "note" not in history.steps[0]


def test_epoch_entry_is_the_mean_of_its_steps():
    first, second = small_history().epochs
    assert first["epoch"] == 1 and first["step"] == 4
    assert first["loss"] == pytest.approx((4 + 3 + 2 + 1) / 4)
    assert first["learning_rate"] == pytest.approx(1e-3 * (1 + 2 + 3 + 4) / 4)
    assert first["knn_top1"] == 50.0  # logged once in the epoch: its only value
    # only steps 5 and 6 belong to epoch 2; the explicit k-NN value is recorded as given
    assert second == {
        "epoch": 2,
        "step": 6,
        "loss": pytest.approx(1.0),
        "learning_rate": pytest.approx(5e-3),
        "knn_top1": 70.0,
    }


def test_save_load_round_trip(tmp_path):
    history = small_history()
    path = history.save(tmp_path / "run" / "history.json")  # the folder is created
    assert History.load(path) == history
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["steps"][0]["loss"] == 4.0
    with pytest.raises(ValueError, match="not a training history"):
        (tmp_path / "other.json").write_text('{"log_history": []}')
        History.load(tmp_path / "other.json")


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "history.json"
    History(steps=[{"step": 1, "loss": 1.0}]).save(path)
    small_history().save(path)  # overwrite
    assert os.listdir(tmp_path) == ["history.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    before = path.read_bytes()

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        History(steps=[{"step": 99, "loss": 0.0}]).save(path)
    assert path.read_bytes() == before  # the old file is untouched
    assert os.listdir(tmp_path) == ["history.json"]  # and the temporary file was removed


def test_plot_writes_a_png_with_one_subplot_per_metric(tmp_path):
    history = small_history()
    history.record_step(6, {"teacher_momentum": 0.996, "train_runtime": 12.0, "total_flos": 1e9})
    figure = history.plot(tmp_path / "history.png")
    content = (tmp_path / "history.png").read_bytes()
    assert content.startswith(PNG_SIGNATURE) and len(content) > 1000
    # preferred order first; bookkeeping keys (train_runtime, total_flos) are not plotted
    assert [axes.get_title() for axes in figure.axes] == ["loss", "learning_rate", "teacher_momentum", "knn_top1"]
    assert os.listdir(tmp_path) == ["history.png"]

    figure = history.plot(tmp_path / "loss.png", keys=["loss"])
    assert [axes.get_title() for axes in figure.axes] == ["loss"]
    with pytest.raises(ValueError, match="embedding_std"):
        history.plot(tmp_path / "missing.png", keys=["embedding_std"])
    with pytest.raises(ValueError, match="nothing to plot"):
        History().plot(tmp_path / "empty.png")


def test_plot_command_line(tmp_path, capsys):
    path = small_history().save(tmp_path / "history.json")
    assert main([str(path)]) == tmp_path / "history.png"
    assert (tmp_path / "history.png").read_bytes().startswith(PNG_SIGNATURE)
    main([str(path), "--output", str(tmp_path / "custom.png"), "--keys", "loss,knn_top1"])
    assert (tmp_path / "custom.png").read_bytes().startswith(PNG_SIGNATURE)
    assert str(tmp_path / "custom.png") in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "absent.json")])


def collapsed_logs(step):
    return {
        "loss": math.log(1024),
        "teacher_entropy": 0.995 * math.log(1024),
        "teacher_entropy_ratio": 0.995,
        "epoch": step / 20,
    }


def test_history_callback_records_warns_and_saves(tmp_path, caplog):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    callback = HistoryCallback(tmp_path / "out", collapse_detector=CollapseDetector(patience=20, out_dim=1024))
    with caplog.at_level(logging.WARNING, logger="hf_ssl.training.state.history"):
        for step in range(10, 50, 10):
            state.global_step, state.epoch = step, step / 20
            callback.on_log(args, state, control, logs=collapsed_logs(step))
            if step % 20 == 0:
                callback.on_epoch_end(args, state, control)
    warnings = [record for record in caplog.records if "Uniform collapse" in record.getMessage()]
    assert len(warnings) == 1 and "augmentations" in warnings[0].getMessage()
    assert callback.collapse_warnings == [warnings[0].getMessage()]
    assert [entry["step"] for entry in callback.history.steps] == [10, 20, 30, 40]
    assert [(entry["epoch"], entry["step"]) for entry in callback.history.epochs] == [(1, 20), (2, 40)]
    assert callback.history.steps[0]["epoch"] == 0.5

    state.is_world_process_zero = False  # other processes record but never write
    callback.on_train_end(args, state, control)
    assert not (tmp_path / "out").exists()
    state.is_world_process_zero = True
    callback.on_train_end(args, state, control)
    assert History.load(tmp_path / "out" / "history.json") == callback.history
    assert (tmp_path / "out" / "history.png").read_bytes().startswith(PNG_SIGNATURE)


def test_history_callback_without_plot_or_detector(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(global_step=3, epoch=0.3), TrainerControl()
    callback = HistoryCallback(tmp_path, plot=False)
    callback.on_log(args, state, control, logs={"loss": 2.0, "epoch": 0.3})
    callback.on_log(args, state, control, logs=None)
    assert callback.save() == tmp_path / "history.json"
    assert sorted(os.listdir(tmp_path)) == ["history.json"]
