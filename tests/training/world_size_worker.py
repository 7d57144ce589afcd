"""Run by test_world_size.py (directly or under ``accelerate launch``): a deterministic DINO run (no
random crops or photometric augmentation) with a total batch of 8 on any number of processes. With
``--stop-after N`` it receives SIGTERM during step N, so it saves ``checkpoint-N`` and stops; with
``--resume PATH`` it continues from a checkpoint. The main process writes ``final.safetensors``."""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_ssl import DinoForPreTraining  # noqa: E402
from hf_ssl.training.engines.base import end_process_group  # noqa: E402
from tests.helpers import (  # noqa: E402
    DETERMINISTIC_CROPS,
    make_dino_trainer,
    random_images,
    sigterm_during_step,
    tiny_dino_config,
    tiny_multicrop_config,
)

TOTAL_BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("engine")
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--resume", default=None)
    options = parser.parse_args()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = DinoForPreTraining(tiny_dino_config())
    trainer = make_dino_trainer(
        options.output_dir,
        Dataset.from_dict({"image": random_images(24)}),
        engine=options.engine,
        model=model,
        multicrop=tiny_multicrop_config(**DETERMINISTIC_CROPS),
        per_device_train_batch_size=TOTAL_BATCH // world_size,
        max_steps=6,
        warmup_epochs=1.0,
        save_strategy="steps",
        save_steps=100,
        adam_epsilon=1e-4,
        # after the warmup a constant lr of 1e-2 and a teacher momentum of 0.5: student and teacher end 1e-2 or
        # so from where they started, far beyond the tolerance of the test's comparison (with the defaults the
        # teacher momentum goes from 0.996 to 1.0 and the teacher stays within it)
        learning_rate=1e-2,
        min_lr=1e-2,
        teacher_momentum=0.5,
        teacher_momentum_end=0.5,
    )
    sigterm_during_step(trainer, options.stop_after)
    trainer.train(resume_from_checkpoint=options.resume)
    if trainer.is_world_process_zero():
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(Path(options.output_dir) / "final.safetensors"))
        print(f"world size {world_size}, finished at step {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main()
    end_process_group()
