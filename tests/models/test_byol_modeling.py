"""ByolForPreTraining / ByolModel through the public API: the online and target networks, the EMA pairing, checkpoints,
the Auto classes and the exported backbone."""

import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining

from hf_ssl import ByolConfig, ByolForPreTraining, ByolLoss, ByolModel
from hf_ssl.models.backbone import get_backbone_features
from hf_ssl.training import ema_update_
from tests.helpers import TINY_RESNET, TINY_VIT

TINY_HEADS = {"projection_hidden_dim": 24, "projection_dim": 8, "prediction_hidden_dim": 12}
IMAGE_SIZES = {"vit": 16, "resnet": 32}


def tiny_model(backbone=TINY_VIT, **overrides):
    torch.manual_seed(0)
    return ByolForPreTraining(ByolConfig(backbone_config=dict(backbone), **{**TINY_HEADS, **overrides}))


def make_views(batch_size=3, image_size=16, seed=1):
    return torch.randn(2, batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def perturb_(module, seed=3):
    """Move every parameter away from its init, so a test can tell loaded weights from freshly initialised ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def test_target_starts_as_a_copy_of_the_online_network_and_gets_no_gradient():
    model = tiny_model(TINY_RESNET).train()
    online, target = model.online.state_dict(), model.target.state_dict()
    assert online.keys() == target.keys()
    assert all(torch.equal(online[name], target[name]) for name in online)
    assert not any(parameter.requires_grad for parameter in model.target.parameters())

    output = model(make_views(image_size=32))
    assert output.loss.shape == () and output.loss.dtype == torch.float32 and 0 <= output.loss.item() <= 4
    output.loss.backward()
    assert all(parameter.grad is None for parameter in model.target.parameters())
    without_gradient = [
        name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.grad is None
    ]
    assert without_gradient == []
    assert sum(parameter.grad.abs().sum() for parameter in model.online.backbone.parameters()) > 0
    assert sum(parameter.grad.abs().sum() for parameter in model.predictor.parameters()) > 0
    for name in ("embedding_std", "target_projection_std"):
        assert output[name].shape == () and not output[name].requires_grad and output[name].item() > 0
    assert output.embeddings.shape == (6, 16) and not output.embeddings.requires_grad


def test_loss_predicts_the_other_views_target_in_a_pass_per_view():
    model = tiny_model(TINY_VIT).eval()
    views = make_views(batch_size=4)
    inputs = []
    model.online.backbone.register_forward_hook(
        lambda module, args, kwargs, output: inputs.append(tuple(kwargs["pixel_values"].shape)), with_kwargs=True
    )
    with torch.no_grad():
        output = model(views)
        predictions = [model.predictor(model.online(views[index])[1]) for index in range(2)]
        targets = [model.target(views[index])[1] for index in range(2)]
    assert inputs[:2] == [(4, 3, 16, 16), (4, 3, 16, 16)]  # each view in its own pass
    expected = ByolLoss()(predictions[0], predictions[1], targets[0], targets[1])
    torch.testing.assert_close(output.loss, expected)
    assert abs(ByolLoss()(predictions[0], predictions[1], targets[1], targets[0]).item() - output.loss.item()) > 1e-4


def test_ema_update_moves_the_target_towards_the_online_network():
    model = tiny_model(TINY_RESNET)
    perturb_(model.online)
    before = {name: tensor.clone() for name, tensor in model.target.state_dict().items()}
    online = {name: tensor.clone() for name, tensor in model.online.state_dict().items()}
    target_parameters, online_parameters = model.teacher_student_parameter_pairs()
    assert len(target_parameters) == len(list(model.online.parameters())) == len(list(model.target.parameters()))

    ema_update_(target_parameters, online_parameters, 0.9)
    after = model.target.state_dict()
    parameter_names = {name for name, _ in model.target.named_parameters()}
    for name, tensor in after.items():
        if name in parameter_names:
            torch.testing.assert_close(tensor, 0.9 * before[name] + 0.1 * online[name], msg=name)
            assert not torch.equal(tensor, before[name]), name
        else:  # BatchNorm statistics are the target's own, not averaged
            assert torch.equal(tensor, before[name]), name


def test_views_validation_and_tuple_output():
    model = tiny_model().train()
    with pytest.raises(ValueError, match=r"views must be \(2, batch"):
        model(make_views()[0])
    with pytest.raises(ValueError, match="views must be a float tensor"):
        model(make_views().to(torch.uint8))
    with pytest.raises(ValueError, match="at least 2 images per batch in training"):
        model(make_views(batch_size=1))
    assert model.eval()(make_views(batch_size=1), return_dict=False)[0].shape == ()


def test_evaluation_backbone_is_the_online_backbone():
    model = tiny_model()
    assert ByolForPreTraining.main_input_name == "views"
    assert model.evaluation_backbone() is model.online.backbone
    assert model.evaluation_backbone_prefix == "online.backbone."
    assert all(name.startswith(("online.", "target.", "predictor.")) for name in model.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints, Auto classes, export
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, checkpoint dir, export dir): a ResNet BYOL model whose online and target networks differ, saved and
    exported."""
    root = tmp_path_factory.mktemp("byol")
    model = tiny_model(TINY_RESNET).train()
    model(make_views(image_size=32))  # BatchNorm running statistics move
    perturb_(model.online)
    perturb_(model.predictor, seed=4)
    model.save_pretrained(root / "checkpoint")
    model.export_backbone(root / "export", image_size=32)
    return model.eval(), root / "checkpoint", root / "export"


def test_save_and_load_round_trip_is_bit_exact_and_keeps_the_target_frozen(saved):
    model, checkpoint, _ = saved
    loaded, info = AutoModelForPreTraining.from_pretrained(checkpoint, output_loading_info=True)
    assert isinstance(loaded, ByolForPreTraining)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert not any(parameter.requires_grad for parameter in loaded.target.parameters())
    assert all(parameter.requires_grad for parameter in loaded.online.parameters())
    # the loaded target is the saved one, not a fresh copy of the loaded online network
    assert not torch.equal(loaded.target.projector.mlp[0].weight, loaded.online.projector.mlp[0].weight)


def test_auto_model_and_the_exported_backbone_are_the_online_backbone(saved):
    model, checkpoint, export = saved
    features, info = AutoModel.from_pretrained(checkpoint, output_loading_info=True)
    assert isinstance(features, ByolModel)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    online = model.online.backbone.state_dict()
    assert {name.removeprefix("backbone.") for name in features.state_dict()} == online.keys()
    # the export is a plain transformers ResNet (its config names no hf_ssl class)
    plain, info = AutoModel.from_pretrained(export, output_loading_info=True)
    assert type(plain).__name__ == "ResNetModel" and not type(plain).__module__.startswith("hf_ssl")
    assert not info["missing_keys"] and not info["unexpected_keys"]

    pixel_values = make_views(image_size=32, seed=5)[0]
    with torch.no_grad():
        output, exported = features.eval()(pixel_values), plain.eval()(pixel_values=pixel_values)
        online_embedding, _ = get_backbone_features(
            model.online.backbone, pixel_values, model.online.backbone_forward_kwargs
        )
        target_embedding, _ = get_backbone_features(
            model.target.backbone, pixel_values, model.target.backbone_forward_kwargs
        )
    torch.testing.assert_close(output.pooler_output, online_embedding, rtol=0, atol=1e-6)
    torch.testing.assert_close(exported.pooler_output.flatten(1), online_embedding, rtol=0, atol=1e-6)
    torch.testing.assert_close(exported.last_hidden_state, output.last_hidden_state, rtol=0, atol=1e-6)
    assert (online_embedding - target_embedding).abs().max() > 1e-3  # the online backbone, not the target
