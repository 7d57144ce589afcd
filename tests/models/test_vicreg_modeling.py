"""VicRegForPreTraining / VicRegModel / VicRegExpander through the public API, checkpoints and the exported
backbone."""

import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining

from hf_ssl import VicRegConfig, VicRegForPreTraining, VicRegLoss, VicRegModel
from hf_ssl.models.backbone import get_backbone_features
from hf_ssl.models.vicreg import VicRegExpander
from tests.helpers import TINY_RESNET, TINY_VIT


def tiny_model(backbone=TINY_VIT, **overrides):
    torch.manual_seed(0)
    return VicRegForPreTraining(
        VicRegConfig(backbone_config=dict(backbone), **{"expander_dims": [24, 24, 8], **overrides})
    )


def make_views(batch_size=3, image_size=16, seed=1):
    return torch.randn(2, batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def test_expander_layout():
    expander = VicRegExpander(in_dim=16, dims=[24, 24, 8])
    layers = list(expander.mlp)
    assert [type(layer).__name__ for layer in layers] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
    ]
    linears = [layer for layer in layers if isinstance(layer, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is None) for m in linears] == [
        (16, 24, True),
        (24, 24, True),
        (24, 8, True),
    ]
    assert expander(torch.randn(5, 16)).shape == (5, 8)
    assert [type(layer).__name__ for layer in VicRegExpander(16, [8]).mlp] == ["Linear"]


def test_forward_logs_the_terms_and_gradients_reach_every_parameter():
    model = tiny_model(TINY_RESNET).train()
    output = model(make_views(image_size=32))
    assert output.loss.shape == () and output.loss.dtype == torch.float32 and output.loss.requires_grad
    for name in ("invariance", "variance", "covariance", "embedding_std"):
        assert output[name].shape == () and not output[name].requires_grad, name
    assert 0 <= output.variance.item() <= 1 and output.invariance.item() > 0
    assert output.embeddings.shape == (6, 16) and not output.embeddings.requires_grad
    output.loss.backward()
    assert [name for name, parameter in model.named_parameters() if parameter.grad is None] == []
    assert sum(parameter.grad.abs().sum() for parameter in model.backbone.parameters()) > 0


def test_views_are_paired_image_by_image_in_a_pass_per_view():
    model = tiny_model(TINY_VIT).eval()
    views = make_views(batch_size=4)
    inputs = []
    model.backbone.register_forward_hook(
        lambda module, args, kwargs, output: inputs.append(tuple(kwargs["pixel_values"].shape)), with_kwargs=True
    )
    with torch.no_grad():
        output = model(views)
        expanded = [model.expander(get_backbone_features(model.backbone, views[index])[0]) for index in range(2)]
    assert inputs[:2] == [(4, 3, 16, 16), (4, 3, 16, 16)]
    expected = VicRegLoss().forward_with_statistics(*expanded)
    torch.testing.assert_close(output.loss, expected.loss)
    torch.testing.assert_close(output.covariance, expected.covariance)
    shuffled = VicRegLoss()(expanded[0], expanded[1].roll(1, dims=0))
    assert abs(shuffled.item() - output.loss.item()) > 1e-3


def test_views_validation():
    model = tiny_model().train()
    with pytest.raises(ValueError, match=r"views must be \(2, batch"):
        model(make_views()[:1])
    with pytest.raises(ValueError, match="at least 2 images per batch in training"):
        model(make_views(batch_size=1))
    assert model.evaluation_backbone() is model.backbone and model.evaluation_backbone_prefix == "backbone."


def test_checkpoint_round_trip_auto_model_and_export(tmp_path):
    model = tiny_model(TINY_RESNET).train()
    model(make_views(image_size=32))  # BatchNorm running statistics move
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path / "checkpoint")

    loaded, info = AutoModelForPreTraining.from_pretrained(tmp_path / "checkpoint", output_loading_info=True)
    assert isinstance(loaded, VicRegForPreTraining) and not any(
        info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
    )
    expected = model.state_dict()
    assert all(torch.equal(expected[name], tensor) for name, tensor in loaded.state_dict().items())
    assert loaded.config.expander_dims == [24, 24, 8]

    features, info = AutoModel.from_pretrained(tmp_path / "checkpoint", output_loading_info=True)
    assert isinstance(features, VicRegModel) and not any(
        info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
    )
    assert set(features.state_dict()) == {name for name in expected if name.startswith("backbone.")}

    model.export_backbone(tmp_path / "export", image_size=32)
    plain = AutoModel.from_pretrained(tmp_path / "export").eval()
    assert type(plain).__name__ == "ResNetModel"
    pixels = make_views(image_size=32)[0]
    model.eval()
    with torch.no_grad():
        ours, theirs = features.eval()(pixels), plain(pixel_values=pixels)
        embedding, _ = get_backbone_features(model.backbone, pixels, model.backbone_forward_kwargs)
    torch.testing.assert_close(ours.pooler_output, embedding, rtol=0, atol=1e-6)
    torch.testing.assert_close(theirs.pooler_output.flatten(1), embedding, rtol=0, atol=1e-6)
