"""Training throughput of a recipe of any method (default: the DINO Fashion-MNIST demo) with the SslTrainer.

    python benchmarks/bench_train.py [--config recipes/dino_fashion_mnist_demo.yaml] [--steps 40]

Runs the real pipeline (dataset transform, DataLoader workers, device augmentation, the method's forward,
backward, the optimizer, the EMA of EMA methods) and prints optimizer steps/s and images/s, measured after
a few warm-up steps.
"""

import argparse
import tempfile
import time

import torch
from transformers import TrainerCallback

from hf_ssl.data import ViewCropTransform, with_view_crops
from hf_ssl.training import Recipe, SslTrainer


class StepTimer(TrainerCallback):
    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.start = None
        self.end = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup_steps:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/dino_fashion_mnist_demo.yaml")
    parser.add_argument("--steps", type=int, default=40, help="Timed optimizer steps (after --warmup).")
    parser.add_argument("--warmup", type=int, default=5)
    args, overrides = parser.parse_known_args()

    with tempfile.TemporaryDirectory() as output_dir:
        recipe = Recipe.from_yaml(
            args.config,
            [
                *overrides,
                f"training.output_dir={output_dir}",
                f"training.max_steps={args.steps + args.warmup}",
                "training.logging_steps=1000",
            ],
        )
        train_dataset = recipe.load_datasets().train
        train_dataset = with_view_crops(train_dataset, ViewCropTransform(recipe.view_config))
        model = recipe.build_model()
        trainer = SslTrainer(
            model=model,
            args=recipe.training,
            view_config=recipe.augmentation,
            train_dataset=train_dataset,
            method=recipe.method,
        )
        timer = StepTimer(args.warmup)
        trainer.add_callback(timer)
        trainer.train()

    seconds = timer.end - timer.start
    batch = (
        recipe.training.per_device_train_batch_size
        * recipe.training.gradient_accumulation_steps
        * recipe.training.world_size
    )
    steps_per_second = args.steps / seconds
    crops = " + ".join(f"{group.number}x{group.size}" for group in recipe.view_config.groups.values())
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    print(
        f"config: {args.config}  method: {recipe.method}  crops: {crops}  batch: {batch}  "
        f"trained parameters: {parameters:.2f}M"
    )
    print(f"device: {recipe.training.device}  torch threads: {torch.get_num_threads()}")
    print(
        f"training: {steps_per_second:.3f} steps/s, {steps_per_second * batch:.1f} images/s "
        f"({args.steps} steps in {seconds:.1f} s)"
    )


if __name__ == "__main__":
    main()
