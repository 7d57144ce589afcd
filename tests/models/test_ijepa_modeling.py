"""IJepaForPreTraining / IJepaPredictor / IJepaFeatureModel through the public API, and the exported encoder."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForPreTraining, IJepaConfig, IJepaModel

from hf_ssl import IJepaFeatureModel, IJepaForPreTraining, IJepaLoss, IJepaPretrainingConfig
from hf_ssl.models.ijepa import sincos_position_embeddings_2d
from tests.helpers import TINY_VIT, plain_transformers_features

TINY_IJEPA = {**TINY_VIT, "model_type": "ijepa"}  # 16 px images, 4 px patches: a 4 x 4 grid of 16 patches
NUM_PATCHES = 16


def tiny_config(**overrides):
    values = dict(backbone_config=dict(TINY_IJEPA), predictor_hidden_size=16, predictor_num_hidden_layers=2)
    values.update(overrides)
    return IJepaPretrainingConfig(**values)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return IJepaForPreTraining(tiny_config(**overrides))


def make_inputs(batch_size=3, num_targets=2, num_context=9, num_target_patches=4, seed=1):
    """Images, one context block per image and `num_targets` target blocks, as index tensors (distinct, sorted)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, 16, 16, generator=generator)
    masks_context = torch.stack(
        [torch.randperm(NUM_PATCHES, generator=generator)[:num_context].sort().values for _ in range(batch_size)]
    )
    masks_target = torch.stack(
        [
            torch.stack(
                [
                    torch.randperm(NUM_PATCHES, generator=generator)[:num_target_patches].sort().values
                    for _ in range(batch_size)
                ]
            )
            for _ in range(num_targets)
        ]
    )
    return pixel_values, masks_context, masks_target


def perturb_(module, seed=3):
    """Move every parameter away from its init, so a test can tell loaded weights from freshly initialised ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def plain_ijepa_copy(encoder):
    """A transformers IJepaModel built on its own, with `encoder`'s weights."""
    plain = IJepaModel(IJepaConfig(**{k: v for k, v in TINY_IJEPA.items() if k != "model_type"}))
    plain.load_state_dict(encoder.state_dict())
    return plain.eval()


def patch_pixels(row, column):
    """Index of the 4 x 4 pixel square of patch (row, column)."""
    return (slice(None), slice(None), slice(4 * row, 4 * row + 4), slice(4 * column, 4 * column + 4))


# ---------------------------------------------------------------------------------------------------------------------
# Context encoder: dropping the masked patches
# ---------------------------------------------------------------------------------------------------------------------


def test_context_path_keeping_every_token_is_the_plain_ijepa_model():
    model = tiny_model()
    perturb_(model.context_encoder)
    pixel_values, _, _ = make_inputs()
    every_token = torch.arange(NUM_PATCHES).expand(3, NUM_PATCHES)
    with torch.no_grad():
        context = model.forward_context(pixel_values, every_token)
        plain = plain_ijepa_copy(model.context_encoder)(pixel_values).last_hidden_state
    torch.testing.assert_close(context, plain, rtol=0, atol=1e-6)


def test_context_encoder_runs_only_on_the_kept_tokens():
    model = tiny_model()
    perturb_(model.context_encoder)
    pixel_values, masks_context, _ = make_inputs(num_context=7)
    plain = plain_ijepa_copy(model.context_encoder)
    with torch.no_grad():
        context = model.forward_context(pixel_values, masks_context)
        expected = []
        for image, kept in zip(pixel_values, masks_context):  # image by image: embed, keep, then the layers
            tokens = plain.embeddings(image[None])[0, kept][None]
            for layer in plain.layers:
                tokens = layer(tokens)
            expected.append(plain.layernorm(tokens)[0])
        full_image = plain(pixel_values).last_hidden_state
    assert context.shape == (3, 7, 32)
    torch.testing.assert_close(context, torch.stack(expected), rtol=0, atol=1e-6)
    # not the full-image tokens at those positions: the dropped patches were not attended to
    kept_of_full = torch.stack([full_image[b, masks_context[b]] for b in range(3)])
    assert (context - kept_of_full).abs().max() > 1e-3


def test_pixels_of_a_dropped_patch_do_not_change_the_context_tokens():
    model = tiny_model()
    pixel_values, _, _ = make_inputs(batch_size=1)
    kept = torch.tensor([[0, 1, 2, 4, 5, 6, 9, 10, 15]])  # patch 3 = (row 0, column 3) is dropped, patch 5 kept
    changed_dropped, changed_kept = pixel_values.clone(), pixel_values.clone()
    changed_dropped[patch_pixels(0, 3)] += 5.0
    changed_kept[patch_pixels(1, 1)] += 5.0
    with torch.no_grad():
        reference = model.forward_context(pixel_values, kept)
        assert torch.equal(model.forward_context(changed_dropped, kept), reference)
        assert (model.forward_context(changed_kept, kept) - reference).abs().max() > 1e-3
        # with every patch kept (the full image, as the target encoder sees it) the same change moves the output
        every_token = torch.arange(NUM_PATCHES)[None]
        assert (
            model.forward_context(changed_dropped, every_token) - model.forward_context(pixel_values, every_token)
        ).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Targets and the block-major layout
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize_targets", [True, False])
def test_targets_are_block_major_and_layer_normed(normalize_targets):
    model = tiny_model(normalize_targets=normalize_targets)
    perturb_(model.target_encoder)
    pixel_values, _, _ = make_inputs(batch_size=2)
    masks_target = torch.tensor([[[0, 5, 10], [1, 2, 3]], [[15, 14, 4], [8, 9, 0]]])  # (T=2, B=2, K=3)
    with torch.no_grad():
        targets, embeddings = model.forward_target(pixel_values, masks_target)
        hidden = plain_ijepa_copy(model.target_encoder)(pixel_values).last_hidden_state  # (2, 16, 32)
    assert targets.shape == (4, 3, 32) and targets.dtype == torch.float32
    if normalize_targets:  # no affine: mean 0 and (biased) variance 1 over the features, up to eps
        mean = hidden.mean(-1, keepdim=True)
        hidden = (hidden - mean) / torch.sqrt(hidden.var(-1, unbiased=False, keepdim=True) + 1e-5)
    # row j * B + b = block j of image b, written out
    expected = torch.stack(
        [
            hidden[0, [0, 5, 10]],
            hidden[1, [1, 2, 3]],  # block 0 of images 0, 1
            hidden[0, [15, 14, 4]],
            hidden[1, [8, 9, 0]],  # block 1 of images 0, 1
        ]
    )
    torch.testing.assert_close(targets, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        embeddings, plain_ijepa_copy(model.target_encoder)(pixel_values).last_hidden_state.mean(1)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------------------------------------------------


def test_sincos_position_embeddings_by_hand():
    # D = 8: two frequencies w = (1, 1/100); patch (row r, column c) -> sin(c w), cos(c w), sin(r w), cos(r w)
    table = sincos_position_embeddings_2d(8, (2, 3))
    assert table.shape == (6, 8) and table.dtype == torch.float32
    for row in range(2):
        for column in range(3):
            expected = []
            for position in (column, row):
                expected += [
                    math.sin(position),
                    math.sin(position / 100),
                    math.cos(position),
                    math.cos(position / 100),
                ]
            torch.testing.assert_close(table[row * 3 + column], torch.tensor(expected), rtol=0, atol=1e-7)
    assert table[4].tolist()[:2] == pytest.approx([math.sin(1), math.sin(0.01)])  # patch (1, 1)


def test_predictor_position_table_is_a_saved_buffer_and_encoder_tables_are_fixed():
    model = tiny_model()
    predictor_table = model.predictor.position_embeddings
    assert "predictor.position_embeddings" in model.state_dict()
    assert "predictor.position_embeddings" not in dict(model.named_parameters())
    torch.testing.assert_close(predictor_table, sincos_position_embeddings_2d(16, (4, 4)), rtol=0, atol=0)
    for encoder in (model.context_encoder, model.target_encoder):
        table = encoder.embeddings.position_embeddings
        assert not table.requires_grad
        torch.testing.assert_close(table[0], sincos_position_embeddings_2d(32, (4, 4)), rtol=0, atol=0)

    learned = tiny_model(fixed_position_embeddings=False).context_encoder.embeddings.position_embeddings
    assert learned.requires_grad and not torch.allclose(learned[0], sincos_position_embeddings_2d(32, (4, 4)))


def official_apply_masks(tokens, masks):
    """facebookresearch/ijepa src/masks/utils.py apply_masks, written out: masks is a list of (B, K) index tensors;
    the gathered tokens of each are concatenated along the batch."""
    return torch.cat([torch.stack([tokens[b, mask[b]] for b in range(len(mask))]) for mask in masks])


def test_predictor_follows_the_official_order():
    # The official predictor with its one context block and a list of T target masks: x.repeat(T) for the context,
    # apply_masks (block after block) for the mask tokens' positions; the targets by apply_masks too.
    model = tiny_model()
    perturb_(model)
    pixel_values, masks_context, masks_target = make_inputs(batch_size=3, num_targets=3)
    predictor = model.predictor
    with torch.no_grad():
        context = model.forward_context(pixel_values, masks_context)
        predictions = predictor(context, masks_context, masks_target)

        batch_size, num_blocks = 3, 3
        table = predictor.position_embeddings[None].repeat(batch_size, 1, 1)
        x = predictor.input_projection(context) + official_apply_masks(table, [masks_context])
        position = official_apply_masks(table, list(masks_target))
        queries = predictor.mask_token.repeat(position.shape[0], position.shape[1], 1) + position
        x = torch.cat([x.repeat(num_blocks, 1, 1), queries], dim=1)
        for layer in predictor.layers:
            x = layer(x)
        expected = predictor.output_projection(predictor.layernorm(x)[:, context.shape[1] :])

        hidden = F.layer_norm(model.target_encoder(pixel_values).last_hidden_state, (32,))
        expected_targets = official_apply_masks(hidden, list(masks_target))
        targets, _ = model.forward_target(pixel_values, masks_target)
    assert predictions.shape == (num_blocks * batch_size, 4, 32)
    torch.testing.assert_close(predictions, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(targets, expected_targets, rtol=0, atol=1e-6)


def test_predictions_depend_on_the_mask_token_and_on_the_target_positions():
    model = tiny_model()
    pixel_values, masks_context, masks_target = make_inputs()
    with torch.no_grad():
        context = model.forward_context(pixel_values, masks_context)
        reference = model.predictor(context, masks_context, masks_target)
        moved = model.predictor(context, masks_context, (masks_target + 1) % NUM_PATCHES)
        # (a constant shift would not do: every LayerNorm removes it)
        model.predictor.mask_token.add_(torch.randn(model.predictor.mask_token.shape))
        other_token = model.predictor(context, masks_context, masks_target)
    assert (moved - reference).abs().max() > 1e-4
    assert (other_token - reference).abs().max() > 1e-4


def test_predictor_init_is_the_official_one():
    config = tiny_config(predictor_hidden_size=256, predictor_num_hidden_layers=1, predictor_num_attention_heads=4)
    torch.manual_seed(0)
    predictor = IJepaForPreTraining(config).predictor
    for linear in (
        predictor.input_projection,
        predictor.output_projection,
        predictor.layers[0].mlp.fc1,
        predictor.layers[0].attention.q_proj,
    ):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert predictor.mask_token.std().item() == pytest.approx(0.02, rel=0.15)
    norm = predictor.layers[0].layernorm_before
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(
        norm.bias, torch.zeros_like(norm.bias)
    )
    assert predictor.layernorm.eps == 1e-6 and predictor.layers[0].mlp.fc1.out_features == 1024


# ---------------------------------------------------------------------------------------------------------------------
# Forward, backward, EMA pairs
# ---------------------------------------------------------------------------------------------------------------------


def test_forward_outputs_loss_and_detached_monitors():
    model = tiny_model()
    pixel_values, masks_context, masks_target = make_inputs()
    output = model(pixel_values, masks_context, masks_target)
    assert output.loss.shape == () and output.loss.dtype == torch.float32 and output.loss.requires_grad
    torch.testing.assert_close(output.loss, IJepaLoss("smooth_l1")(output.predictions, output.targets))
    assert output.predictions.shape == output.targets.shape == (6, 4, 32)
    assert output.embeddings.shape == (3, 32)
    for name in ("prediction_std", "target_std", "embedding_std", "embeddings", "predictions", "targets"):
        assert not output[name].requires_grad, name
    torch.testing.assert_close(output.prediction_std, output.predictions.reshape(-1, 32).std(dim=0).mean())
    torch.testing.assert_close(output.target_std, output.targets.reshape(-1, 32).std(dim=0).mean())
    assert 0 < output.embedding_std.item() < 1
    assert model(pixel_values, masks_context, masks_target, return_dict=False)[0].shape == ()

    mse = tiny_model(loss_type="mse")(pixel_values, masks_context, masks_target)
    torch.testing.assert_close(mse.loss, F.mse_loss(mse.predictions, mse.targets))


def test_gradients_reach_context_encoder_and_predictor_not_the_target_encoder():
    model = tiny_model().train()
    output = model(*make_inputs())
    output.loss.backward()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {
        name
        for name, _ in model.named_parameters()
        if name.startswith(("context_encoder.", "predictor."))
        and name != "context_encoder.embeddings.position_embeddings"
    }
    assert [name for name in trainable if model.get_parameter(name).grad is None] == []
    assert model.context_encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.target_encoder.parameters())
    assert model.predictor.mask_token.grad.abs().sum() > 0


def test_teacher_student_pairs_align_target_and_context_which_start_equal():
    model = tiny_model()
    targets, contexts = model.teacher_student_parameter_pairs()
    assert len(targets) == len(contexts) == len(list(model.context_encoder.parameters()))
    target_ids = {id(parameter) for parameter in model.target_encoder.parameters()}
    assert all(id(parameter) in target_ids for parameter in targets)
    for target, context in zip(targets, contexts):
        assert target.shape == context.shape and target is not context
        assert torch.equal(target, context)
        assert not target.requires_grad
    assert model.evaluation_backbone() is model.target_encoder
    assert model.evaluation_backbone("context") is model.context_encoder
    assert model.evaluation_backbone_prefix == "target_encoder."


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, c, t: (x.to(torch.uint8), c, t), "pixel_values must be a float"),
        (lambda x, c, t: (x[0], c, t), "pixel_values must be a float"),
        (lambda x, c, t: (x[..., :12, :12], c, t), "image_size 16"),
        (lambda x, c, t: (x, c.int(), t), "masks_context must be an int64"),
        (lambda x, c, t: (x, c[None], t), "masks_context must be an int64"),
        (lambda x, c, t: (x, c[:2], t), "masks_context must be .* batch size of pixel_values \\(3\\)"),
        (lambda x, c, t: (x, c, t[0]), "masks_target must be an int64"),
        (lambda x, c, t: (x, c, t[:, :2]), "masks_target must be .* batch size"),
        (lambda x, c, t: (x, c, t[:0]), "at least one patch"),
        (lambda x, c, t: (x, c + NUM_PATCHES, t), "patch indices in \\[0, 16\\)"),
        (lambda x, c, t: (x, c, t - NUM_PATCHES), "patch indices in \\[0, 16\\)"),
    ],
)
def test_input_validation(change, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(*change(*make_inputs()))


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints and Auto classes
# ---------------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_is_bit_exact_and_keeps_the_frozen_parameters(tmp_path):
    model = tiny_model()
    perturb_(model)
    model.save_pretrained(tmp_path)
    loaded, info = AutoModelForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, IJepaForPreTraining)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    frozen = {name for name, parameter in loaded.named_parameters() if not parameter.requires_grad}
    assert frozen == {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert "context_encoder.embeddings.position_embeddings" in frozen


def test_checkpoint_without_target_encoder_copies_the_context_encoder(tmp_path):
    model = tiny_model()
    perturb_(model)
    from safetensors.torch import save_file

    model.save_pretrained(tmp_path)
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("target_encoder.")}
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = IJepaForPreTraining.from_pretrained(tmp_path)
    for target, context in zip(*loaded.teacher_student_parameter_pairs()):
        assert torch.equal(target, context)
    assert torch.equal(loaded.context_encoder.layers[0].mlp.fc1.weight, model.context_encoder.layers[0].mlp.fc1.weight)


def test_auto_model_loads_the_target_encoder_or_the_context_encoder(tmp_path):
    model = tiny_model()
    perturb_(model)
    model.save_pretrained(tmp_path / "checkpoint")
    pixel_values, _, _ = make_inputs()

    feature_model, info = AutoModel.from_pretrained(tmp_path / "checkpoint", output_loading_info=True)
    assert isinstance(feature_model, IJepaFeatureModel)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    context_model = IJepaFeatureModel.from_pretrained(tmp_path / "checkpoint", encoder="context")
    with torch.no_grad():
        output = feature_model(pixel_values)
        expected = model.target_encoder(pixel_values).last_hidden_state
        context_output = context_model(pixel_values)
    assert torch.equal(output.last_hidden_state, expected)
    torch.testing.assert_close(output.pooler_output, expected.mean(dim=1), rtol=0, atol=0)
    assert torch.equal(context_output.last_hidden_state, model.context_encoder(pixel_values).last_hidden_state)

    # a feature model saves as itself, whichever encoder it was loaded from
    context_model.save_pretrained(tmp_path / "features")
    reloaded = AutoModel.from_pretrained(tmp_path / "features")
    assert set(reloaded.state_dict()) == {f"backbone.{name}" for name in model.context_encoder.state_dict()}
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).last_hidden_state, context_output.last_hidden_state)
    with pytest.raises(ValueError, match="`encoder`"):
        IJepaFeatureModel.from_pretrained(tmp_path / "checkpoint", encoder="student")


# ---------------------------------------------------------------------------------------------------------------------
# Export to plain transformers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(checkpoint dir, {encoder: (export dir, features computed without hf_ssl)}), one subprocess for both."""
    root = tmp_path_factory.mktemp("ijepa_export")
    model = tiny_model()
    perturb_(model.context_encoder)  # the encoders differ, so matching features prove which one was exported
    checkpoint_dir = root / "checkpoint"
    model.save_pretrained(checkpoint_dir)
    directories = {"target": root / "target_export", "context": root / "context_export"}
    model.export_backbone(directories["target"], image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    model.export_backbone(directories["context"], encoder="context")
    plain = plain_transformers_features(list(directories.values()), "RGB", cwd=root)
    return checkpoint_dir, {encoder: (path, plain[path]) for encoder, path in directories.items()}


def test_exported_target_encoder_is_a_plain_ijepa_model_matching_the_feature_model(exports):
    checkpoint_dir, by_encoder = exports
    export_dir, plain = by_encoder["target"]
    assert json.loads((export_dir / "config.json").read_text())["model_type"] == "ijepa"
    assert plain["model_class"] == "IJepaModel"
    assert plain["loading_info"]["missing_keys"] == [] and plain["loading_info"]["unexpected_keys"] == []
    assert plain["pixel_values"].shape == (1, 3, 16, 16)
    assert plain["pooler_output"] is None  # a plain IJepaModel has no pooler: the embedding is the token mean

    feature_model = AutoModel.from_pretrained(checkpoint_dir)
    with torch.no_grad():
        features = feature_model(plain["pixel_values"])
    torch.testing.assert_close(plain["last_hidden_state"], features.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(features.pooler_output, plain["last_hidden_state"].mean(dim=1), rtol=0, atol=1e-6)


def test_exported_context_encoder_is_the_context_encoder(exports):
    checkpoint_dir, by_encoder = exports
    _, plain = by_encoder["context"]
    assert plain["model_class"] == "IJepaModel" and plain["loading_info"]["missing_keys"] == []
    context_model = IJepaFeatureModel.from_pretrained(checkpoint_dir, encoder="context")
    with torch.no_grad():
        features = context_model(plain["pixel_values"])
    torch.testing.assert_close(plain["last_hidden_state"], features.last_hidden_state, rtol=0, atol=1e-6)
    with torch.no_grad():
        target_features = AutoModel.from_pretrained(checkpoint_dir)(plain["pixel_values"])
    assert (target_features.last_hidden_state - features.last_hidden_state).abs().max() > 1e-3
