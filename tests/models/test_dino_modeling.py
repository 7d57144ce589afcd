"""DinoForPreTraining / DinoModel / DinoHead behaviour through the public API."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForPreTraining

from hf_ssl import DinoForPreTraining, DinoHead, DinoModel
from hf_ssl.models.dino import get_backbone_embed_dim, get_backbone_features
from hf_ssl.models.dino.modeling_dino import build_backbone
from tests.helpers import TINY_DINOV2, TINY_DINOV2_WITH_REGISTERS, TINY_RESNET, TINY_VIT


def crops(num_global=2, num_local=2, batch_size=3, global_size=16, local_size=8):
    generator = torch.Generator().manual_seed(1)
    global_crops = torch.randn(num_global, batch_size, 3, global_size, global_size, generator=generator)
    local_crops = torch.randn(num_local, batch_size, 3, local_size, local_size, generator=generator)
    return global_crops, local_crops


def perturb_(parameters, seed=3):
    """Make the student differ from the teacher, so a test can tell which one was picked up."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(torch.randn(parameter.shape, generator=generator))


# ---------------------------------------------------------------------------------------------------------------------
# Student and teacher
# ---------------------------------------------------------------------------------------------------------------------


def test_teacher_starts_identical_to_student_and_has_no_grad(tiny_model):
    model = tiny_model(head_use_bn=True)
    student, teacher = model.student.state_dict(), model.teacher.state_dict()
    assert student.keys() == teacher.keys()
    for name in student:
        assert torch.equal(student[name], teacher[name]), name
    assert not any(parameter.requires_grad for parameter in model.teacher.parameters())
    assert all(
        parameter.requires_grad for name, parameter in model.student.named_parameters() if "original0" not in name
    )


def test_teacher_student_parameter_pairs_match_by_name(tiny_model):
    model = tiny_model()
    teacher_params, student_params = model.teacher_student_parameter_pairs()
    teacher_names = {id(p): n for n, p in model.teacher.named_parameters()}
    student_names = {id(p): n for n, p in model.student.named_parameters()}
    assert len(teacher_params) == len(student_params) == len(list(model.student.parameters()))
    for teacher_param, student_param in zip(teacher_params, student_params):
        assert teacher_names[id(teacher_param)] == student_names[id(student_param)]


def test_forward_runs_backbone_once_per_resolution_and_returns_detached_signals(tiny_model):
    model = tiny_model().train()
    backbone_inputs = {"student": [], "teacher": []}
    head_inputs = []
    for role in ("student", "teacher"):
        getattr(model, role).backbone.register_forward_hook(
            lambda module, args, kwargs, output, role=role: backbone_inputs[role].append(
                tuple(kwargs["pixel_values"].shape)
            ),
            with_kwargs=True,
        )
    model.student.head.register_forward_hook(lambda module, args, output: head_inputs.append(tuple(args[0].shape)))

    global_crops, local_crops = crops(num_global=2, num_local=2, batch_size=3, global_size=16, local_size=8)
    output = model(global_crops, local_crops)

    assert backbone_inputs["student"] == [(6, 3, 16, 16), (6, 3, 8, 8)]  # (G*B) then (L*B) in one pass each
    assert backbone_inputs["teacher"] == [(6, 3, 16, 16)]  # global crops only
    assert head_inputs == [(12, 32)]  # one head pass on all 4*3 CLS embeddings
    assert output.loss.shape == () and torch.isfinite(output.loss) and output.loss.requires_grad
    for name in (
        "teacher_entropy",
        "student_entropy",
        "max_entropy",
        "embedding_std",
        "teacher_temperature",
        "center_norm",
    ):
        assert output[name].shape == () and not output[name].requires_grad, name
    assert output.max_entropy.item() == pytest.approx(torch.log(torch.tensor(64.0)).item())
    assert output.teacher_temperature.item() == pytest.approx(model.config.teacher_temperature)
    assert 0 < output.teacher_entropy.item() <= output.max_entropy.item() + 1e-5


def test_loss_backpropagates_to_the_student_only(tiny_model):
    model = tiny_model().train()
    model(*crops()).loss.backward()
    missing = [n for n, p in model.student.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.head.last_layer_magnitude.grad is None  # fixed by norm_last_layer


def test_center_is_updated_in_training_mode_only(tiny_model):
    model = tiny_model()
    model.eval()
    model(*crops())
    assert torch.equal(model.loss.center, torch.zeros_like(model.loss.center))
    model.train()
    model(*crops())
    assert model.loss.center.abs().sum() > 0


def test_teacher_temperature_defaults_to_config_value(tiny_model):
    model = tiny_model().eval()
    global_crops, local_crops = crops()
    default = model(global_crops, local_crops).loss
    explicit = model(global_crops, local_crops, teacher_temperature=model.config.teacher_temperature).loss
    warmer = model(global_crops, local_crops, teacher_temperature=0.5).loss
    assert torch.equal(default, explicit)
    assert not torch.allclose(default, warmer)


def test_forward_without_local_crops_and_tuple_output(tiny_model):
    model = tiny_model().eval()
    global_crops, _ = crops()
    loss = model(global_crops, return_dict=False)[0]
    assert loss.shape == () and torch.isfinite(loss)
    with pytest.raises(ValueError, match="global_crops"):
        model(global_crops[0])


def test_last_layer_parameters_are_exactly_the_student_last_layer(tiny_model):
    model = tiny_model()
    last_layer = model.last_layer_parameters()
    expected = {id(model.student.head.last_layer_magnitude), id(model.student.head.last_layer_direction)}
    assert {id(p) for p in last_layer} == expected and len(last_layer) == 2


# ---------------------------------------------------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_norm_last_layer_keeps_prototype_norms_at_one_after_a_step(norm_last_layer):
    torch.manual_seed(0)
    head = DinoHead(
        in_dim=8, out_dim=16, hidden_dim=12, bottleneck_dim=4, num_layers=3, norm_last_layer=norm_last_layer
    )
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(5, 8)).pow(2).sum().backward()
    optimizer.step()
    row_norms = head.last_layer.weight.norm(dim=1)
    if norm_last_layer:
        torch.testing.assert_close(row_norms, torch.ones(16))
        assert not head.last_layer_magnitude.requires_grad
    else:
        assert (row_norms - 1).abs().max() > 1e-3


def test_head_layout_and_init():
    torch.manual_seed(0)
    head = DinoHead(in_dim=384, out_dim=1000, hidden_dim=2048, bottleneck_dim=256, num_layers=3)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(384, 2048), (2048, 2048), (2048, 256)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    for linear in linears:
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert torch.equal(head.last_layer_magnitude, torch.ones(1000, 1))
    assert head.last_layer.bias is None
    assert head(torch.randn(2, 384)).shape == (2, 1000)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints and Auto classes
# ---------------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_is_bit_exact(tiny_model, tmp_path):
    model = tiny_model().train()
    model(*crops())  # a non-zero center
    perturb_(model.student.parameters())  # student != teacher
    model.save_pretrained(tmp_path)

    assert (tmp_path / "model.safetensors").exists()
    saved = load_file(tmp_path / "model.safetensors")
    assert "loss.center" in saved and saved["loss.center"].abs().sum() > 0

    loaded, info = AutoModelForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, DinoForPreTraining)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # every parameter and every buffer, the non-persistent ones too (state_dict() leaves those out)
    for named in ("named_parameters", "named_buffers"):
        expected, actual = dict(getattr(model, named)()), dict(getattr(loaded, named)())
        assert expected.keys() == actual.keys()
        for name in expected:
            assert expected[name].dtype == actual[name].dtype, name
            assert torch.equal(expected[name], actual[name]), name
    assert "loss.pending_center_statistics" in dict(loaded.named_buffers())
    assert "loss.pending_center_statistics" not in loaded.state_dict()
    # loading must not unfreeze the teacher or the norm-fixed last layer
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    assert not loaded.student.head.last_layer_magnitude.requires_grad


def test_loaded_model_starts_with_no_pending_center_statistics(tiny_model, tmp_path):
    # The pending sums are not saved, so loading never fills them: they must start at zero, not at whatever
    # memory they were given. Several loads in a row, since leftover memory is sometimes zero by chance.
    model = tiny_model().train()
    model(*crops(), update_center=False)
    assert model.loss.pending_center_statistics.abs().sum() > 0
    model.save_pretrained(tmp_path)
    for _ in range(5):
        loaded = DinoForPreTraining.from_pretrained(tmp_path)
        pending = loaded.loss.pending_center_statistics
        assert pending.shape == (loaded.config.out_dim + 1,)
        assert torch.count_nonzero(pending) == 0, pending


def test_teacher_missing_from_a_checkpoint_starts_from_the_student(tiny_model, tmp_path):
    model = tiny_model()
    perturb_(model.student.parameters())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("teacher.")}, tmp_path / "model.safetensors")

    loaded = DinoForPreTraining.from_pretrained(tmp_path)
    student, teacher = loaded.student.state_dict(), loaded.teacher.state_dict()
    for name in student:
        assert torch.equal(student[name], teacher[name]), name


def test_auto_model_loads_the_teacher_backbone_without_warnings(tiny_model, tmp_path):
    model = tiny_model()
    perturb_(model.student.parameters())
    model.save_pretrained(tmp_path)

    backbone_model, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(backbone_model, DinoModel)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    teacher = model.teacher.backbone.state_dict()
    for name, tensor in backbone_model.backbone.state_dict().items():
        assert torch.equal(tensor, teacher[name]), name

    pixel_values = crops()[0][0]
    output = backbone_model(pixel_values)
    expected_cls, expected_patches = get_backbone_features(model.teacher.backbone.eval(), pixel_values)
    torch.testing.assert_close(output.pooler_output, expected_cls, rtol=0, atol=0)
    # the feature convention of every hf_ssl model: the backbone's own tokens, CLS first, as the exported model
    torch.testing.assert_close(output.last_hidden_state[:, 0], expected_cls, rtol=0, atol=0)
    torch.testing.assert_close(output.last_hidden_state[:, 1:], expected_patches, rtol=0, atol=0)
    assert output.pooler_output.shape == (3, 32) and output.last_hidden_state.shape == (3, 17, 32)


# ---------------------------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone, num_patches, num_prefix_tokens",
    [(TINY_VIT, 16, 1), (TINY_DINOV2, 16, 1), (TINY_DINOV2_WITH_REGISTERS, 16, 3)],
)
def test_backbone_features_for_vision_transformers(tiny_config, backbone, num_patches, num_prefix_tokens):
    config = tiny_config(backbone).teacher_backbone_config()
    model = build_backbone(config).eval()
    pixel_values = torch.randn(2, 3, 16, 16)
    cls_embedding, patch_tokens = get_backbone_features(model, pixel_values)
    hidden = model(pixel_values=pixel_values).last_hidden_state
    assert get_backbone_embed_dim(config) == 32
    assert cls_embedding.shape == (2, 32) and patch_tokens.shape == (2, num_patches, 32)
    assert torch.equal(cls_embedding, hidden[:, 0])
    assert torch.equal(patch_tokens, hidden[:, num_prefix_tokens:])
    # 8-px crops with a 16-px backbone: position embeddings are interpolated
    assert get_backbone_features(model, torch.randn(2, 3, 8, 8))[1].shape == (2, 4, 32)


def test_backbone_features_for_resnet(tiny_config):
    config = tiny_config(TINY_RESNET).teacher_backbone_config()
    model = build_backbone(config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    cls_embedding, patch_tokens = get_backbone_features(model, pixel_values)
    outputs = model(pixel_values=pixel_values)
    feature_map = outputs.last_hidden_state  # (2, 16, h, w)
    assert get_backbone_embed_dim(config) == 16
    assert torch.equal(cls_embedding, outputs.pooler_output.flatten(1))
    height, width = feature_map.shape[-2:]
    assert patch_tokens.shape == (2, height * width, 16)
    assert torch.equal(patch_tokens[:, 0], feature_map[:, :, 0, 0])


@pytest.mark.parametrize("backbone", [TINY_RESNET, TINY_DINOV2])
def test_pretraining_forward_and_backward_with_other_backbones(tiny_model, backbone):
    model = tiny_model(backbone).train()
    global_crops, local_crops = crops(global_size=32, local_size=16)
    output = model(global_crops, local_crops)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert all(p.grad is not None for p in model.student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_dinov2_student_gets_drop_path_teacher_does_not(tiny_model):
    model = tiny_model(TINY_DINOV2, student_drop_path_rate=0.2)
    assert model.student.backbone.config.drop_path_rate == 0.2
    assert model.teacher.backbone.config.drop_path_rate == 0.0
    # DINO never masks: no mask token, which would be a parameter without gradient
    assert not any("mask_token" in name for name, _ in model.student.named_parameters())
