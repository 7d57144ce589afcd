"""Fine-tuning under two CPU processes (accelerate_configs/cpu.yaml): the processes train together (one process group,
half the steps), and a checkpoint's backbone is exported once, by the main process, for both."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from hf_ssl.models import build_image_processor
from tests.helpers import TINY_VIT, free_port, random_images

ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_fine_tune_a_checkpoint_together(tmp_path):
    from hf_ssl import SimClrConfig, SimClrForPreTraining

    torch.manual_seed(0)
    run = tmp_path / "run"
    SimClrForPreTraining(
        SimClrConfig(backbone_config=dict(TINY_VIT), projection_hidden_dim=16, projection_dim=8)
    ).save_pretrained(run / "checkpoint-3")
    build_image_processor("vit", 16, [0.5] * 3, [0.25] * 3).save_pretrained(run)
    for index, image in enumerate(random_images(36, size=(20, 20))):
        folder = tmp_path / "images" / "train" / ("horizontal" if index % 2 else "vertical")
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index}.png")
    output = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {
                "model": {"model_name_or_path": str(run / "checkpoint-3")},
                "data": {
                    "dataset": "imagefolder",
                    "data_dir": str(tmp_path / "images"),
                    "train_val_split": 0.25,
                    "test_split": None,
                },
                "training": {
                    "output_dir": str(output),
                    "num_train_epochs": 2,
                    "per_device_train_batch_size": 9,
                    "report_to": "none",
                    "dataloader_num_workers": 0,
                    "logging_steps": 1,
                },
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / "cpu.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        str(ROOT / "recipes" / "finetune_classification.py"),
        "--config",
        str(recipe),
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["max_steps"] == 2 * 2  # 27 training images, 2 processes x 9 per step: 2 steps per epoch, not 3 alone
    assert result.stderr.count("exported the evaluated backbone") == 1
    assert json.loads((output / "_pretrained_backbone" / "exported_from.json").read_text())[
        "model_name_or_path"
    ].endswith("checkpoint-3")
    assert result.stdout.count("Saved the fine-tuned model") == 1
