"""Kill a run at a random step and resume it: it must end with the weights of an uninterrupted run
(both engines). Also: SIGTERM saves a checkpoint and stops cleanly, and bad resume paths fail early."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ssl.training import checkpointing

ROOT = Path(__file__).resolve().parents[1].parent
WORKER = ROOT / "tests" / "training" / "resume_worker.py"
MAX_STEPS = 7  # 24 images, batch 4 x accumulation 2: 3 optimizer steps per epoch, so the run crosses 2 epochs
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_worker(output_dir: Path, engine: str, resume: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(WORKER), str(output_dir), engine, str(MAX_STEPS)] + ([resume] if resume else [])
    result = subprocess.run(command, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def start_worker(output_dir: Path, engine: str) -> subprocess.Popen:
    command = [sys.executable, str(WORKER), str(output_dir), engine, str(MAX_STEPS)]
    return subprocess.Popen(command, cwd=ROOT, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(engine, tmp_path, uninterrupted):
    kill_after = random.randint(1, MAX_STEPS - 2)
    process = start_worker(tmp_path, engine)
    wait_for_checkpoint(tmp_path, kill_after, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    survivors = checkpointing.list_checkpoints(tmp_path)
    assert survivors, f"no complete checkpoint survived the kill after checkpoint-{kill_after}"
    assert not (tmp_path / "final.safetensors").exists(), "the run finished before it was killed"

    result = run_worker(tmp_path, engine, resume="auto")
    assert f"finished at step {MAX_STEPS}" in result.stdout
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
