"""Importing official DINO checkpoints (facebookresearch/dino layouts) into DinoForPreTraining and a plain ViTModel.

The reference below re-implements the official ViT and DINO head forward passes on their own parameter names; filled
with random values, saved in the official layouts and converted, it must give the same numbers as the converted models.
"""

import argparse
import json
import logging
import pathlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, ViTModel

from hf_ssl import DinoForPreTraining
from hf_ssl.models.dino.convert_dino_official import (
    OFFICIAL_NUM_ATTENTION_HEADS,
    convert_dino_checkpoint,
    dino_checkpoint_to_vit,
    dino_pretraining_config,
    main,
    read_dino_checkpoint,
)

WIDTH, DEPTH, HEADS, PATCH_SIZE, IMAGE_SIZE = 48, 2, 3, 4, 16
HEAD_HIDDEN, BOTTLENECK, OUT_DIM = 32, 16, 64
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
EPS = 1e-6
# the fresh heads of a backbone-only conversion, kept tiny
TINY_HEAD_KWARGS = {"out_dim": OUT_DIM, "head_hidden_dim": HEAD_HIDDEN, "head_bottleneck_dim": BOTTLENECK}


# ---------------------------------------------------------------------------------------------------------------------
# Reference: the official ViT and DINOHead, written on their own parameter names
# ---------------------------------------------------------------------------------------------------------------------


class ReferenceAttention(nn.Module):
    """Self-attention whose single projection `qkv` gives, per token, all queries, then all keys, then all values."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, tokens):
        batch, length, _ = tokens.shape
        head_width = WIDTH // HEADS
        # (batch, length, 3 * WIDTH) -> (3, batch, heads, length, head_width)
        fused = self.qkv(tokens).view(batch, length, 3, HEADS, head_width).permute(2, 0, 3, 1, 4)
        query, key, value = fused[0], fused[1], fused[2]
        scores = torch.einsum("bhqd,bhkd->bhqk", query, key) * head_width**-0.5
        mixed = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), value)
        return self.proj(mixed.permute(0, 2, 1, 3).reshape(batch, length, WIDTH))


class ReferenceMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, tokens):
        return self.fc2(F.gelu(self.fc1(tokens)))


class ReferenceBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(WIDTH, eps=EPS), ReferenceAttention()
        self.norm2, self.mlp = nn.LayerNorm(WIDTH, eps=EPS), ReferenceMlp()

    def forward(self, tokens):
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class ReferencePatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, WIDTH, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)


class ReferenceVisionTransformer(nn.Module):
    """The official ViT at its native size: CLS token + patches, position embeddings, blocks, final norm; the output
    is the normed CLS token."""

    def __init__(self):
        super().__init__()
        self.patch_embed = ReferencePatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + NUM_PATCHES, WIDTH))
        self.blocks = nn.ModuleList([ReferenceBlock() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(WIDTH, eps=EPS)

    def forward(self, images):
        patches = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(images), -1, -1), patches], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


class ReferenceHead(nn.Module):
    """The official DINOHead: MLP (GELU between the layers, BatchNorm after the hidden ones with use_bn; one bare
    Linear when num_layers is 1), L2 normalisation, weight-normalised last layer without bias."""

    def __init__(self, num_layers=3, use_bn=False, weight_norm_api="weight_g"):
        super().__init__()
        if num_layers == 1:
            self.mlp = nn.Linear(WIDTH, BOTTLENECK)
        else:
            layers = [nn.Linear(WIDTH, HEAD_HIDDEN)]
            for _ in range(num_layers - 2):
                layers += [nn.BatchNorm1d(HEAD_HIDDEN)] if use_bn else []
                layers += [nn.GELU(), nn.Linear(HEAD_HIDDEN, HEAD_HIDDEN)]
            layers += [nn.BatchNorm1d(HEAD_HIDDEN)] if use_bn else []
            layers += [nn.GELU(), nn.Linear(HEAD_HIDDEN, BOTTLENECK)]
            self.mlp = nn.Sequential(*layers)
        last_layer = nn.Linear(BOTTLENECK, OUT_DIM, bias=False)
        if weight_norm_api == "weight_g":  # the API the official code uses: last_layer.weight_g / weight_v
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.last_layer = nn.utils.weight_norm(last_layer)
        else:  # newer PyTorch: last_layer.parametrizations.weight.original0 / original1
            self.last_layer = nn.utils.parametrizations.weight_norm(last_layer)

    def forward(self, embeddings):
        return self.last_layer(F.normalize(self.mlp(embeddings), dim=-1))


class ReferenceMultiCropWrapper(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.backbone, self.head = ReferenceVisionTransformer(), head

    def forward(self, images):
        return self.head(self.backbone(images))


def randomize_(module, seed, unit_magnitude=True):
    """Random values in every tensor (norm weights around 1, BatchNorm variances positive), so that any wrong mapping
    shows; the last layer's g is 1 everywhere with `unit_magnitude` (norm_last_layer), random otherwise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for submodule in module.modules():
            named = [*submodule.named_parameters(recurse=False), *submodule.named_buffers(recurse=False)]
            for name, tensor in named:
                if not tensor.is_floating_point():  # BatchNorm's num_batches_tracked
                    continue
                values = 0.2 * torch.randn(tensor.shape, generator=generator)
                if isinstance(submodule, (nn.LayerNorm, nn.BatchNorm1d)) and name == "weight":
                    values += 1.0
                elif name == "running_var":
                    values = 1.0 + values.abs()
                elif name in ("weight_g", "original0"):
                    values = torch.ones(tensor.shape) if unit_magnitude else 0.5 + values.abs()
                tensor.copy_(values)
    return module.eval()


def network_pair(seed=0, unit_magnitude=True, **head_kwargs):
    """A student and a teacher (different weights) of the official layout."""
    return tuple(
        randomize_(ReferenceMultiCropWrapper(ReferenceHead(**head_kwargs)), seed + offset, unit_magnitude)
        for offset in (0, 1)
    )


def training_checkpoint(student, teacher, center, student_prefix="module.", teacher_prefix=""):
    """The dict main_dino.py saves: the student is wrapped in DistributedDataParallel (keys `module.*`), the teacher
    only when the networks have BatchNorm; the training state comes along."""
    copies = [tensor.detach().clone().requires_grad_() for tensor in student.head.parameters()]
    optimizer = torch.optim.AdamW(copies)
    for tensor in copies:
        tensor.grad = torch.ones_like(tensor)
    optimizer.step()
    return {
        "student": {student_prefix + key: value.clone() for key, value in student.state_dict().items()},
        "teacher": {teacher_prefix + key: value.clone() for key, value in teacher.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": 12,
        "args": argparse.Namespace(
            arch="vit_tiny",
            patch_size=PATCH_SIZE,
            out_dim=OUT_DIM,
            norm_last_layer=True,
            local_crops_scale=(0.05, 0.4),
            output_dir=".",
        ),
        "dino_loss": {"center": center.clone()},
        "fp16_scaler": {
            "scale": 1024.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 3,
        },
    }


@pytest.fixture(scope="module")
def reference():
    student, teacher = network_pair()
    center = 0.3 * torch.randn(1, OUT_DIM, generator=torch.Generator().manual_seed(9))
    return student, teacher, center


@pytest.fixture(scope="module")
def checkpoint_path(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "checkpoint.pth"
    torch.save(training_checkpoint(*reference), path)
    return path


@pytest.fixture(scope="module")
def backbone_path(reference, tmp_path_factory):
    """The released backbone-only layout (dino_vits16_pretrain.pth): the teacher's VisionTransformer."""
    path = tmp_path_factory.mktemp("official") / "dino_tiny_pretrain.pth"
    torch.save(reference[1].backbone.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def converted(checkpoint_path):
    return convert_dino_checkpoint(checkpoint_path, num_attention_heads=HEADS)


def make_images(batch_size=3, seed=4):
    return torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def network_outputs(model, network, images):
    """(CLS embeddings, head logits) of `model.student` or `model.teacher`."""
    with torch.no_grad():
        return getattr(model, network)([images])


# ---------------------------------------------------------------------------------------------------------------------
# The converted models compute what the official ones do
# ---------------------------------------------------------------------------------------------------------------------


def test_architecture_is_read_from_the_weights(converted):
    config = converted.config
    backbone = config.backbone_config
    assert backbone.model_type == "vit"
    assert (backbone.hidden_size, backbone.num_hidden_layers, backbone.num_attention_heads) == (WIDTH, DEPTH, HEADS)
    assert (backbone.patch_size, backbone.image_size, backbone.num_channels) == (PATCH_SIZE, IMAGE_SIZE, 3)
    assert backbone.intermediate_size == 4 * WIDTH and backbone.qkv_bias and backbone.hidden_act == "gelu"
    assert backbone.layer_norm_eps == EPS
    assert (config.out_dim, config.head_hidden_dim, config.head_bottleneck_dim) == (OUT_DIM, HEAD_HIDDEN, BOTTLENECK)
    assert config.head_num_layers == 3 and not config.head_use_bn and config.norm_last_layer


@pytest.mark.parametrize("network", ["teacher", "student"])
def test_networks_match_the_official_ones(converted, reference, network):
    official = reference[1] if network == "teacher" else reference[0]
    images = make_images()
    embeddings, logits = network_outputs(converted, network, images)
    with torch.no_grad():
        assert_close(embeddings, official.backbone(images))
        assert_close(logits, official(images))


@pytest.mark.parametrize("network", ["teacher", "student"])
def test_vit_model_gives_the_official_cls_output(checkpoint_path, reference, network):
    vit = dino_checkpoint_to_vit(checkpoint_path, network=network, num_attention_heads=HEADS)
    assert type(vit) is ViTModel and vit.pooler is None and vit.config.layer_norm_eps == EPS
    official = reference[1] if network == "teacher" else reference[0]
    images = make_images()
    with torch.no_grad():
        assert_close(vit(images).last_hidden_state[:, 0], official.backbone(images))


def test_center_is_imported_and_the_training_state_is_not(converted, reference):
    assert torch.equal(converted.loss.center, reference[2])
    # the teacher learns only through the EMA; norm_last_layer keeps the student's g fixed
    assert not any(parameter.requires_grad for parameter in converted.teacher.parameters())
    assert converted.student.head.last_layer_direction.requires_grad
    assert not converted.student.head.last_layer_magnitude.requires_grad


def test_ddp_prefixes_are_removed(reference):
    state_dicts = read_dino_checkpoint(training_checkpoint(*reference, teacher_prefix="module."))
    assert set(state_dicts) == {"student", "teacher", "dino_loss"}
    for name in ("student", "teacher"):
        assert "backbone.cls_token" in state_dicts[name] and "head.last_layer.weight_g" in state_dicts[name]
        assert not any(key.startswith("module.") for key in state_dicts[name])


@pytest.mark.parametrize(
    "head_kwargs",
    [
        {"weight_norm_api": "parametrizations", "use_bn": True},
        {"weight_norm_api": "weight_g", "num_layers": 1},
        {"weight_norm_api": "parametrizations", "num_layers": 2},
    ],
    ids=["parametrizations-batchnorm", "one-layer", "two-layers"],
)
def test_head_variants_with_a_trained_magnitude(head_kwargs):
    """norm_last_layer false (the "boosted" recipe): g is trained, so the converted head must use it."""
    student, teacher = network_pair(seed=20, unit_magnitude=False, **head_kwargs)
    center = torch.zeros(1, OUT_DIM)
    model = convert_dino_checkpoint(training_checkpoint(student, teacher, center), num_attention_heads=HEADS)
    assert not model.config.norm_last_layer and model.student.head.last_layer_magnitude.requires_grad
    assert model.config.head_use_bn == head_kwargs.get("use_bn", False)
    assert model.config.head_num_layers == head_kwargs.get("num_layers", 3)
    images = make_images()
    for network, official in (("student", student), ("teacher", teacher)):
        with torch.no_grad():
            assert_close(network_outputs(model, network, images)[1], official(images))


def test_backbone_file_fills_both_backbones_and_leaves_the_heads_fresh(backbone_path, reference, caplog):
    with caplog.at_level(logging.WARNING):
        model = convert_dino_checkpoint(backbone_path, num_attention_heads=HEADS, **TINY_HEAD_KWARGS)
    images = make_images()
    with torch.no_grad():
        expected = reference[1].backbone(images)
    for network in ("teacher", "student"):
        assert_close(network_outputs(model, network, images)[0], expected)
    assert torch.equal(model.student.head.mlp[0].weight, model.teacher.head.mlp[0].weight)
    assert not torch.equal(model.teacher.head.mlp[0].weight, reference[1].head.mlp[0].weight)
    assert torch.equal(model.loss.center, torch.zeros(1, OUT_DIM))
    messages = " ".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert "freshly initialised" in messages and "'student'" in messages


def test_other_containers_of_the_same_weights(reference):
    student, teacher, _ = reference
    images = make_images()
    with torch.no_grad():
        expected = teacher.backbone(images)
    wrapped_backbone = {"state_dict": teacher.backbone.state_dict(), "epoch": 100}
    vit = dino_checkpoint_to_vit(wrapped_backbone, network="student", num_attention_heads=HEADS)
    with torch.no_grad():
        assert_close(vit(images).last_hidden_state[:, 0], expected)
    # one MultiCropWrapper saved from DistributedDataParallel: backbone and head
    multicrop = {f"module.{key}": value for key, value in teacher.state_dict().items()}
    model = convert_dino_checkpoint({"model": multicrop}, num_attention_heads=HEADS)
    with torch.no_grad():
        assert_close(network_outputs(model, "student", images)[1], teacher(images))


def test_heads_default_to_the_official_vit_of_that_width(reference):
    assert OFFICIAL_NUM_ATTENTION_HEADS == {192: 3, 384: 6, 768: 12}
    state_dicts = read_dino_checkpoint(training_checkpoint(*reference))
    with pytest.raises(ValueError, match="num_attention_heads"):
        dino_pretraining_config(state_dicts)  # width 48 is no official ViT
    with pytest.raises(ValueError, match="num_attention_heads"):
        dino_pretraining_config(state_dicts, num_attention_heads=5)  # 48 is not a multiple of 5
    vit_small = {
        "teacher": {
            "backbone.pos_embed": torch.zeros(1, 1 + 14 * 14, 384),
            "backbone.patch_embed.proj.weight": torch.zeros(384, 3, 16, 16),
            "backbone.blocks.0.mlp.fc1.weight": torch.zeros(1536, 384),
            "backbone.blocks.0.attn.qkv.bias": torch.zeros(3 * 384),
        }
    }
    backbone = dino_pretraining_config(vit_small).backbone_config
    assert (backbone.num_attention_heads, backbone.image_size, backbone.patch_size) == (6, 224, 16)


# ---------------------------------------------------------------------------------------------------------------------
# Saved folders and the command line
# ---------------------------------------------------------------------------------------------------------------------


def test_command_line_writes_the_model_and_a_plain_vit(checkpoint_path, reference, tmp_path):
    output_dir = tmp_path / "converted"
    main(["--checkpoint", str(checkpoint_path), "--output_dir", str(output_dir), "--num_attention_heads", str(HEADS)])
    for folder in (output_dir, output_dir / "backbone"):
        assert (folder / "model.safetensors").is_file() and (folder / "preprocessor_config.json").is_file()
    processor = json.loads((output_dir / "backbone" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])

    images = make_images()
    vit, loading = ViTModel.from_pretrained(output_dir / "backbone", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    auto = AutoModel.from_pretrained(output_dir / "backbone")
    assert type(auto) is ViTModel
    student, teacher, center = reference
    model = DinoForPreTraining.from_pretrained(output_dir)
    with torch.no_grad():
        expected = teacher.backbone(images)
        for plain in (vit, auto):
            outputs = plain(images)
            assert_close(outputs.last_hidden_state[:, 0], expected)
            assert_close(outputs.pooler_output, expected)  # the identity pooler of hf_ssl's exports
        assert_close(network_outputs(model, "teacher", images)[1], teacher(images))
        assert_close(network_outputs(model, "student", images)[1], student(images))
    assert torch.equal(model.loss.center, center)


def test_command_line_exports_the_student_where_asked(checkpoint_path, reference, tmp_path):
    backbone_dir = tmp_path / "student_vit"
    main(
        [
            "--checkpoint",
            str(checkpoint_path),
            "--output_dir",
            str(tmp_path / "out"),
            "--num_attention_heads",
            str(HEADS),
            "--export_backbone",
            "student",
            "--backbone_dir",
            str(backbone_dir),
        ]
    )
    vit = AutoModel.from_pretrained(backbone_dir)
    images = make_images()
    with torch.no_grad():
        assert_close(vit(images).last_hidden_state[:, 0], reference[0].backbone(images))


def test_command_line_reports_a_file_of_another_layout(tmp_path, capsys):
    path = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}, path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "not the state dict of an official DINO network" in error and "conv1.weight" in error
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Errors name what is wrong
# ---------------------------------------------------------------------------------------------------------------------


def test_a_dict_of_neither_layout_lists_its_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder": {"pos_embed": torch.zeros(1, 4, 8)}, "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"not an official DINO checkpoint.*top-level keys: \['encoder', 'epoch'\]"):
        convert_dino_checkpoint(path)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        convert_dino_checkpoint(text)


def test_missing_tensor_is_named(reference):
    checkpoint = training_checkpoint(*reference)
    del checkpoint["student"]["module.backbone.blocks.1.attn.proj.bias"]
    with pytest.raises(ValueError, match=r"'student'.*'backbone\.blocks\.1\.attn\.proj\.bias'"):
        convert_dino_checkpoint(checkpoint, num_attention_heads=HEADS)


@pytest.mark.parametrize(
    ("network", "key", "tensor"),
    [
        ("teacher", "head.mlp.0.extra", torch.zeros(3)),
        ("student", "module.backbone.blocks.0.ls1.gamma", torch.ones(WIDTH)),
        ("teacher", "head.last_layer.parametrizations.weight.original0", torch.ones(OUT_DIM, 1)),  # both g variants
    ],
)
def test_extra_tensor_is_named(reference, network, key, tensor):
    checkpoint = training_checkpoint(*reference)
    checkpoint[network][key] = tensor
    with pytest.raises(ValueError, match=rf"'{network}'.*no place in the model.*{key.removeprefix('module.')}"):
        convert_dino_checkpoint(checkpoint, num_attention_heads=HEADS)


def test_wrong_shape_and_a_classifier_are_named(reference):
    checkpoint = training_checkpoint(*reference)
    checkpoint["teacher"]["backbone.blocks.0.attn.qkv.weight"] = torch.zeros(2 * WIDTH, WIDTH)
    wrong_shape = r"'teacher'.*'backbone\.blocks\.0\.attn\.qkv\.weight'.*\(96, 48\).*\(144, 48\)"
    with pytest.raises(ValueError, match=wrong_shape):
        convert_dino_checkpoint(checkpoint, num_attention_heads=HEADS)
    classifier = {
        **reference[1].backbone.state_dict(),
        "head.weight": torch.zeros(10, WIDTH),
        "head.bias": torch.zeros(10),
    }
    with pytest.raises(ValueError, match=r"classifier \['head\.bias', 'head\.weight'\]"):
        dino_checkpoint_to_vit(classifier, num_attention_heads=HEADS)


def test_head_settings_that_contradict_the_weights_are_refused(reference):
    checkpoint = training_checkpoint(*reference)
    with pytest.raises(ValueError, match=r"out_dim=10 differs from the checkpoint's head \(64\)"):
        convert_dino_checkpoint(checkpoint, num_attention_heads=HEADS, out_dim=10)
    student, teacher = network_pair(seed=30, unit_magnitude=False)
    trained_magnitude = training_checkpoint(student, teacher, torch.zeros(1, OUT_DIM))
    with pytest.raises(ValueError, match="norm_last_layer=True.*not 1 everywhere"):
        convert_dino_checkpoint(trained_magnitude, num_attention_heads=HEADS, norm_last_layer=True)
    del checkpoint["teacher"]
    checkpoint["teacher"] = reference[1].backbone.state_dict()  # a head in the student only
    with pytest.raises(ValueError, match="'student' network has a head and the other none"):
        convert_dino_checkpoint(checkpoint, num_attention_heads=HEADS)


def test_pickled_objects_need_weights_only_false(reference, tmp_path):
    checkpoint = training_checkpoint(*reference)
    checkpoint["args"].output_dir = pathlib.PurePosixPath("runs/dino")  # not a plain type: safe loading refuses it
    path = tmp_path / "with-path.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        convert_dino_checkpoint(path, num_attention_heads=HEADS)
    model = convert_dino_checkpoint(path, num_attention_heads=HEADS, weights_only=False)
    assert torch.equal(model.loss.center, reference[2])
