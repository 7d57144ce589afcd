"""Run as a subprocess by test_resume.py: a small deterministic DINO run on either engine that saves a
checkpoint every optimizer step, optionally resumes, and writes its final weights to final.safetensors.

--kill-after-checkpoint N: SIGKILL itself right after checkpoint-N is committed (a crash, at a reproducible point);
--kill-after-training: SIGKILL itself once training is over, before the final weights are written (a session
cut after the last checkpoint).
"""

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_ssl import DinoForPreTraining  # noqa: E402
from hf_ssl.data import ViewCropTransform, with_view_crops  # noqa: E402
from hf_ssl.training import build_trainer  # noqa: E402
from tests.helpers import random_images, tiny_dino_config, tiny_multicrop_config, tiny_training_arguments  # noqa: E402


def kill_after_checkpoint(trainer, step: int) -> None:
    """Wrap the engine's checkpoint save: once checkpoint ``step`` is committed, the process dies."""
    name = "_save_checkpoint" if hasattr(trainer, "_save_checkpoint") else "save_checkpoint"
    save = getattr(trainer, name)

    def save_then_die(*args, **kwargs):
        result = save(*args, **kwargs)
        if trainer.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(trainer, name, save_then_die)


def main(arguments) -> None:
    torch.manual_seed(0)
    multicrop = tiny_multicrop_config()
    dataset = with_view_crops(Dataset.from_dict({"image": random_images(24)}), ViewCropTransform(multicrop), seed=0)
    training_arguments = tiny_training_arguments(
        arguments.output_dir,
        engine=arguments.engine,
        max_steps=arguments.max_steps,
        gradient_accumulation_steps=2,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        warmup_epochs=1.0,
        freeze_last_layer_epochs=1.0,
        logging_steps=2,
    )
    model = DinoForPreTraining(tiny_dino_config())
    trainer = build_trainer(model=model, args=training_arguments, view_config=multicrop, train_dataset=dataset)
    if arguments.kill_after_checkpoint is not None:
        kill_after_checkpoint(trainer, arguments.kill_after_checkpoint)
    trainer.train(resume_from_checkpoint=arguments.resume)
    if arguments.kill_after_training:
        os.kill(os.getpid(), signal.SIGKILL)
    if trainer.is_world_process_zero():
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(Path(arguments.output_dir) / "final.safetensors"))
        print(f"finished at step {trainer.state.global_step}: {trainer.run_control.describe_stop()}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("engine")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("resume", nargs="?", default=None)
    parser.add_argument("--kill-after-checkpoint", type=int, default=None)
    parser.add_argument("--kill-after-training", action="store_true")
    main(parser.parse_args())
