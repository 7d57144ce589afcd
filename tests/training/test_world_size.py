"""A checkpoint from one process resumes on two with the same total batch (8 x 1 -> 4 x 2) and ends with
the weights of an uninterrupted single-process run, on both engines. The crops are deterministic here: the
photometric augmentation draws per process, so with it a resume on another world size is equivalent in
distribution but not bit for bit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ssl import DinoForPreTraining
from tests.helpers import free_port, tiny_dino_config

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "training" / "world_size_worker.py"
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
RTOL, ATOL = 1e-4, 1e-5


def run(arguments: list[str], processes: int = 1) -> str:
    if processes == 1:
        command = [sys.executable, str(WORKER), *arguments]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "accelerate_configs" / "cpu.yaml"),
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(free_port()),
            str(WORKER),
            *arguments,
        ]
    result = subprocess.run(command, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def moved_far(after, before, prefix):
    """Names under ``prefix`` whose tensors moved by more than 10 times the comparison's tolerance."""
    return [
        name
        for name in after
        if name.startswith(prefix)
        and after[name].is_floating_point()
        and ((after[name] - before[name]).abs() > 10 * (ATOL + RTOL * before[name].abs())).any()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_checkpoint_of_one_process_resumes_on_two(engine, tmp_path):
    run([str(tmp_path / "whole"), engine])
    whole = load_file(tmp_path / "whole" / "final.safetensors")
    torch.manual_seed(0)  # the worker's initial model
    initial = DinoForPreTraining(tiny_dino_config()).state_dict()
    for prefix in ("student.", "teacher."):  # the comparison below can then tell a wrong resume from float noise
        tensors = [name for name in whole if name.startswith(prefix) and whole[name].is_floating_point()]
        moved = moved_far(whole, initial, prefix)
        assert len(moved) > 0.8 * len(tensors), f"{prefix}: only {len(moved)} of {len(tensors)} tensors moved"
    run([str(tmp_path / "cut"), engine, "--stop-after", "4"])  # in the second epoch (3 steps per epoch)
    assert (tmp_path / "cut" / "checkpoint-4").is_dir()
    log = run([str(tmp_path / "cut"), engine, "--resume", "auto"], processes=2)
    assert "world size 2, finished at step 6" in log
    assert "Resuming a 1-process checkpoint on 2 processes" in log
    resumed = load_file(tmp_path / "cut" / "final.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=RTOL, atol=ATOL, msg=name)
