"""Kill a run at reproducible points (right after a checkpoint mid-run, and after its last checkpoint once
training is over) and resume it: it must end with the weights of an uninterrupted run (both engines). Also:
SIGTERM saves a checkpoint and stops cleanly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ssl.training.state import checkpointing

ROOT = Path(__file__).resolve().parents[1].parent
WORKER = ROOT / "tests" / "training" / "resume_worker.py"
MAX_STEPS = 7  # 24 images, batch 4 x accumulation 2: 3 optimizer steps per epoch, so the run crosses 2 epochs
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_worker(output_dir: Path, engine: str, resume: str | None = None, *options: str, expect_killed: bool = False):
    command = (
        [sys.executable, str(WORKER), str(output_dir), engine, str(MAX_STEPS)]
        + ([resume] if resume else [])
        + list(options)
    )
    result = subprocess.run(command, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    expected = -signal.SIGKILL if expect_killed else 0
    assert result.returncode == expected, result.stderr[-3000:]
    return result


def start_worker(output_dir: Path, engine: str) -> subprocess.Popen:
    command = [sys.executable, str(WORKER), str(output_dir), engine, str(MAX_STEPS)]
    return subprocess.Popen(
        command, cwd=ROOT, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_checkpoint(output_dir: Path, step: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (output_dir / f"checkpoint-{step}").is_dir():
        if process.poll() is not None:
            raise AssertionError(f"the worker ended before checkpoint-{step}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no checkpoint-{step} after {timeout} s")
        time.sleep(0.005)


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Final weights of an uninterrupted run on each engine (computed once per engine)."""
    cache = {}

    def final_weights(engine: str) -> dict:
        if engine not in cache:
            output_dir = tmp_path_factory.mktemp(f"uninterrupted-{engine}")
            run_worker(output_dir, engine)
            cache[engine] = load_file(output_dir / "final.safetensors")
        return cache[engine]

    return final_weights


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
@pytest.mark.parametrize("kill", ["--kill-after-checkpoint=4", "--kill-after-training"])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(engine, kill, tmp_path, uninterrupted):
    """Killed right after checkpoint-4 (mid-epoch: 3 steps per epoch), or after training ended and checkpoint-7,
    the last, was written but before the final weights: --resume auto ends with the uninterrupted run's weights,
    and a run resumed at its last step trains nothing more (no checkpoint-8)."""
    run_worker(tmp_path, engine, None, kill, expect_killed=True)
    killed_at = 4 if kill.startswith("--kill-after-checkpoint") else MAX_STEPS
    assert checkpointing.latest_checkpoint(tmp_path).name == f"checkpoint-{killed_at}"
    assert not (tmp_path / "final.safetensors").exists()

    result = run_worker(tmp_path, engine, "auto")
    assert f"finished at step {MAX_STEPS}" in result.stdout
    assert checkpointing.latest_checkpoint(tmp_path).name == f"checkpoint-{MAX_STEPS}"
    assert_same_weights(load_file(tmp_path / "final.safetensors"), uninterrupted(engine))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_sigterm_saves_a_checkpoint_and_stops_then_resume_matches(engine, tmp_path, uninterrupted):
    process = start_worker(tmp_path, engine)
    wait_for_checkpoint(tmp_path, 2, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "stopped by SIGTERM" in stdout
    stopped_at = int(stdout.split("finished at step ")[1].split(":")[0])
    assert stopped_at < MAX_STEPS
    assert checkpointing.latest_checkpoint(tmp_path).name == f"checkpoint-{stopped_at}"

    run_worker(tmp_path, engine, resume="auto")
    assert_same_weights(load_file(tmp_path / "final.safetensors"), uninterrupted(engine))
