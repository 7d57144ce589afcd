"""Checkpoint commits, rotation, resume resolution and compatibility checks, early stopping, run control and the
output directory's lock."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from hf_ssl.errors import ConfigError
from hf_ssl.training import EarlyStopping, RunControl
from hf_ssl.training.state import checkpointing
from tests.helpers import tiny_dino_config


def make_checkpoint(output_dir, step, metric=None, **state):
    staging = checkpointing.prepare_staging(output_dir, step)
    staging.mkdir(parents=True)
    (staging / "weights.bin").write_bytes(b"w" * 8)
    record = {"method": "dino", "engine": "trainer", "step": step, "total_batch_size": 8, "world_size": 1}
    record["metrics"] = {"knn_top1": metric} if metric is not None else {}
    record.update(state)
    checkpointing.write_state(staging, record)
    return checkpointing.commit_checkpoint(staging, checkpointing.checkpoint_path(output_dir, step))


def test_commit_publishes_the_staging_folder_and_ignores_unfinished_saves(tmp_path):
    make_checkpoint(tmp_path, 10)
    # a save killed half way: a staging folder without the state file, and a checkpoint folder without it
    unfinished = checkpointing.staging_path(tmp_path, 20)
    unfinished.mkdir()
    (unfinished / "weights.bin").write_bytes(b"partial")
    assert checkpointing.latest_checkpoint(tmp_path).name == "checkpoint-10"
    with pytest.raises(RuntimeError, match="did not finish"):
        checkpointing.commit_checkpoint(unfinished, checkpointing.checkpoint_path(tmp_path, 20))
    assert checkpointing.latest_checkpoint(tmp_path).name == "checkpoint-10"
    # the next save clears the leftovers
    make_checkpoint(tmp_path, 30)
    assert not unfinished.exists()
    assert [path.name for path in checkpointing.list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-30"]


def test_saving_the_same_step_again_replaces_the_checkpoint(tmp_path):
    make_checkpoint(tmp_path, 5, metric=1.0)
    make_checkpoint(tmp_path, 5, metric=2.0)
    assert checkpointing.read_state(tmp_path / "checkpoint-5")["metrics"]["knn_top1"] == 2.0
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint-5"]


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    make_checkpoint(tmp_path, 1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing.json, "dump", disk_full)
    with pytest.raises(OSError, match="No space left"):
        make_checkpoint(tmp_path, 2)
    monkeypatch.undo()
    assert [path.name for path in checkpointing.list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert checkpointing.read_state(tmp_path / "checkpoint-1")["step"] == 1


def test_rotation_keeps_the_last_k_and_the_best_n(tmp_path):
    for step, metric in [(1, 50.0), (2, 70.0), (3, 65.0), (4, 60.0), (5, 55.0), (6, None)]:
        make_checkpoint(tmp_path, step, metric)
    policy = checkpointing.RetentionPolicy(keep_last=2, keep_best=2, metric="knn_top1", greater_is_better=True)
    deleted = checkpointing.rotate_checkpoints(tmp_path, policy)
    assert sorted(path.name for path in deleted) == ["checkpoint-1", "checkpoint-4"]
    assert [path.name for path in checkpointing.list_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-5",
        "checkpoint-6",
    ]
    lower_is_better = checkpointing.ranked_by_metric(
        checkpointing.list_checkpoints(tmp_path), "knn_top1", greater_is_better=False
    )
    assert [path.name for path in lower_is_better] == ["checkpoint-5", "checkpoint-3", "checkpoint-2"]


def test_retention_policy_validation():
    with pytest.raises(ValueError, match="metric_for_best_model"):
        checkpointing.RetentionPolicy(keep_best=1)
    with pytest.raises(ValueError, match="keep_last"):
        checkpointing.RetentionPolicy(keep_last=0)


def test_resolve_resume(tmp_path):
    assert checkpointing.resolve_resume(None, tmp_path) is None
    assert checkpointing.resolve_resume("auto", tmp_path) is None  # nothing yet: a fresh start
    make_checkpoint(tmp_path, 3)
    make_checkpoint(tmp_path, 7)
    assert checkpointing.resolve_resume("auto", tmp_path).name == "checkpoint-7"
    assert checkpointing.resolve_resume(str(tmp_path / "checkpoint-3"), tmp_path).name == "checkpoint-3"
    with pytest.raises(ConfigError, match="does not exist"):
        checkpointing.resolve_resume(str(tmp_path / "checkpoint-99"), tmp_path)
    with pytest.raises(ConfigError, match="output directory, not a checkpoint.*checkpoint-7"):
        checkpointing.resolve_resume(str(tmp_path), tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match="not an hf_ssl checkpoint"):
        checkpointing.resolve_resume(str(tmp_path / "elsewhere"), tmp_path)


def test_resume_compatibility_errors_name_the_difference(tmp_path):
    config = tiny_dino_config()
    checkpoint = make_checkpoint(tmp_path, 4)
    config.save_pretrained(checkpoint)
    arguments = dict(method="dino", engine="trainer", model_config=config, total_batch_size=8, world_size=1)
    assert checkpointing.check_resume_compatible(checkpoint, **arguments)["step"] == 4
    with pytest.raises(ConfigError, match="'dino' checkpoint; this run trains 'ijepa'"):
        checkpointing.check_resume_compatible(checkpoint, **{**arguments, "method": "ijepa"})
    with pytest.raises(ConfigError, match="training.engine=trainer"):
        checkpointing.check_resume_compatible(checkpoint, **{**arguments, "engine": "accelerate"})
    with pytest.raises(ConfigError, match=r"out_dim: checkpoint 64, recipe 128"):
        checkpointing.check_resume_compatible(
            checkpoint, **{**arguments, "model_config": tiny_dino_config(out_dim=128)}
        )
    with pytest.raises(ConfigError, match="backbone_config.hidden_size"):
        wider = tiny_dino_config()
        wider.backbone_config.hidden_size = 64
        checkpointing.check_resume_compatible(checkpoint, **{**arguments, "model_config": wider})
    with pytest.raises(ConfigError, match="total batch of 8.*this run has 16"):
        checkpointing.check_resume_compatible(checkpoint, **{**arguments, "total_batch_size": 16, "world_size": 2})
    # another world size with the same total batch resumes
    assert checkpointing.check_resume_compatible(checkpoint, **{**arguments, "world_size": 2})["step"] == 4
    # DeepSpeed and FSDP checkpoints hold their own formats: only the same backend resumes them
    with pytest.raises(ConfigError, match="written under 'none' sharding and this run uses 'deepspeed'"):
        checkpointing.check_resume_compatible(checkpoint, **{**arguments, "sharding": "deepspeed"})
    state = json.loads((checkpoint / checkpointing.STATE_FILE).read_text())
    (checkpoint / checkpointing.STATE_FILE).write_text(json.dumps({**state, "sharding": "fsdp"}))
    with pytest.raises(ConfigError, match="'fsdp' sharding and this run uses 'none'"):
        checkpointing.check_resume_compatible(checkpoint, **arguments)
    assert checkpointing.check_resume_compatible(checkpoint, **{**arguments, "sharding": "fsdp"})["step"] == 4
    assert checkpointing.sharding_of(SimpleNamespace(distributed_type="DEEPSPEED")) == "deepspeed"
    assert checkpointing.sharding_of(SimpleNamespace(distributed_type="MULTI_GPU")) == "none"


def test_early_stopping_counts_evaluations_without_improvement():
    stopping = EarlyStopping(metric="knn_top1", patience=2, min_delta=0.5)
    assert [stopping.update(value) for value in (50.0, 52.0, 52.4, 52.3)] == [False, False, False, True]
    assert stopping.best == 52.0
    restored = EarlyStopping(metric="knn_top1", patience=2, min_delta=0.5)
    restored.load_state_dict(stopping.state_dict())
    assert restored.evaluations_without_improvement == 2 and restored.best == 52.0
    lower = EarlyStopping(metric="loss", patience=1, greater_is_better=False)
    assert [lower.update(value) for value in (3.0, 2.0, 2.5)] == [False, False, True]
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(metric="loss", patience=0)


def test_run_control_stops_on_a_signal_the_clock_and_early_stopping():
    control = RunControl(max_time_seconds=None)
    control.start()
    try:
        assert control.check() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert control.check() == "signal"
        assert "SIGTERM" in control.describe_stop()
    finally:
        control.finish()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    timed = RunControl(max_time_seconds=1e-9, handle_signals=False)
    timed.start()
    assert timed.check() == "max_time"

    stopping = RunControl(early_stopping=EarlyStopping(metric="knn_top1", patience=1), handle_signals=False)
    stopping.start()
    stopping.observe({"knn_top1": 10.0, "loss": 1.0})
    assert stopping.check() is None
    stopping.observe({"loss": 0.5})  # logs without the metric do not count
    assert stopping.check() is None
    stopping.observe({"knn_top1": 9.0})
    assert stopping.check() == "early_stopping"


def test_run_control_combines_the_flags_of_every_process():
    # another process received SIGTERM: the reduction carries its flag to this one
    other_process = torch.tensor([1.0, 0.0, 0.0])
    control = RunControl(reduce_max=lambda flags: torch.maximum(flags, other_process), handle_signals=False)
    control.start()
    assert control.check() == "signal"
    assert "another process" in control.describe_stop()


# ----- damaged checkpoints -------------------------------------------------------------------------------------------


def make_safetensors_checkpoint(output_dir, step):
    from safetensors.torch import save_file

    staging = checkpointing.prepare_staging(output_dir, step)
    staging.mkdir(parents=True)
    save_file({"weight": torch.arange(64, dtype=torch.float32)}, str(staging / "model.safetensors"))
    checkpointing.write_state(
        staging, {"method": "dino", "engine": "trainer", "step": step, "total_batch_size": 8, "world_size": 1}
    )
    return checkpointing.commit_checkpoint(staging, checkpointing.checkpoint_path(output_dir, step))


def truncate(path, keep_bytes):
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])


def test_the_state_file_lists_every_file_and_its_size(tmp_path):
    checkpoint = make_safetensors_checkpoint(tmp_path, 2)
    files = checkpointing.read_state(checkpoint)["files"]
    assert files == {"model.safetensors": (checkpoint / "model.safetensors").stat().st_size}
    assert checkpointing.checkpoint_damage(checkpoint) is None


def test_resume_auto_passes_over_a_truncated_latest_checkpoint(tmp_path, caplog):
    make_safetensors_checkpoint(tmp_path, 2)
    latest = make_safetensors_checkpoint(tmp_path, 4)
    truncate(latest / "model.safetensors", 100)
    assert "model.safetensors holds 100 bytes" in checkpointing.checkpoint_damage(latest)
    with caplog.at_level("WARNING"):
        assert checkpointing.resolve_resume("auto", tmp_path).name == "checkpoint-2"
    assert "checkpoint-4 is damaged (model.safetensors holds 100 bytes" in caplog.text
    assert "resuming from checkpoint-2 instead" in caplog.text
    # named explicitly, the damaged checkpoint is refused with the file at fault and the one to use instead
    with pytest.raises(ConfigError, match=r"checkpoint-4 is damaged: model.safetensors holds 100 bytes.*checkpoint-2"):
        checkpointing.resolve_resume(str(latest), tmp_path)


def test_a_truncated_safetensors_file_is_found_without_the_size_list(tmp_path):
    checkpoint = make_safetensors_checkpoint(tmp_path, 2)
    state = checkpointing.read_state(checkpoint)
    del state["files"]  # a checkpoint written before the size list existed
    (checkpoint / checkpointing.STATE_FILE).write_text(json.dumps(state))
    truncate(checkpoint / "model.safetensors", (checkpoint / "model.safetensors").stat().st_size - 4)
    assert "model.safetensors is truncated" in checkpointing.checkpoint_damage(checkpoint)
    truncate(checkpoint / "model.safetensors", 5)
    assert "model.safetensors is not a readable safetensors file" in checkpointing.checkpoint_damage(checkpoint)


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    truncate(make_safetensors_checkpoint(tmp_path, 2) / "model.safetensors", 10)
    with pytest.raises(ConfigError, match="no intact checkpoint.*checkpoint-2 is damaged"):
        checkpointing.resolve_resume("auto", tmp_path)


def test_resume_from_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file: give its folder"):
        checkpointing.resolve_resume(str(tmp_path / "model.safetensors"), tmp_path)


# ----- a full disk ---------------------------------------------------------------------------------------------------


def test_a_failed_save_says_the_disk_is_full_and_removes_its_staging_folder(tmp_path, monkeypatch):
    make_checkpoint(tmp_path, 1)
    monkeypatch.setattr(checkpointing, "_free_bytes", lambda path: 4096)
    staging = checkpointing.prepare_staging(tmp_path, 2)
    with pytest.raises(checkpointing.CheckpointSaveError) as raised:
        with checkpointing.saving_checkpoint(tmp_path, 2):
            staging.mkdir()
            (staging / "optimizer.pt").write_bytes(b"partial")
            raise RuntimeError("basic_ios::clear: iostream error")  # what torch.save says, without an errno
    message = str(raised.value)
    assert (
        message.startswith("no space left on device while saving checkpoint 2") and "checkpoint-1 is intact" in message
    )
    assert not staging.exists()
    assert [path.name for path in checkpointing.list_checkpoints(tmp_path)] == ["checkpoint-1"]
    # an errno says so even when space is left; another error is reported as it is
    monkeypatch.setattr(checkpointing, "_free_bytes", lambda path: 2**40)
    with pytest.raises(checkpointing.CheckpointSaveError, match="no space left on device"):
        with checkpointing.saving_checkpoint(tmp_path, 3):
            raise OSError(28, "No space left on device")
    with pytest.raises(checkpointing.CheckpointSaveError, match=r"saving checkpoint 3 .* failed \(PermissionError"):
        with checkpointing.saving_checkpoint(tmp_path, 3):
            raise PermissionError("read-only file system")


# a run's main process: takes the lock, forks a worker that outlives it (as DataLoader workers do for a few seconds
# after a kill -9 of the run), then waits to be killed
LOCK_AND_FORK = """
import os, sys, time
from hf_ssl.training.state.checkpointing import lock_output_dir
lock_output_dir(sys.argv[1])
worker = os.fork()
if worker == 0:
    time.sleep(60)
    os._exit(0)
print(worker, flush=True)
time.sleep(60)
"""


def test_the_lock_goes_with_its_process_not_with_the_workers_it_forked(tmp_path):
    run = subprocess.Popen([sys.executable, "-c", LOCK_AND_FORK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(run.stdout.readline())
        # a live run still blocks another one, naming itself
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {run.pid} on "):
            checkpointing.lock_output_dir(tmp_path)
        run.send_signal(signal.SIGKILL)
        run.wait()
        os.kill(worker, 0)  # the forked worker still lives...
        checkpointing.lock_output_dir(tmp_path)  # ...and the folder is free at once
        # (not read here: closing any descriptor of the file would drop this process's lock)
        other = subprocess.run(
            [sys.executable, "-c", LOCK_AND_FORK, str(tmp_path)], capture_output=True, text=True, timeout=120
        )
        assert other.returncode != 0 and f"in use by another run (pid {os.getpid()} on " in other.stderr, other.stderr[
            -2000:
        ]
    finally:
        checkpointing.release_output_dir(tmp_path)
        run.kill()
        run.wait()
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
