"""Run by `accelerate launch` in test_distributed.py: a few DINO steps on every process, then each
process writes its own copy of the weights so the test can check that all processes agree."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from datasets import Dataset  # noqa: E402

from hf_ssl import DinoForPretraining  # noqa: E402
from hf_ssl.data import MultiCropTransform, with_multicrop  # noqa: E402
from hf_ssl.training import DinoTrainer  # noqa: E402
from tests.helpers import random_images, tiny_dino_config, tiny_multicrop_config, tiny_training_arguments  # noqa: E402


def main(output_dir: str, max_steps: int = 3):
    multicrop = tiny_multicrop_config()
    dataset = with_multicrop(Dataset.from_dict({"image": random_images(32)}), MultiCropTransform(multicrop))
    arguments = tiny_training_arguments(output_dir, gradient_accumulation_steps=2, max_steps=max_steps)
    trainer = DinoTrainer(model=DinoForPretraining(tiny_dino_config()), args=arguments, multicrop_config=multicrop, train_dataset=dataset)
    trainer.train()
    state = {name: tensor.detach().contiguous() for name, tensor in trainer.model.state_dict().items()}
    save_file(state, str(Path(output_dir) / f"rank{arguments.process_index}.safetensors"))
    with open(Path(output_dir) / f"rank{arguments.process_index}.world", "w") as handle:
        handle.write(str(arguments.world_size))


if __name__ == "__main__":
    main(sys.argv[1])
