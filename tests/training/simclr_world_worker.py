"""Run by test_simclr_distributed.py (directly or under ``accelerate launch``): a deterministic SimCLR run (whole
images, no photometric augmentation, no BatchNorm in the head, whose statistics would be per process) with a
total batch of 8 on any number of processes. The main process writes ``final.safetensors``."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_ssl.data import ViewCropTransform, with_view_crops  # noqa: E402
from hf_ssl.models.simclr import SimClrConfig, SimClrForPreTraining  # noqa: E402
from hf_ssl.training import SimClrTrainingArguments, SimClrViewConfig, build_trainer  # noqa: E402
from hf_ssl.training.engines.base import end_process_group  # noqa: E402
from tests.helpers import TINY_VIT, random_images  # noqa: E402

TOTAL_BATCH = 8


def main(output_dir: str, engine: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = SimClrForPreTraining(
        SimClrConfig(
            backbone_config=dict(TINY_VIT),
            projection_hidden_dim=32,
            projection_dim=16,
            projection_use_bn=False,
            temperature=0.5,
        )
    )
    views = SimClrViewConfig(
        input_size=16,
        min_scale=1.0,
        crop_ratio=(1.0, 1.0),
        hf_prob=0.0,
        cj_prob=0.0,
        random_gray_scale=0.0,
        gaussian_blur=0.0,
    )
    arguments = SimClrTrainingArguments(
        output_dir=output_dir,
        engine=engine,
        per_device_train_batch_size=TOTAL_BATCH // world_size,
        max_steps=3,
        optimizer="sgd",
        learning_rate=0.5,
        scale_learning_rate=False,
        warmup_epochs=0.0,
        min_lr=0.5,
        weight_decay=0.0,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        seed=0,
    )
    dataset = with_view_crops(Dataset.from_dict({"image": random_images(24)}), ViewCropTransform(views))
    trainer = build_trainer(model=model, args=arguments, view_config=views, train_dataset=dataset)
    trainer.train()
    if trainer.is_world_process_zero():
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(Path(output_dir) / "final.safetensors"))
        print(f"world size {world_size}, finished at step {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    end_process_group()
