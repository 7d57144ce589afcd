"""Run by `accelerate launch` in test_distributed.py: a few DINO steps on every process with the engine
named on the command line, then each process writes its own copy of the weights so the test can check
that all processes agree."""

import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from datasets import Dataset  # noqa: E402

from hf_ssl.training.engines.base import end_process_group  # noqa: E402
from tests.helpers import make_dino_trainer, random_images  # noqa: E402


def main(output_dir: str, engine: str = "trainer", max_steps: int = 3):
    dataset = Dataset.from_dict({"image": random_images(32)})
    trainer = make_dino_trainer(output_dir, dataset, engine=engine, gradient_accumulation_steps=2, max_steps=max_steps)
    trainer.train()
    arguments = trainer.args
    state = {name: tensor.detach().contiguous() for name, tensor in trainer.model.state_dict().items()}
    save_file(state, str(Path(output_dir) / f"rank{arguments.process_index}.safetensors"))
    with open(Path(output_dir) / f"rank{arguments.process_index}.world", "w") as handle:
        handle.write(str(arguments.world_size))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "trainer")
    end_process_group()
