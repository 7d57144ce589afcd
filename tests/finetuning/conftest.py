"""Tiny backbones, image folders and recipes shared by the fine-tuning tests."""

import json

import pytest
import torch
from transformers import ViTConfig, ViTModel

from hf_ssl.models import build_image_processor
from tests.helpers import TINY_VIT, random_images

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


@pytest.fixture(scope="module")
def vit_backbone_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit-backbone")
    torch.manual_seed(0)
    ViTModel(
        ViTConfig(**{k: v for k, v in TINY_VIT.items() if k != "model_type"}), add_pooling_layer=False
    ).save_pretrained(path)
    build_image_processor("vit", 16, MEAN, STD).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ and test/ of an image folder, classes 'horizontal' and 'vertical' (stripes), one corrupt train file."""
    root = tmp_path_factory.mktemp("stripes")
    for split, count, seed in (("train", 40, 0), ("test", 12, 1)):
        for index, image in enumerate(random_images(count, seed=seed, size=(20, 20))):
            folder = root / split / ("horizontal" if index % 2 else "vertical")
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index}.png")
    (root / "train" / "vertical" / "broken.png").write_bytes(b"not a png")
    return root


def write_recipe(path, backbone_dir, data_dir, output_dir, **training):
    values = {
        "output_dir": str(output_dir),
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": "none",
        "seed": 0,
        "use_cpu": True,
        "dataloader_pin_memory": False,
        **training,
    }
    path.write_text(
        json.dumps(
            {
                "model": {"model_name_or_path": str(backbone_dir), "mode": "full", "layer_decay": 0.75},
                "data": {"dataset": "imagefolder", "data_dir": str(data_dir), "train_val_split": 0.25},
                "augmentation": {"crop_scale": [0.6, 1.0]},
                "training": values,
            }
        )
    )
    return path
