"""export_backbone: the teacher backbone loads with plain transformers (no hf_ssl) and gives DinoModel's features."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel

from hf_ssl import DinoConfig, DinoForPretraining, DinoModel
from tests.helpers import TINY_DINOV2, TINY_HEAD, TINY_VIT

# Runs in a fresh interpreter where hf_ssl cannot be imported: for each export directory, load the model and the
# image processor, preprocess a grayscale image and save the pixel values and the features.
PLAIN_TRANSFORMERS_SCRIPT = textwrap.dedent(
    """
    import sys

    sys.modules["hf_ssl"] = None  # any attempt to import hf_ssl fails: the export must stand on its own

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    image = Image.fromarray((np.arange(30 * 40).reshape(30, 40) % 251).astype("uint8"), mode="L")
    for export_dir in sys.argv[1:]:
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
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{family: (checkpoint dir, export dir, features computed without hf_ssl)}, one subprocess for all."""
    root = tmp_path_factory.mktemp("dino_export")
    directories = {}
    for family, backbone in (("vit", TINY_VIT), ("dinov2", TINY_DINOV2)):
        torch.manual_seed(0)
        model = DinoForPretraining(DinoConfig(backbone_config=dict(backbone), **TINY_HEAD))
        with torch.no_grad():  # make the student differ, so matching features prove the teacher was exported
            for parameter in model.student.parameters():
                parameter.add_(0.5)
        checkpoint_dir, export_dir = root / f"{family}_checkpoint", root / f"{family}_export"
        model.save_pretrained(checkpoint_dir)
        if family == "vit":
            model.export_backbone(export_dir, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
        else:
            model.export_backbone(export_dir)
        directories[family] = (checkpoint_dir, export_dir)

    completed = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS_SCRIPT, *(str(export) for _, export in directories.values())],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}, cwd=root,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {
        family: (checkpoint, export, torch.load(export / "plain_transformers_features.pt"))
        for family, (checkpoint, export) in directories.items()
    }


def dino_model_features(checkpoint_dir, pixel_values):
    model = AutoModel.from_pretrained(checkpoint_dir)
    assert isinstance(model, DinoModel)
    with torch.no_grad():
        return model(pixel_values)


def test_exported_vit_loads_without_hf_ssl_and_matches_dino_model(exports):
    checkpoint_dir, export_dir, plain = exports["vit"]
    processor_config = json.loads((export_dir / "preprocessor_config.json").read_text())
    assert processor_config["image_processor_type"] == "ViTImageProcessor"
    assert processor_config["do_convert_rgb"] is True
    assert processor_config["resample"] == 3  # bicubic
    assert processor_config["size"] == {"height": 16, "width": 16}
    assert processor_config["image_mean"] == [0.5, 0.5, 0.5] and processor_config["image_std"] == [0.25, 0.25, 0.25]
    assert (export_dir / "model.safetensors").exists()

    assert plain["model_class"] == "ViTModel"
    assert plain["loading_info"]["missing_keys"] == [] and plain["loading_info"]["unexpected_keys"] == []
    assert plain["pixel_values"].shape == (1, 3, 16, 16)  # grayscale converted to RGB, resized

    features = dino_model_features(checkpoint_dir, plain["pixel_values"])
    torch.testing.assert_close(plain["pooler_output"], features.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain["last_hidden_state"][:, 0], features.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain["last_hidden_state"], features.last_hidden_state, rtol=0, atol=1e-6)


def test_exported_dinov2_loads_without_hf_ssl_and_matches_dino_model(exports):
    checkpoint_dir, export_dir, plain = exports["dinov2"]
    assert plain["model_class"] == "Dinov2Model"
    assert plain["loading_info"]["missing_keys"] == [] and plain["loading_info"]["unexpected_keys"] == []
    assert json.loads((export_dir / "preprocessor_config.json").read_text())["image_processor_type"] == "BitImageProcessor"
    features = dino_model_features(checkpoint_dir, plain["pixel_values"])
    torch.testing.assert_close(plain["pooler_output"], features.pooler_output, rtol=0, atol=1e-6)
