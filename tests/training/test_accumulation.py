"""Gradient accumulation is equivalent to one large batch: 8 images x 4 micro-batches and 32 images x 1
give the same optimizer updates, center and EMA teacher (float tolerance), on both engines. Two steps: the
second starts from a teacher that differs from the student, where an EMA update per micro-batch would show."""

import pytest
import torch
from datasets import Dataset

from hf_ssl import DinoForPreTraining
from tests.helpers import (
    DETERMINISTIC_CROPS,
    make_dino_trainer,
    random_images,
    tiny_dino_config,
    tiny_multicrop_config,
)


def state_after_two_steps(tmp_path, engine, batch_size, accumulation):
    torch.manual_seed(0)
    model = DinoForPreTraining(tiny_dino_config())
    trainer = make_dino_trainer(
        tmp_path / f"{engine}-{batch_size}",
        Dataset.from_dict({"image": random_images(32)}),
        engine=engine,
        model=model,
        multicrop=tiny_multicrop_config(**DETERMINISTIC_CROPS),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        max_grad_norm=0.0,
        # Constant lr and momentum: each step moves the student by about lr and the teacher by half of what
        # separates them, far beyond the tolerance of the comparison (with the defaults the schedules end at
        # min_lr 1e-6 and a momentum of 1.0, which move nothing that the tolerance would notice).
        learning_rate=1e-3,
        min_lr=1e-3,
        teacher_momentum=0.5,
        teacher_momentum_end=0.5,
        # The key biases get a zero gradient (softmax ignores a shift shared by all keys) up to float noise,
        # which Adam's update g / (sqrt(v) + eps) would blow up to +-lr with the default eps of 1e-8; a
        # larger eps keeps such noise-only directions still and leaves real gradients (>> 1e-4) as they are.
        adam_epsilon=1e-4,
    )
    trainer.train()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


RTOL, ATOL = 1e-4, 1e-6


def moved_far(after, before, prefix):
    """Names under ``prefix`` whose tensors moved by more than 100 times the comparison's tolerance."""
    return [
        name
        for name in after
        if name.startswith(prefix)
        and after[name].is_floating_point()
        and ((after[name] - before[name]).abs() > 100 * (ATOL + RTOL * before[name].abs())).any()
    ]


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_accumulation_matches_one_large_batch(engine, tmp_path):
    accumulated = state_after_two_steps(tmp_path, engine, batch_size=8, accumulation=4)
    large = state_after_two_steps(tmp_path, engine, batch_size=32, accumulation=1)
    torch.manual_seed(0)
    initial = DinoForPreTraining(tiny_dino_config()).state_dict()
    # the steps move most student and teacher tensors far beyond the tolerance below, so the comparison can
    # tell a wrong update (an EMA per micro-batch, a center from one micro-batch) from float noise
    for prefix in ("student.", "teacher."):
        tensors = [name for name in large if name.startswith(prefix) and large[name].is_floating_point()]
        moved = moved_far(large, initial, prefix)
        assert len(moved) > 0.8 * len(tensors), f"{prefix}: only {len(moved)} of {len(tensors)} tensors moved"
    assert moved_far(large, initial, "loss.center")
    for name in large:
        torch.testing.assert_close(accumulated[name], large[name], rtol=RTOL, atol=ATOL, msg=name)
