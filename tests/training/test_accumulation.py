"""Gradient accumulation is equivalent to one large batch: 8 images x 4 micro-batches and 32 images x 1
give the same optimizer update, center and EMA teacher (float tolerance), on both engines."""

import pytest
import torch
from datasets import Dataset

from hf_ssl import DinoForPretraining
from tests.helpers import DETERMINISTIC_CROPS, make_dino_trainer, random_images, tiny_dino_config, tiny_multicrop_config


def state_after_one_step(tmp_path, engine, batch_size, accumulation):
    torch.manual_seed(0)
    model = DinoForPretraining(tiny_dino_config())
    trainer = make_dino_trainer(
        tmp_path / f"{engine}-{batch_size}", Dataset.from_dict({"image": random_images(32)}), engine=engine, model=model,
        multicrop=tiny_multicrop_config(**DETERMINISTIC_CROPS), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, teacher_momentum=0.9, max_grad_norm=0.0,
        # The key biases get a zero gradient (softmax ignores a shift shared by all keys) up to float noise,
        # which Adam's update g / (sqrt(v) + eps) would blow up to +-lr with the default eps of 1e-8; a
        # larger eps keeps such noise-only directions still and leaves real gradients (>> 1e-4) as they are.
        adam_epsilon=1e-4,
    )
    trainer.train()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_accumulation_matches_one_large_batch(engine, tmp_path):
    accumulated = state_after_one_step(tmp_path, engine, batch_size=8, accumulation=4)
    large = state_after_one_step(tmp_path, engine, batch_size=32, accumulation=1)
    torch.manual_seed(0)
    initial = DinoForPretraining(tiny_dino_config()).state_dict()
    moved = [name for name in large if name.startswith("student.") and not torch.equal(large[name], initial[name])]
    assert moved, "the optimizer step changed nothing"
    assert not torch.equal(large["loss.center"], initial["loss.center"])
    for name in large:
        torch.testing.assert_close(accumulated[name], large[name], rtol=1e-4, atol=1e-6, msg=name)
