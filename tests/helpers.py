"""Tiny models and generated images for the tests: nothing is downloaded."""

import io
import os
import signal
import socket
from pathlib import Path

import numpy as np
from PIL import Image

TINY_VIT = {
    "model_type": "vit",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 4,
    "image_size": 16,
    "layer_norm_eps": 1e-6,
}
TINY_DINOV2 = {**TINY_VIT, "model_type": "dinov2"}
TINY_DINOV2_WITH_REGISTERS = {**TINY_VIT, "model_type": "dinov2_with_registers", "num_register_tokens": 2}
TINY_RESNET = {
    "model_type": "resnet",
    "embedding_size": 8,
    "hidden_sizes": [8, 16],
    "depths": [1, 1],
    "layer_type": "basic",
}
TINY_HEAD = {"out_dim": 64, "head_hidden_dim": 48, "head_bottleneck_dim": 16}


def tiny_dino_config(**overrides):
    from hf_ssl import DinoConfig

    values = dict(backbone_config=dict(TINY_VIT), **TINY_HEAD)
    values.update(overrides)
    return DinoConfig(**values)


# every crop is the whole (centre-cropped) image and no photometric randomness: runs that group the same
# images differently (accumulation, another number of processes) must then give the same update
DETERMINISTIC_CROPS = dict(
    global_crops_scale=(1.0, 1.0),
    local_crops_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip_probability=0.0,
    color_jitter_probability=0.0,
    grayscale_probability=0.0,
    global_blur_probabilities=(0.0, 0.0),
    local_blur_probability=0.0,
    global_solarize_probabilities=(0.0, 0.0),
)


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


def tiny_training_arguments(output_dir, **overrides):
    """DinoTrainingArguments for a few CPU steps: constant-ish lr, no warmup, no last-layer freeze, log every step."""
    from hf_ssl.training import DinoTrainingArguments

    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        scale_learning_rate=False,
        warmup_epochs=0.0,
        freeze_last_layer_epochs=0.0,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        seed=0,
    )
    values.update(overrides)
    return DinoTrainingArguments(**values)


def make_dino_trainer(
    output_dir,
    dataset,
    engine: str = "trainer",
    model=None,
    multicrop=None,
    seed: int = 0,
    knn_evaluator=None,
    knn_eval_steps: int = 0,
    **overrides,
):
    """A tiny DINO run on either engine (``SslTrainer`` or ``AccelerateTrainer``) over ``dataset``
    (a ``datasets.Dataset`` with an ``image`` column); ``overrides`` go to ``tiny_training_arguments``."""
    from hf_ssl import DinoForPreTraining
    from hf_ssl.data import ViewCropTransform, with_view_crops
    from hf_ssl.training import build_trainer

    multicrop = multicrop or tiny_multicrop_config()
    model = model or DinoForPreTraining(tiny_dino_config())
    arguments = tiny_training_arguments(output_dir, engine=engine, **overrides)
    train_dataset = with_view_crops(dataset, ViewCropTransform(multicrop), seed=seed)
    return build_trainer(
        model=model,
        args=arguments,
        view_config=multicrop,
        train_dataset=train_dataset,
        knn_evaluator=knn_evaluator,
        knn_eval_steps=knn_eval_steps,
    )


def free_port() -> int:
    """A TCP port nothing listens on now, for one multi-process launch (a fixed port can still be held, in
    TIME_WAIT, by the launch just before)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sigterm_during_step(trainer, stop_after: int | None) -> None:
    """Make ``trainer`` receive SIGTERM during optimizer step ``stop_after`` (counted from 1), as a cluster's
    scheduler would: it then saves ``checkpoint-<stop_after>`` and stops. None: no signal."""
    if stop_after is None:
        return
    method = trainer.method
    after_optimizer_step = method.after_optimizer_step

    def signal_after(step, *args, **kwargs):
        after_optimizer_step(step, *args, **kwargs)
        if step + 1 == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)

    method.after_optimizer_step = signal_after


# Runs in a fresh interpreter where hf_ssl cannot be imported: for each export directory, load the model and the
# image processor, preprocess one image (grayscale "L" or colour "RGB", the first argument) and save the pixel
# values and the features.
PLAIN_TRANSFORMERS_SCRIPT = """
import sys

sys.modules["hf_ssl"] = None  # any attempt to import hf_ssl fails: the export must stand on its own

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

mode = sys.argv[1]
shape = (30, 40) if mode == "L" else (30, 40, 3)
image = Image.fromarray((np.arange(int(np.prod(shape))).reshape(shape) % 251).astype("uint8"), mode=mode)
for export_dir in sys.argv[2:]:
    model, loading_info = AutoModel.from_pretrained(export_dir, output_loading_info=True)
    processor = AutoImageProcessor.from_pretrained(export_dir)
    pixel_values = processor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    torch.save(
        {
            "model_class": type(model).__name__,
            "loading_info": {key: sorted(value) for key, value in loading_info.items()},
            "pixel_values": pixel_values,
            "pooler_output": outputs.pooler_output,
            "last_hidden_state": outputs.last_hidden_state,
        },
        f"{export_dir}/plain_transformers_features.pt",
    )
"""


def plain_transformers_features(export_dirs, image_mode: str, cwd) -> dict:
    """``{export dir: what PLAIN_TRANSFORMERS_SCRIPT saved}``: the exports loaded by transformers alone, in one
    subprocess without hf_ssl on its path."""
    import subprocess
    import sys

    import torch

    completed = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS_SCRIPT, image_mode, *(str(path) for path in export_dirs)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        cwd=cwd,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {path: torch.load(Path(path) / "plain_transformers_features.pt") for path in export_dirs}
