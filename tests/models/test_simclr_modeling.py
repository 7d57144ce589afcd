"""SimClrForPreTraining / SimClrModel / SimClrProjectionHead through the public API, and the exported backbone."""

import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl import NTXentLoss, SimClrConfig, SimClrForPreTraining, SimClrModel, SimClrProjectionHead
from hf_ssl.models.backbone import get_backbone_features
from tests.helpers import TINY_DINOV2, TINY_RESNET, TINY_VIT, plain_transformers_features

TINY_PROJECTION = {"projection_hidden_dim": 24, "projection_dim": 8}
IMAGE_SIZES = {"vit": 16, "resnet": 32}


def tiny_model(backbone=TINY_VIT, **overrides):
    torch.manual_seed(0)
    return SimClrForPreTraining(SimClrConfig(backbone_config=dict(backbone), **{**TINY_PROJECTION, **overrides}))


def make_views(batch_size=3, image_size=16, seed=1):
    return torch.randn(2, batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def perturb_(module, seed=3):
    """Move every parameter away from its init, so a test can tell loaded weights from freshly initialised ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


# ---------------------------------------------------------------------------------------------------------------------
# Forward and backward
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_RESNET], ids=["vit", "resnet"])
def test_forward_runs_backbone_and_head_once_and_gradients_reach_the_backbone(backbone):
    model = tiny_model(backbone).train()
    image_size = IMAGE_SIZES[backbone["model_type"]]
    backbone_inputs, head_inputs = [], []
    model.backbone.register_forward_hook(
        lambda module, args, kwargs, output: backbone_inputs.append(tuple(kwargs["pixel_values"].shape)),
        with_kwargs=True,
    )
    model.projection_head.register_forward_hook(lambda module, args, output: head_inputs.append(tuple(args[0].shape)))

    output = model(make_views(batch_size=3, image_size=image_size))
    embed_dim = 32 if backbone is TINY_VIT else 16

    assert backbone_inputs == [(6, 3, image_size, image_size)]  # both views of the 3 images in one pass
    assert head_inputs == [(6, embed_dim)]
    assert output.loss.shape == () and output.loss.dtype == torch.float32 and output.loss.requires_grad
    assert torch.isfinite(output.loss)
    for name in ("positive_similarity", "negative_similarity", "accuracy", "embedding_std"):
        assert output[name].shape == () and not output[name].requires_grad, name
    assert 0.0 <= output.accuracy.item() <= 1.0
    assert output.embeddings.shape == (6, embed_dim) and not output.embeddings.requires_grad
    assert 0 < output.embedding_std.item() < 1

    output.loss.backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert missing == []
    assert sum(p.grad.abs().sum() for p in model.backbone.parameters()) > 0


def test_views_are_paired_image_by_image_view_major():
    # In eval mode nothing mixes the images: the loss must be NT-Xent of the projections of views[0] and views[1].
    model = tiny_model(TINY_RESNET).eval()
    views = make_views(batch_size=4, image_size=32)
    with torch.no_grad():
        output = model(views)
        projections = [
            model.projection_head(get_backbone_features(model.backbone, views[index])[0]) for index in range(2)
        ]
        expected = NTXentLoss(model.config.temperature).forward_with_statistics(*projections)
        embeddings_a = get_backbone_features(model.backbone, views[0])[0]
    torch.testing.assert_close(output.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.positive_similarity, expected.positive_similarity, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.embeddings[:4], embeddings_a, rtol=1e-5, atol=1e-6)


def test_identical_views_of_distinct_images_give_a_lower_loss_than_unrelated_views():
    model = tiny_model(TINY_VIT).eval()
    views = make_views(batch_size=4)
    with torch.no_grad():
        same = model(torch.stack([views[0], views[0]]))
        unrelated = model(views)
    assert same.positive_similarity.item() == pytest.approx(1.0, abs=1e-5)
    assert same.loss.item() < unrelated.loss.item()


def test_tuple_output_and_views_validation():
    model = tiny_model().eval()
    views = make_views()
    assert model(views, return_dict=False)[0].shape == ()
    with pytest.raises(ValueError, match="views must be \\(2, batch"):
        model(views[0])
    with pytest.raises(ValueError, match="views must be \\(2, batch"):
        model(torch.cat([views, views[:1]]))
    with pytest.raises(ValueError, match="views must be a float tensor"):
        model(views.to(torch.uint8))


def test_main_input_name_and_evaluation_backbone():
    model = tiny_model()
    assert SimClrForPreTraining.main_input_name == "views"
    assert model.evaluation_backbone() is model.backbone
    assert model.evaluation_backbone_prefix == "backbone."
    assert all(name.startswith(("backbone.", "projection_head.")) for name in model.state_dict())


def test_dinov2_backbone_gets_drop_path_in_pretraining_only(tmp_path):
    model = tiny_model(TINY_DINOV2, drop_path_rate=0.2)
    assert model.backbone.config.drop_path_rate == 0.2
    assert not any("mask_token" in name for name, _ in model.named_parameters())  # no parameter without gradient
    assert model.evaluation_backbone_config().drop_path_rate == 0.0
    model.save_pretrained(tmp_path / "checkpoint")
    assert AutoModel.from_pretrained(tmp_path / "checkpoint").backbone.config.drop_path_rate == 0.0
    model.export_backbone(tmp_path / "export")
    assert AutoConfig.from_pretrained(tmp_path / "export").drop_path_rate == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Head and init
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_layers, use_bn, expected_linears, num_batch_norms",
    [
        (1, True, [(16, 8, True)], 0),
        (2, True, [(16, 24, False), (24, 8, True)], 1),
        (3, True, [(16, 24, False), (24, 24, False), (24, 8, True)], 2),
        (2, False, [(16, 24, True), (24, 8, True)], 0),
    ],
)
def test_head_layout(num_layers, use_bn, expected_linears, num_batch_norms):
    head = SimClrProjectionHead(in_dim=16, out_dim=8, hidden_dim=24, num_layers=num_layers, use_bn=use_bn)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == expected_linears
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.mlp) == num_batch_norms
    assert sum(isinstance(m, torch.nn.ReLU) for m in head.mlp) == num_layers - 1
    assert not isinstance(head.mlp[-1], (torch.nn.ReLU, torch.nn.BatchNorm1d))  # the output layer is linear
    assert head(torch.randn(5, 16)).shape == (5, 8)


def test_head_init_is_pytorch_linear_default_and_batch_norm_identity():
    model = tiny_model(TINY_RESNET, projection_hidden_dim=512, projection_dim=256, projection_num_layers=3)
    linears = [m for m in model.projection_head.mlp if isinstance(m, torch.nn.Linear)]
    for linear in linears:
        bound = 1 / math.sqrt(linear.in_features)  # kaiming_uniform_(a=sqrt(5)): U(-bound, bound)
        assert linear.weight.abs().max().item() <= bound
        assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert linears[-1].bias.abs().max().item() <= 1 / math.sqrt(linears[-1].in_features)
    assert linears[-1].bias.abs().sum() > 0
    for norm in (m for m in model.projection_head.mlp if isinstance(m, torch.nn.BatchNorm1d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(
            norm.bias, torch.zeros_like(norm.bias)
        )
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints and Auto classes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_RESNET], ids=["vit", "resnet"])
def test_save_and_load_round_trip_is_bit_exact(tmp_path, backbone):
    model = tiny_model(backbone).train()
    model(make_views(image_size=IMAGE_SIZES[backbone["model_type"]]))  # BatchNorm running statistics move
    perturb_(model)
    model.save_pretrained(tmp_path)

    loaded, info = AutoModelForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, SimClrForPreTraining)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for named in ("named_parameters", "named_buffers"):
        expected, actual = dict(getattr(model, named)()), dict(getattr(loaded, named)())
        assert expected.keys() == actual.keys()
        for name in expected:
            assert expected[name].dtype == actual[name].dtype, name
            assert torch.equal(expected[name], actual[name]), name
    assert all(parameter.requires_grad for parameter in loaded.parameters())


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_RESNET], ids=["vit", "resnet"])
def test_auto_model_loads_the_backbone_without_warnings_and_gives_the_same_embedding(tmp_path, backbone):
    model = tiny_model(backbone).train()
    image_size = IMAGE_SIZES[backbone["model_type"]]
    model(make_views(image_size=image_size))  # BatchNorm running statistics move
    perturb_(model)
    model.save_pretrained(tmp_path)

    feature_model, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(feature_model, SimClrModel)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(feature_model.state_dict()) == {name for name in model.state_dict() if name.startswith("backbone.")}

    pixel_values = make_views(image_size=image_size)[0]
    model.eval()
    with torch.no_grad():
        output = feature_model(pixel_values)
        expected_embedding, _ = get_backbone_features(model.backbone, pixel_values, model.backbone_forward_kwargs)
        expected_hidden = model.backbone(pixel_values=pixel_values).last_hidden_state
    assert torch.equal(output.pooler_output, expected_embedding)
    assert torch.equal(output.last_hidden_state, expected_hidden)


# ---------------------------------------------------------------------------------------------------------------------
# Export to plain transformers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{family: (checkpoint dir, features computed without hf_ssl)}, one subprocess for all."""
    root = tmp_path_factory.mktemp("simclr_export")
    directories = {}
    for family, backbone in (("vit", TINY_VIT), ("resnet", TINY_RESNET)):
        model = tiny_model(backbone).train()
        model(make_views(image_size=IMAGE_SIZES[family]))  # BatchNorm running statistics move
        perturb_(model)
        checkpoint_dir, export_dir = root / f"{family}_checkpoint", root / f"{family}_export"
        model.save_pretrained(checkpoint_dir)
        model.export_backbone(export_dir, image_size=IMAGE_SIZES[family])
        directories[family] = (checkpoint_dir, export_dir)

    plain = plain_transformers_features([export for _, export in directories.values()], "RGB", cwd=root)
    return {family: (checkpoint, export, plain[export]) for family, (checkpoint, export) in directories.items()}


def simclr_model_features(checkpoint_dir, pixel_values):
    model = AutoModel.from_pretrained(checkpoint_dir)
    assert isinstance(model, SimClrModel)
    with torch.no_grad():
        return model(pixel_values)


def test_exported_vit_loads_without_hf_ssl_and_matches_simclr_model(exports):
    checkpoint_dir, export_dir, plain = exports["vit"]
    assert plain["model_class"] == "ViTModel"
    assert plain["loading_info"]["missing_keys"] == [] and plain["loading_info"]["unexpected_keys"] == []
    assert plain["pixel_values"].shape == (1, 3, 16, 16)
    features = simclr_model_features(checkpoint_dir, plain["pixel_values"])
    torch.testing.assert_close(plain["pooler_output"], features.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain["last_hidden_state"], features.last_hidden_state, rtol=0, atol=1e-6)


def test_exported_resnet_loads_without_hf_ssl_and_matches_simclr_model(exports):
    checkpoint_dir, export_dir, plain = exports["resnet"]
    assert plain["model_class"] == "ResNetModel"
    assert plain["loading_info"]["missing_keys"] == [] and plain["loading_info"]["unexpected_keys"] == []
    assert json.loads((export_dir / "config.json").read_text())["model_type"] == "resnet"
    assert plain["pixel_values"].shape == (1, 3, 32, 32)
    features = simclr_model_features(checkpoint_dir, plain["pixel_values"])
    assert plain["pooler_output"].shape == (1, 16, 1, 1)
    torch.testing.assert_close(plain["pooler_output"].flatten(1), features.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain["last_hidden_state"], features.last_hidden_state, rtol=0, atol=1e-6)
