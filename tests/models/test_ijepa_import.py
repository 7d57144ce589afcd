"""Importing official I-JEPA checkpoints (facebookresearch/ijepa layout) into IJepaForPreTraining.

The reference below re-implements the official encoder and predictor forward passes on their own parameter names;
filled with random values everywhere, saved in the official checkpoint layout and converted, it must give the same
numbers as the converted model.
"""

import argparse
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from hf_ssl import IJepaForPreTraining
from hf_ssl.models.ijepa import (
    OFFICIAL_NUM_ATTENTION_HEADS,
    convert_official_checkpoint,
    official_pretraining_config,
    read_official_checkpoint,
)
from hf_ssl.models.ijepa.convert_ijepa_official import main

HIDDEN_SIZE, DEPTH, HEADS, PATCH_SIZE, IMAGE_SIZE = 32, 2, 2, 4, 16
PREDICTOR_HIDDEN_SIZE, PREDICTOR_DEPTH = 16, 2
GRID_SIDE = IMAGE_SIZE // PATCH_SIZE
NUM_PATCHES = GRID_SIDE * GRID_SIDE
EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------------------
# Reference: the official architecture, written on its own parameter names
# ---------------------------------------------------------------------------------------------------------------------


def keep_tokens(tokens, indices):
    """tokens (B, N, D), indices (B, K) -> (B, K, D): the kept tokens, the others dropped."""
    return tokens[torch.arange(tokens.shape[0]).unsqueeze(1), indices]


class ReferenceMlp(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ReferenceAttention(nn.Module):
    """Multi-head self-attention with one fused projection whose output rows are [queries; keys; values]."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x):
        batch, length, width = x.shape
        head_width = width // self.heads
        query, key, value = (
            part.reshape(batch, length, self.heads, head_width).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=-1)
        )
        weights = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(head_width), dim=-1)
        return self.proj((weights @ value).transpose(1, 2).reshape(batch, length, width))


class ReferenceBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=EPS), nn.LayerNorm(width, eps=EPS)
        self.attn, self.mlp = ReferenceAttention(width, heads), ReferenceMlp(width, 4 * width)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReferencePatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, HIDDEN_SIZE, PATCH_SIZE, stride=PATCH_SIZE)


class ReferenceEncoder(nn.Module):
    """The official ViT encoder: patches + position embeddings, masked tokens dropped, blocks, final norm."""

    def __init__(self):
        super().__init__()
        self.patch_embed = ReferencePatchEmbed()
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES, HIDDEN_SIZE))
        self.blocks = nn.ModuleList([ReferenceBlock(HIDDEN_SIZE, HEADS) for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(HIDDEN_SIZE, eps=EPS)

    def forward(self, images, keep=None):
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2) + self.pos_embed
        if keep is not None:
            x = keep_tokens(x, keep)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class ReferencePredictor(nn.Module):
    """The official predictor: one sequence per (target block, image), block-major, of the image's projected context
    tokens then one mask token per target patch, each plus its position's embedding."""

    def __init__(self):
        super().__init__()
        self.predictor_embed = nn.Linear(HIDDEN_SIZE, PREDICTOR_HIDDEN_SIZE)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, PREDICTOR_HIDDEN_SIZE))
        self.predictor_pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES, PREDICTOR_HIDDEN_SIZE))
        self.predictor_blocks = nn.ModuleList(
            [ReferenceBlock(PREDICTOR_HIDDEN_SIZE, HEADS) for _ in range(PREDICTOR_DEPTH)]
        )
        self.predictor_norm = nn.LayerNorm(PREDICTOR_HIDDEN_SIZE, eps=EPS)
        self.predictor_proj = nn.Linear(PREDICTOR_HIDDEN_SIZE, HIDDEN_SIZE)

    def forward(self, context_tokens, masks_context, masks_target):
        batch = context_tokens.shape[0]
        positions = self.predictor_pos_embed.expand(batch, -1, -1)
        context = self.predictor_embed(context_tokens) + keep_tokens(positions, masks_context)
        sequences = []
        for block_masks in masks_target:  # target block j of every image, then block j + 1
            queries = self.mask_token + keep_tokens(positions, block_masks)
            sequences.append(torch.cat([context, queries], dim=1))
        x = torch.cat(sequences, dim=0)
        for block in self.predictor_blocks:
            x = block(x)
        return self.predictor_proj(self.predictor_norm(x)[:, context.shape[1] :])


def randomize_(module, seed):
    """Random values in every tensor (LayerNorm weights around 1), so that any wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for submodule in module.modules():
            for name, parameter in submodule.named_parameters(recurse=False):
                center = 1.0 if isinstance(submodule, nn.LayerNorm) and name == "weight" else 0.0
                parameter.copy_(center + 0.2 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def official_checkpoint(encoder, target_encoder, predictor, prefix="module."):
    """The dict the official training script saves, state dicts prefixed as DistributedDataParallel names them."""
    # an optimizer state after one step, on copies: the reference keeps its weights
    copies = [parameter.detach().clone().requires_grad_() for parameter in predictor.parameters()]
    optimizer = torch.optim.AdamW(copies)
    for parameter_copy in copies:
        parameter_copy.grad = torch.ones_like(parameter_copy)
    optimizer.step()
    return {
        "encoder": {prefix + key: value.clone() for key, value in encoder.state_dict().items()},
        "predictor": {prefix + key: value.clone() for key, value in predictor.state_dict().items()},
        "target_encoder": {prefix + key: value.clone() for key, value in target_encoder.state_dict().items()},
        "opt": optimizer.state_dict(),
        "scaler": None,
        "epoch": 7,
        "loss": 0.25,
        "batch_size": 2,
        "world_size": 1,
        "lr": 1e-3,
    }


@pytest.fixture(scope="module")
def reference():
    """Context encoder, target encoder (different weights) and predictor of the official layout."""
    encoder = randomize_(ReferenceEncoder(), seed=0)
    target_encoder = randomize_(ReferenceEncoder(), seed=1)
    predictor = randomize_(ReferencePredictor(), seed=2)
    return encoder, target_encoder, predictor


@pytest.fixture(scope="module")
def checkpoint_path(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "ijepa-tiny-ep7.pth.tar"
    torch.save(official_checkpoint(*reference), path)
    return path


@pytest.fixture(scope="module")
def converted(checkpoint_path):
    return convert_official_checkpoint(checkpoint_path, num_attention_heads=HEADS)


def make_inputs(batch_size=3, num_targets=2, num_context=9, num_target_patches=4, seed=5):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)

    def draw(count):  # distinct patches, unsorted: the order of the indices is the order of the tokens
        return torch.randperm(NUM_PATCHES, generator=generator)[:count]

    masks_context = torch.stack([draw(num_context) for _ in range(batch_size)])
    masks_target = torch.stack(
        [torch.stack([draw(num_target_patches) for _ in range(batch_size)]) for _ in range(num_targets)]
    )
    return pixel_values, masks_context, masks_target


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# The converted model computes what the official one does
# ---------------------------------------------------------------------------------------------------------------------


def test_architecture_is_read_from_the_weights(converted):
    backbone = converted.config.backbone_config
    assert (backbone.hidden_size, backbone.num_hidden_layers, backbone.num_attention_heads) == (32, 2, 2)
    assert (backbone.patch_size, backbone.image_size, backbone.num_channels) == (4, 16, 3)
    assert backbone.intermediate_size == 128
    assert backbone.layer_norm_eps == EPS and backbone.qkv_bias and backbone.hidden_act == "gelu"
    assert converted.config.predictor_hidden_size == PREDICTOR_HIDDEN_SIZE
    assert converted.config.predictor_num_hidden_layers == PREDICTOR_DEPTH
    assert converted.config.predictor_mlp_ratio == 4.0
    assert converted.config.predictor_num_attention_heads == HEADS


def test_target_encoder_matches_the_official_one(converted, reference):
    pixel_values, _, _ = make_inputs()
    with torch.no_grad():
        expected = reference[1](pixel_values)
        actual = converted.target_encoder(pixel_values).last_hidden_state
    assert_close(actual, expected)


def test_context_encoder_drops_the_masked_patches_as_the_official_one(converted, reference):
    pixel_values, masks_context, _ = make_inputs()
    with torch.no_grad():
        expected = reference[0](pixel_values, keep=masks_context)
        actual = converted.forward_context(pixel_values, masks_context)
    assert_close(actual, expected)


def test_predictor_matches_the_official_one_block_major(converted, reference):
    pixel_values, masks_context, masks_target = make_inputs()
    with torch.no_grad():
        context_tokens = reference[0](pixel_values, keep=masks_context)
        expected = reference[2](context_tokens, masks_context, masks_target)
        actual = converted.predictor(context_tokens, masks_context, masks_target)
    assert actual.shape == (2 * 3, 4, HIDDEN_SIZE)
    assert_close(actual, expected)


def test_loss_is_the_official_loss(converted, reference):
    encoder, target_encoder, predictor = reference
    pixel_values, masks_context, masks_target = make_inputs()
    with torch.no_grad():
        predictions = predictor(encoder(pixel_values, keep=masks_context), masks_context, masks_target)
        target_tokens = F.layer_norm(target_encoder(pixel_values), (HIDDEN_SIZE,))
        targets = torch.cat([keep_tokens(target_tokens, block_masks) for block_masks in masks_target])
        expected = F.smooth_l1_loss(predictions, targets)
        output = converted(pixel_values, masks_context, masks_target)
    assert_close(output.loss, expected)
    assert_close(output.targets, targets)


def test_position_embeddings_are_the_checkpoints_and_survive_save_and_load(converted, reference, tmp_path):
    encoder, target_encoder, predictor = reference
    context_positions = converted.context_encoder.embeddings.position_embeddings
    assert torch.equal(context_positions, encoder.pos_embed)  # not the sin-cos table the model is built with
    assert not context_positions.requires_grad  # fixed, as the official ones
    assert torch.equal(converted.target_encoder.embeddings.position_embeddings, target_encoder.pos_embed)
    assert torch.equal(converted.predictor.position_embeddings, predictor.predictor_pos_embed[0])
    assert torch.equal(converted.predictor.mask_token, predictor.mask_token)

    converted.save_pretrained(tmp_path)
    reloaded = IJepaForPreTraining.from_pretrained(tmp_path)
    saved, loaded = converted.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("encoder", ["target", "context"])
def test_exported_backbone_is_a_plain_ijepa_model_with_the_official_outputs(converted, reference, tmp_path, encoder):
    converted.export_backbone(tmp_path, encoder=encoder)
    plain = AutoModel.from_pretrained(tmp_path)
    assert type(plain).__name__ == "IJepaModel"
    pixel_values, _, _ = make_inputs()
    official_encoder = reference[1] if encoder == "target" else reference[0]
    with torch.no_grad():
        assert_close(plain(pixel_values).last_hidden_state, official_encoder(pixel_values))


@pytest.mark.parametrize("present", ["encoder", "target_encoder"])
def test_a_single_encoder_fills_both_and_leaves_the_predictor_fresh(reference, present, caplog):
    encoder, target_encoder, predictor = reference
    official = encoder if present == "encoder" else target_encoder
    checkpoint = {present: official.state_dict()}  # no DDP prefix this time
    with caplog.at_level(logging.WARNING):
        model = convert_official_checkpoint(
            checkpoint, num_attention_heads=HEADS, predictor_hidden_size=16, predictor_num_hidden_layers=1
        )
    pixel_values, _, _ = make_inputs()
    with torch.no_grad():
        expected = official(pixel_values)
        assert_close(model.target_encoder(pixel_values).last_hidden_state, expected)
        assert_close(model.context_encoder(pixel_values).last_hidden_state, expected)
    assert len(model.predictor.layers) == 1
    assert not torch.equal(model.predictor.mask_token, predictor.mask_token)
    messages = " ".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert "predictor" in messages and "freshly initialised" in messages
    assert ("'target_encoder'" if present == "encoder" else "'encoder'") in messages


def test_heads_default_to_the_official_vit_of_that_width(reference):
    assert OFFICIAL_NUM_ATTENTION_HEADS[1280] == 16 and OFFICIAL_NUM_ATTENTION_HEADS[768] == 12
    state_dicts = read_official_checkpoint(official_checkpoint(*reference))
    with pytest.raises(ValueError, match="num_attention_heads"):
        official_pretraining_config(state_dicts)  # width 32 is no official ViT
    with pytest.raises(ValueError, match="num_attention_heads"):
        official_pretraining_config(state_dicts, num_attention_heads=3)  # 32 is not a multiple of 3
    wide = {
        "encoder": {
            "pos_embed": torch.zeros(1, 4, 768),
            "patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
            "blocks.0.mlp.fc1.weight": torch.zeros(3072, 768),
        }
    }
    config = official_pretraining_config(wide)
    assert config.backbone_config.num_attention_heads == 12 and config.backbone_config.image_size == 32


# ---------------------------------------------------------------------------------------------------------------------
# Errors name what is wrong
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_key_is_named(reference):
    checkpoint = official_checkpoint(*reference)
    del checkpoint["encoder"]["module.blocks.1.attn.proj.bias"]
    with pytest.raises(ValueError, match=r"'encoder'.*'blocks\.1\.attn\.proj\.bias'"):
        convert_official_checkpoint(checkpoint, num_attention_heads=HEADS)


def test_wrong_shape_is_named(reference):
    checkpoint = official_checkpoint(*reference)
    checkpoint["target_encoder"]["module.blocks.0.attn.qkv.weight"] = torch.zeros(2 * HIDDEN_SIZE, HIDDEN_SIZE)
    with pytest.raises(ValueError, match=r"'target_encoder'.*'blocks\.0\.attn\.qkv\.weight'.*\(64, 32\).*\(96, 32\)"):
        convert_official_checkpoint(checkpoint, num_attention_heads=HEADS)


def test_unknown_extra_key_is_named(reference):
    checkpoint = official_checkpoint(*reference)
    checkpoint["predictor"]["module.predictor_blocks.0.attn.q_norm.weight"] = torch.ones(8)
    with pytest.raises(ValueError, match=r"'predictor'.*predictor_blocks\.0\.attn\.q_norm\.weight"):
        convert_official_checkpoint(checkpoint, num_attention_heads=HEADS)


def test_a_file_that_is_not_an_ijepa_checkpoint_is_refused(reference, tmp_path):
    path = tmp_path / "classifier.pth"
    torch.save({"state_dict": reference[0].state_dict(), "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"not an official I-JEPA checkpoint.*'encoder'.*'state_dict'"):
        convert_official_checkpoint(path, num_attention_heads=HEADS)
    text = tmp_path / "notes.pth.tar"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth.tar"):
        convert_official_checkpoint(text, num_attention_heads=HEADS)
    with pytest.raises(ValueError, match="'pos_embed'"):
        convert_official_checkpoint({"encoder": {"cls_token": torch.zeros(1, 1, 8)}})


def test_pickled_objects_need_weights_only_false(checkpoint_path, reference, tmp_path):
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    checkpoint["args"] = argparse.Namespace(model_name="vit_tiny")  # a Python object, not a tensor or number
    path = tmp_path / "with-args.pth.tar"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        convert_official_checkpoint(path, num_attention_heads=HEADS)
    model = convert_official_checkpoint(path, num_attention_heads=HEADS, weights_only=False)
    assert torch.equal(model.context_encoder.embeddings.position_embeddings, reference[0].pos_embed)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def test_command_line_saves_the_model_and_the_backbone(checkpoint_path, reference, tmp_path):
    output_dir = tmp_path / "converted"
    main(
        [
            "--checkpoint",
            str(checkpoint_path),
            "--output_dir",
            str(output_dir),
            "--num_attention_heads",
            str(HEADS),
            "--export_backbone",
            "context",
        ]
    )
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "backbone" / "model.safetensors").is_file()
    model = IJepaForPreTraining.from_pretrained(output_dir)
    backbone = AutoModel.from_pretrained(output_dir / "backbone")
    pixel_values, _, _ = make_inputs()
    with torch.no_grad():
        assert_close(model.target_encoder(pixel_values).last_hidden_state, reference[1](pixel_values))
        assert_close(backbone(pixel_values).last_hidden_state, reference[0](pixel_values))


def test_command_line_reports_a_bad_checkpoint(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "not an official I-JEPA checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
