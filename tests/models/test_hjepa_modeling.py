"""HJepaForPreTraining / HJepaFeatureModel through the public API: levels, the I-JEPA special case, checkpoints."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForPreTraining, IJepaModel

from hf_ssl import HJepaConfig, HJepaFeatureModel, HJepaForPreTraining, IJepaForPreTraining, IJepaPretrainingConfig
from hf_ssl.data.masks import MultiBlockMaskCollator, rectangle_indices
from hf_ssl.models.hjepa import contrastive_distance, infer_target_block_size
from tests.helpers import TINY_VIT

TINY_IJEPA = {**TINY_VIT, "model_type": "ijepa", "image_size": 32}  # 32 px images, 4 px patches: an 8 x 8 grid
GRID = 8


def tiny_values(**overrides):
    values = dict(backbone_config=dict(TINY_IJEPA), predictor_hidden_size=16, predictor_num_hidden_layers=2)
    return {**values, **overrides}


def tiny_model(**overrides):
    torch.manual_seed(0)
    return HJepaForPreTraining(HJepaConfig(**tiny_values(**overrides)))


def perturb_(module, seed=3):
    """Move every parameter away from its init, so that the encoders differ and loaded weights are recognisable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


# two 3 x 5 target blocks on each of two images, by their top-left patches
CORNERS = [[(0, 0), (4, 2)], [(2, 3), (5, 1)]]  # CORNERS[j][b]: block j of image b


def make_inputs(block_size=(3, 5), corners=CORNERS, seed=1):
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(corners[0])
    pixel_values = torch.randn(batch_size, 3, 32, 32, generator=generator)
    masks_target = torch.stack(
        [
            torch.stack([torch.from_numpy(rectangle_indices(top, left, *block_size, GRID)) for top, left in blocks])
            for blocks in corners
        ]
    )
    masks_context = torch.stack(
        [torch.randperm(GRID * GRID, generator=generator)[:20].sort().values for _ in range(batch_size)]
    )
    return pixel_values, masks_context, masks_target


def window_means(tokens, block_size, pool_size):
    """(N, h * w, C) -> (N, windows, C), each window's mean written out with index lists."""
    height, width = block_size
    windows = []
    for top in range(0, height, pool_size):
        for left in range(0, width, pool_size):
            rows = range(top, min(top + pool_size, height))
            columns = range(left, min(left + pool_size, width))
            windows.append(tokens[:, [r * width + c for r in rows for c in columns]].mean(dim=1))
    return torch.stack(windows, dim=1)


def plain_encoder_states(encoder, pixel_values):
    """(hidden_states, last_hidden_state) of a transformers IJepaModel built on its own with `encoder`'s weights."""
    plain = IJepaModel(encoder.config)
    plain.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        outputs = plain.eval()(pixel_values, output_hidden_states=True)
    return outputs.hidden_states, outputs.last_hidden_state


def layer_norm_gathered(hidden, masks_target):
    """Layer-normed (no affine) tokens at each block, block-major, written out image by image."""
    hidden = F.layer_norm(hidden, (hidden.shape[-1],))
    return torch.stack(
        [hidden[b, masks_target[j, b]] for j in range(masks_target.shape[0]) for b in range(masks_target.shape[1])]
    )


# ---------------------------------------------------------------------------------------------------------------------
# Target blocks
# ---------------------------------------------------------------------------------------------------------------------


def test_block_size_is_read_from_the_masks_the_collator_draws():
    collator = MultiBlockMaskCollator(32, 4, min_keep=2, target_scale=(0.1, 0.4), target_aspect_ratio=(0.3, 3.0))
    sizes = set()
    for seed in range(12):
        masks = collator.sample_masks(3, np.random.default_rng(seed))
        assert infer_target_block_size(masks.target, (GRID, GRID)) == masks.target_size
        sizes.add(masks.target_size)
    assert len(sizes) > 3  # several shapes, wide and tall
    # a block as wide as the grid: its rows run on without a gap
    full_width = torch.from_numpy(rectangle_indices(2, 0, 3, GRID, GRID))[None, None]
    assert infer_target_block_size(full_width, (GRID, GRID)) == (3, GRID)
    assert infer_target_block_size(make_inputs()[2], (GRID, GRID)) == (3, 5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.flip(-1), "masks_target\\[0, 0\\] starts with a row of 1"),  # descending: not row-major
        (lambda t: torch.cat([t[:1], t[1:].flip(-1)]), "masks_target\\[1, 0\\] is not a 3 x 5 block"),
        # a 2 x 3 "block" from column 6 wraps to the next row: read as 3 x 2, and not such a block
        (lambda t: torch.tensor([6, 7, 8, 14, 15, 16]).expand(2, 2, 6), "masks_target\\[0, 0\\] is not a 3 x 2 block"),
    ],
)
def test_target_blocks_that_are_not_rectangles_are_refused(change, message):
    model = tiny_model()
    pixel_values, masks_context, masks_target = make_inputs()
    with pytest.raises(ValueError, match=message):
        model(pixel_values, masks_context, change(masks_target))


def test_an_explicit_block_size_is_checked_against_the_masks():
    model = tiny_model()
    inputs = make_inputs()
    inferred = model(*inputs).loss
    assert torch.equal(model(*inputs, target_block_size=(3, 5)).loss, inferred)
    with pytest.raises(ValueError, match="masks_target\\[0, 0\\] is not a 5 x 3 block"):
        model(*inputs, target_block_size=(5, 3))
    with pytest.raises(ValueError, match="h \\* w = 15"):
        model(*inputs, target_block_size=(4, 4))
    # the wrapped 2 x 3 block of the test above, announced as 2 x 3: its right edge is off the grid
    pixel_values, masks_context, _ = inputs
    with pytest.raises(ValueError, match="not a 2 x 3 block"):
        model(
            pixel_values, masks_context, torch.tensor([6, 7, 8, 14, 15, 16]).expand(2, 2, 6), target_block_size=(2, 3)
        )


# ---------------------------------------------------------------------------------------------------------------------
# One level is I-JEPA
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["smooth_l1", "mse"])
def test_one_level_of_pool_1_at_the_final_output_is_ijepa(loss_type):
    torch.manual_seed(0)
    ijepa = IJepaForPreTraining(IJepaPretrainingConfig(**tiny_values(loss_type=loss_type)))
    perturb_(ijepa)
    hjepa = tiny_model(loss_type=loss_type, num_hierarchies=1)
    state = {
        name.replace("predictor.output_projection.", "predictor.level_projections.0."): tensor
        for name, tensor in ijepa.state_dict().items()
    }
    assert hjepa.load_state_dict(state, strict=True)
    inputs = make_inputs()
    expected = ijepa(*inputs)
    output = hjepa(*inputs)
    assert output.level_losses.shape == (1,)
    torch.testing.assert_close(output.loss, expected.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(output.level_predictions[0], expected.predictions, rtol=0, atol=1e-6)
    torch.testing.assert_close(output.level_targets[0], expected.targets, rtol=0, atol=0)
    for name in ("prediction_std", "target_std", "embedding_std", "embeddings"):
        torch.testing.assert_close(output[name], expected[name], rtol=1e-6, atol=1e-7)
    # not trivially equal: another head 0 gives another loss
    with torch.no_grad():
        hjepa.predictor.level_projections[0].weight.mul_(0.5)
    assert abs(hjepa(*inputs).loss.item() - expected.loss.item()) > 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# Levels: targets, predictions, weights
# ---------------------------------------------------------------------------------------------------------------------


def test_targets_of_an_intermediate_layer_are_its_layer_normed_hidden_states():
    model = tiny_model(num_hierarchies=2, level_pool_sizes=[1, 1], level_target_layers=[None, 1])
    perturb_(model.target_encoder)
    pixel_values, masks_context, masks_target = make_inputs()
    output = model(pixel_values, masks_context, masks_target)
    hidden_states, last_hidden_state = plain_encoder_states(model.target_encoder, pixel_values)
    torch.testing.assert_close(
        output.level_targets[1], layer_norm_gathered(hidden_states[1], masks_target), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        output.level_targets[0], layer_norm_gathered(last_hidden_state, masks_target), rtol=0, atol=1e-5
    )
    assert (output.level_targets[1] - output.level_targets[0]).abs().max() > 0.1


def test_unnormalized_targets_are_the_raw_hidden_states():
    model = tiny_model(num_hierarchies=1, level_target_layers=[1], normalize_targets=False)
    perturb_(model.target_encoder)
    pixel_values, masks_context, masks_target = make_inputs()
    output = model(pixel_values, masks_context, masks_target)
    hidden = plain_encoder_states(model.target_encoder, pixel_values)[0][1]
    expected = torch.stack([hidden[b, masks_target[j, b]] for j in range(2) for b in range(2)])
    torch.testing.assert_close(output.level_targets[0], expected, rtol=0, atol=1e-5)


def test_each_level_pools_targets_and_head_outputs_over_its_windows():
    model = tiny_model()  # pools 1, 2, 4 at the final output
    perturb_(model)
    pixel_values, masks_context, masks_target = make_inputs()
    output = model(pixel_values, masks_context, masks_target)
    with torch.no_grad():
        trunk = super(type(model.predictor), model.predictor).forward(
            model.forward_context(pixel_values, masks_context), masks_context, masks_target, project=False
        )  # (T * B, 15, P)
    for level, pool_size in enumerate((1, 2, 4)):
        windows = {1: 15, 2: 6, 4: 2}[pool_size]
        assert output.level_targets[level].shape == output.level_predictions[level].shape == (4, windows, 32)
        expected_targets = window_means(output.level_targets[0], (3, 5), pool_size)
        torch.testing.assert_close(output.level_targets[level], expected_targets, rtol=0, atol=1e-5)
        # the head on every patch, then the window means: the same as the pooled trunk through the head
        head = model.predictor.level_projections[level]
        with torch.no_grad():
            expected = window_means(head(trunk), (3, 5), pool_size)
        torch.testing.assert_close(output.level_predictions[level], expected, rtol=0, atol=1e-5)
    heads = model.predictor.level_projections
    assert not torch.equal(heads[0].weight, heads[1].weight)  # one head per level


def test_loss_is_the_weighted_sum_of_the_level_losses():
    model = tiny_model()
    inputs = make_inputs()
    default = model(*inputs)
    losses = default.level_losses
    assert losses.shape == (3,) and not losses.requires_grad and (losses > 0).all()
    torch.testing.assert_close(default.loss, losses[0] + 0.5 * losses[1] + 0.25 * losses[2])
    for weights in ([0.0, 2.0, 1.0], torch.tensor([3.0, 0.0, 0.5]), (1, 0, 0)):
        output = model(*inputs, level_weights=weights)
        expected = sum(float(w) * loss for w, loss in zip(weights, losses))
        torch.testing.assert_close(output.loss, expected)
        torch.testing.assert_close(output.level_losses, losses)  # the weights change the total only
    for bad in ([1.0, 0.5], [1.0, -0.5, 0.25], [1.0, float("nan"), 0.0], torch.ones(2)):
        with pytest.raises(ValueError, match="level_weights"):
            model(*inputs, level_weights=bad)


@pytest.mark.parametrize("loss_type", ["contrastive", "multiscale"])
def test_contrastive_and_multiscale_levels(loss_type):
    model = tiny_model(loss_type=loss_type, contrastive_temperature=0.2)
    output = model(*make_inputs())
    for level in range(3):
        predictions, targets = output.level_predictions[level], output.level_targets[level]
        if loss_type == "contrastive":  # every window of every block of the micro-batch in one InfoNCE
            expected = contrastive_distance(predictions.flatten(0, 1), targets.flatten(0, 1), 0.2)
        else:
            expected = F.mse_loss(predictions, targets)
        torch.testing.assert_close(output.level_losses[level], expected)


def test_outputs_and_monitors():
    model = tiny_model()
    perturb_(model.target_encoder)
    pixel_values, masks_context, masks_target = make_inputs()
    output = model(pixel_values, masks_context, masks_target)
    assert output.loss.shape == () and output.loss.dtype == torch.float32 and output.loss.requires_grad
    assert [embeddings.shape for embeddings in output.level_embeddings] == [(60, 32), (24, 32), (8, 32)]
    for level in range(3):
        assert torch.equal(output.level_embeddings[level], output.level_targets[level].flatten(0, 1))
        assert not output.level_embeddings[level].requires_grad and not output.level_predictions[level].requires_grad
        torch.testing.assert_close(
            output.level_prediction_std[level], output.level_predictions[level].flatten(0, 1).std(dim=0).mean()
        )
        torch.testing.assert_close(output.level_target_std[level], output.level_embeddings[level].std(dim=0).mean())
    assert output.prediction_std == output.level_prediction_std[0] and output.target_std == output.level_target_std[0]
    last_hidden_state = plain_encoder_states(model.target_encoder, pixel_values)[1]
    torch.testing.assert_close(output.embeddings, last_hidden_state.mean(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(output.embedding_std, F.normalize(output.embeddings, dim=-1).std(dim=0).mean())
    assert model(pixel_values, masks_context, masks_target, return_dict=False)[0].shape == ()


def test_gradients_reach_context_encoder_trunk_and_every_head_never_the_target_encoder():
    model = tiny_model().train()
    model(*make_inputs()).loss.backward()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {
        name
        for name, _ in model.named_parameters()
        if name.startswith(("context_encoder.", "predictor."))
        and name != "context_encoder.embeddings.position_embeddings"
    }
    assert "predictor.output_projection.weight" not in dict(model.named_parameters())
    for name in trainable:
        assert model.get_parameter(name).grad is not None, name
    for level in range(3):
        assert model.predictor.level_projections[level].weight.grad.abs().sum() > 0
    assert model.predictor.layers[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert model.context_encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.target_encoder.parameters())

    # a level of weight 0 gives its head a zero gradient, still present (DDP sees every parameter used)
    model.zero_grad(set_to_none=True)
    model(*make_inputs(), level_weights=[1.0, 0.0, 0.5]).loss.backward()
    assert torch.equal(model.predictor.level_projections[1].weight.grad, torch.zeros(32, 16))
    assert model.predictor.level_projections[2].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints, Auto classes, export
# ---------------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = tiny_model(level_target_layers=[None, 1, None], loss_type="contrastive")
    perturb_(model)
    model.save_pretrained(tmp_path)
    loaded, info = AutoModelForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is HJepaForPreTraining and loaded.config.level_target_layers == [None, 1, None]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys() and "predictor.level_projections.2.weight" in expected
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    frozen = {name for name, parameter in loaded.named_parameters() if not parameter.requires_grad}
    assert frozen == {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    inputs = make_inputs()
    assert torch.equal(loaded(*inputs).loss, model(*inputs).loss)


def test_auto_model_is_the_target_encoder_and_export_is_a_plain_ijepa_model(tmp_path):
    model = tiny_model()
    perturb_(model.context_encoder)  # the encoders differ, so matching features prove which one was loaded
    model.save_pretrained(tmp_path / "checkpoint")
    model.export_backbone(tmp_path / "export")
    pixel_values = make_inputs()[0]

    feature_model, info = AutoModel.from_pretrained(tmp_path / "checkpoint", output_loading_info=True)
    assert type(feature_model) is HJepaFeatureModel
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_type"] == "ijepa"
    exported, export_info = AutoModel.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert type(exported) is IJepaModel and not export_info["missing_keys"]
    with torch.no_grad():
        features = feature_model(pixel_values)
        target = model.target_encoder(pixel_values).last_hidden_state
        plain = exported(pixel_values).last_hidden_state
        context = HJepaFeatureModel.from_pretrained(tmp_path / "checkpoint", encoder="context")(pixel_values)
    assert torch.equal(features.last_hidden_state, target)
    torch.testing.assert_close(features.pooler_output, target.mean(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(plain, features.last_hidden_state, rtol=0, atol=1e-6)
    assert (context.last_hidden_state - target).abs().max() > 1e-3
    assert model.evaluation_backbone() is model.target_encoder
