"""SimCLR's negatives come from the global batch: 2 processes of 4 images train exactly like 1 process of 8 (the
projections are gathered with their gradients and DDP averages the gradients), through the whole engine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ssl.models.simclr import SimClrConfig, SimClrForPreTraining
from tests.helpers import TINY_VIT, free_port

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "training" / "simclr_world_worker.py"
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(output_dir: Path, engine: str, processes: int) -> str:
    command = [sys.executable, str(WORKER), str(output_dir), engine]
    if processes > 1:
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
            *command[1:],
        ]
    result = subprocess.run(command, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_two_processes_of_four_images_train_like_one_of_eight(engine, tmp_path):
    assert "world size 1, finished at step 3" in run(tmp_path / "one", engine, 1)
    assert "world size 2, finished at step 3" in run(tmp_path / "two", engine, 2)
    one, two = load_file(tmp_path / "one" / "final.safetensors"), load_file(tmp_path / "two" / "final.safetensors")
    torch.manual_seed(0)
    initial = SimClrForPreTraining(
        SimClrConfig(
            backbone_config=dict(TINY_VIT), projection_hidden_dim=32, projection_dim=16, projection_use_bn=False
        )
    ).state_dict()
    # moved by more than 10 times the comparison's tolerance, so that the comparison can tell a wrong gather
    moved = [
        name for name in one if ((one[name] - initial[name]).abs() > 10 * (1e-5 + 1e-4 * initial[name].abs())).any()
    ]
    assert len(moved) > 0.8 * len(one), (
        f"only {len(moved)} of {len(one)} tensors moved: the comparison would prove nothing"
    )
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
