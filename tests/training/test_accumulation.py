"""Gradient accumulation is equivalent to one large batch: 8 images x 4 micro-batches and 32 images x 1
give the same optimizer update, center and EMA teacher (float tolerance)."""

import pytest
import torch
from datasets import Dataset

from hf_ssl import DinoForPretraining
from hf_ssl.data import MultiCropTransform, with_multicrop
from hf_ssl.training import DinoTrainer
from tests.helpers import random_images, tiny_dino_config, tiny_multicrop_config, tiny_training_arguments

# every crop is the whole (centre-cropped) image and no photometric randomness: the batch grouping is
# the only difference between the runs
DETERMINISTIC_CROPS = dict(
    global_crops_scale=(1.0, 1.0), local_crops_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0.0,
    color_jitter_probability=0.0, grayscale_probability=0.0, global_blur_probabilities=(0.0, 0.0),
    local_blur_probability=0.0, global_solarize_probabilities=(0.0, 0.0),
)


def trainer_state_after_one_step(tmp_path, batch_size, accumulation):
    torch.manual_seed(0)
    model = DinoForPretraining(tiny_dino_config())
    multicrop = tiny_multicrop_config(**DETERMINISTIC_CROPS)
    dataset = with_multicrop(Dataset.from_dict({"image": random_images(32)}), MultiCropTransform(multicrop))
    arguments = tiny_training_arguments(
        tmp_path / f"run-{batch_size}", per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        max_steps=1, teacher_momentum=0.9, max_grad_norm=0.0,
    )
    DinoTrainer(model=model, args=arguments, multicrop_config=multicrop, train_dataset=dataset).train()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_trainer_accumulation_matches_one_large_batch(tmp_path):
    accumulated = trainer_state_after_one_step(tmp_path, batch_size=8, accumulation=4)
    large = trainer_state_after_one_step(tmp_path, batch_size=32, accumulation=1)
    torch.manual_seed(0)
    initial = DinoForPretraining(tiny_dino_config()).state_dict()
    moved = [name for name in large if name.startswith("student.") and not torch.equal(large[name], initial[name])]
    assert moved, "the optimizer step changed nothing"
    assert not torch.equal(large["loss.center"], initial["loss.center"])
    for name in large:
        torch.testing.assert_close(accumulated[name], large[name], rtol=1e-4, atol=1e-6, msg=name)
