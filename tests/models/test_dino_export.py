"""export_backbone: the teacher backbone loads with plain transformers (no hf_ssl) and gives DinoModel's features."""

import json

import pytest
import torch
from transformers import AutoModel

from hf_ssl import DinoConfig, DinoForPreTraining, DinoModel
from tests.helpers import TINY_DINOV2, TINY_HEAD, TINY_VIT, plain_transformers_features


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{family: (checkpoint dir, export dir, features computed without hf_ssl)}, one subprocess for all."""
    root = tmp_path_factory.mktemp("dino_export")
    directories = {}
    for family, backbone in (("vit", TINY_VIT), ("dinov2", TINY_DINOV2)):
        torch.manual_seed(0)
        model = DinoForPreTraining(DinoConfig(backbone_config=dict(backbone), **TINY_HEAD))
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

    plain = plain_transformers_features([export for _, export in directories.values()], "L", cwd=root)
    return {family: (checkpoint, export, plain[export]) for family, (checkpoint, export) in directories.items()}


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
    assert (
        json.loads((export_dir / "preprocessor_config.json").read_text())["image_processor_type"]
        == "BitImageProcessor"
    )
    features = dino_model_features(checkpoint_dir, plain["pixel_values"])
    torch.testing.assert_close(plain["pooler_output"], features.pooler_output, rtol=0, atol=1e-6)
