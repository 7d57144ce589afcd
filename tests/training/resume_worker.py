"""Run as a subprocess by test_resume.py: a small deterministic DINO run on either engine that saves a
checkpoint every optimizer step, optionally resumes, and writes its final weights to final.safetensors."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_ssl import DinoForPretraining  # noqa: E402
from hf_ssl.data import MultiCropTransform, with_multicrop  # noqa: E402
from hf_ssl.training import build_dino_trainer  # noqa: E402
from tests.helpers import random_images, tiny_dino_config, tiny_multicrop_config, tiny_training_arguments  # noqa: E402


def main(output_dir: str, engine: str, max_steps: int, resume: str | None = None) -> None:
    torch.manual_seed(0)
    multicrop = tiny_multicrop_config()
    dataset = with_multicrop(Dataset.from_dict({"image": random_images(24)}), MultiCropTransform(multicrop), seed=0)
    arguments = tiny_training_arguments(
        output_dir, engine=engine, max_steps=max_steps, gradient_accumulation_steps=2, save_strategy="steps",
        save_steps=1, save_total_limit=2, warmup_epochs=1.0, freeze_last_layer_epochs=1.0, logging_steps=2,
    )
    model = DinoForPretraining(tiny_dino_config())
    trainer = build_dino_trainer(model=model, args=arguments, multicrop_config=multicrop, train_dataset=dataset)
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(Path(output_dir) / "final.safetensors"))
        print(f"finished at step {trainer.state.global_step}: {trainer.run_control.describe_stop()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
