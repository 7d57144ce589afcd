"""Tiny models and generated images for the tests: nothing is downloaded."""

import io

import numpy as np
from PIL import Image

TINY_BACKBONE = {
    "model_type": "vit",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 4,
    "image_size": 16,
    "layer_norm_eps": 1e-6,
}


def tiny_dino_config(**overrides):
    from hf_ssl import DinoConfig

    values = dict(backbone_config=dict(TINY_BACKBONE), out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16)
    values.update(overrides)
    return DinoConfig(**values)


def tiny_multicrop_config(**overrides):
    from hf_ssl.data import MultiCropConfig

    values = dict(global_crop_size=16, local_crops_number=2, local_crop_size=8)
    values.update(overrides)
    return MultiCropConfig(**values)


def random_images(count: int, seed: int = 0, size: tuple[int, int] = (20, 24)) -> list[Image.Image]:
    """Images with some structure (two classes: horizontal vs vertical stripes, plus noise)."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        base = np.zeros(size, dtype=np.float32)
        if index % 2:
            base[::4, :] = 1.0
        else:
            base[:, ::4] = 1.0
        pixels = np.clip(base * 200 + rng.normal(0, 30, size=size + (3,)).mean(-1), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(np.stack([pixels, np.roll(pixels, 1, 0), 255 - pixels], -1)))
    return images


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
