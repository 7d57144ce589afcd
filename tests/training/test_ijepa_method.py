"""I-JEPA's training step: its official defaults, its schedules at every step against hand-computed values, the EMA
of the target encoder, the image and masks reaching the model, and its recipes."""

import math
from pathlib import Path

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.data import MultiBlockMaskCollator, ViewCropTransform, with_view_crops
from hf_ssl.errors import ConfigError
from hf_ssl.training import build_trainer, get_method
from hf_ssl.training.methods.ijepa import IJepaTrainingArguments, IJepaViewConfig
from hf_ssl.training.setup.recipe import Recipe
from tests.helpers import TINY_VIT, random_images
from tests.training.test_methods import TINY_SETUPS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def dataset():
    from datasets import Dataset

    return Dataset.from_dict({"image": random_images(16)})


def make(tmp_path, dataset, engine="trainer", **overrides):
    spec = get_method("ijepa")
    config, views, _ = TINY_SETUPS["ijepa"]()
    torch.manual_seed(0)
    values = dict(
        output_dir=str(tmp_path),
        engine=engine,
        per_device_train_batch_size=4,
        max_steps=7,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        save_strategy="no",
        seed=0,
    )
    values.update(overrides)
    return build_trainer(
        model=spec.pretraining_model_class(config),
        args=IJepaTrainingArguments(**values),
        view_config=views,
        train_dataset=with_view_crops(dataset, ViewCropTransform(views), seed=0),
        method="ijepa",
    )


def test_defaults_are_the_official_vith14_recipe(tmp_path):
    args = IJepaTrainingArguments(output_dir=str(tmp_path))
    assert (args.learning_rate, args.warmup_start_lr, args.min_lr, args.warmup_epochs) == (1e-3, 2e-4, 1e-6, 40.0)
    assert (args.weight_decay, args.weight_decay_end, args.max_grad_norm) == (0.04, 0.4, 0.0)
    assert (args.teacher_momentum, args.teacher_momentum_end, args.scale_learning_rate, args.optimizer) == (
        0.996,
        1.0,
        False,
        "adamw",
    )
    views = IJepaViewConfig()
    assert (views.input_size, views.min_scale, views.num_targets, views.min_keep) == (224, 0.3, 4, 10)
    assert (views.target_scale, views.target_aspect_ratio, views.context_scale) == (
        (0.15, 0.2),
        (0.75, 1.5),
        (0.85, 1.0),
    )
    group = views.to_views_config().groups["image"]
    # a random resized crop and nothing else
    assert group.number == 1 and group.scale == (0.3, 1.0) and group.flip_probability == 0.0
    assert group.color_jitter_probability == 0.0 and group.grayscale_probability == 0.0
    assert group.blur_probabilities == (0.0,) and group.solarize_probabilities == (0.0,)


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_lr_weight_decay_and_momentum_at_every_step(tmp_path, dataset, engine):
    # 16 images in batches of 4: 4 steps an epoch, 7 steps. Warmup 1 epoch from 2e-4 to 1e-3 (steps 0-3), then a
    # half cosine to 1e-6 at step 6; weight decay a half cosine 0.04 -> 0.4; momentum linear 0.9 -> 1 over 7 steps.
    trainer = make(
        tmp_path,
        dataset,
        engine,
        learning_rate=1e-3,
        warmup_start_lr=2e-4,
        warmup_epochs=1.0,
        min_lr=1e-6,
        weight_decay=0.04,
        weight_decay_end=0.4,
        teacher_momentum=0.9,
        teacher_momentum_end=1.0,
    )
    seen = []
    original = trainer.method.begin_step

    def recording(optimizer, step):
        original(optimizer, step)
        seen.append((step, [(group["lr"], group["weight_decay"]) for group in optimizer.param_groups]))

    trainer.method.begin_step = recording
    trainer.train()
    expected_lr = [2e-4, 4e-4, 6e-4, 8e-4, 1e-3, (1e-3 + 1e-6) / 2, 1e-6]
    expected_weight_decay = [
        0.04,
        0.4 - 0.18 * (1 + math.sqrt(3) / 2),
        0.13,
        0.22,
        0.31,
        0.4 - 0.18 * (1 - math.sqrt(3) / 2),
        0.4,
    ]
    assert [step for step, _ in seen] == list(range(7))
    for step, groups in seen:
        assert groups == [
            (pytest.approx(expected_lr[step]), pytest.approx(expected_weight_decay[step])),
            (pytest.approx(expected_lr[step]), 0.0),
        ], step
    momenta = [entry["teacher_momentum"] for entry in trainer.state.log_history if "teacher_momentum" in entry]
    assert momenta == pytest.approx([0.9 + 0.1 * step / 7 for step in range(7)])


def test_the_target_encoder_follows_the_context_encoder_by_the_ema(tmp_path, dataset):
    # one step at a constant momentum: target = m * target + (1 - m) * context, and only the context encoder and
    # the predictor are optimised (the position tables are fixed)
    trainer = make(
        tmp_path,
        dataset,
        max_steps=1,
        teacher_momentum=0.9,
        teacher_momentum_end=0.9,
        learning_rate=1e-2,
        min_lr=1e-2,
        warmup_epochs=0.0,
    )
    model = trainer.model
    before = {name: tensor.clone() for name, tensor in model.target_encoder.state_dict().items()}
    trained = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in model.target_encoder.parameters())
    assert id(model.context_encoder.embeddings.position_embeddings) not in trained
    trainer.train()
    context = model.context_encoder.state_dict()
    for name, value in model.target_encoder.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * context[name], rtol=1e-5, atol=1e-6, msg=name)
    moved = [
        name for name, value in model.target_encoder.state_dict().items() if (value - before[name]).abs().max() > 1e-4
    ]
    assert len(moved) > len(before) // 2
    torch.testing.assert_close(
        model.target_encoder.embeddings.position_embeddings, before["embeddings.position_embeddings"], rtol=0, atol=0
    )


def test_the_image_and_its_masks_reach_the_model(tmp_path, dataset):
    trainer = make(tmp_path, dataset, max_steps=1)
    assert isinstance(trainer.data_collator, MultiBlockMaskCollator) and (
        trainer.data_collator.height,
        trainer.data_collator.width,
    ) == (4, 4)
    seen = {}
    forward = trainer.model.forward

    def recording(**inputs):
        seen.update(inputs)
        return forward(**inputs)

    trainer.model.forward = recording
    trainer.train()
    assert seen["pixel_values"].shape == (4, 3, 16, 16) and seen["pixel_values"].dtype == torch.float32
    assert seen["masks_context"].shape[0] == 4 and seen["masks_target"].shape[:2] == (2, 4)
    context, targets = set(seen["masks_context"][0].tolist()), set(seen["masks_target"][:, 0].flatten().tolist())
    assert not context & targets  # the context block excludes the targets


def test_mask_settings_that_cannot_fit_the_patch_grid_are_refused_before_training(tmp_path):
    raw = {
        "method": "ijepa",
        "model": {"backbone_config": {**TINY_VIT, "model_type": "ijepa"}, "predictor_hidden_size": 16},
        "augmentation": {"input_size": 16},  # the official min_keep 10 on a 4 x 4 grid
        "training": {"output_dir": str(tmp_path)},
    }
    with pytest.raises(ConfigError, match="min_keep"):
        Recipe.from_dict(raw)
    raw["augmentation"] = {
        "input_size": 16,
        "min_keep": 1,
        "num_targets": 2,
        "target_scale": [0.2, 0.25],
        "context_scale": [0.6, 0.9],
    }
    assert Recipe.from_dict(raw).view_config.first.size == 16
    raw["augmentation"]["input_size"] = 32  # the encoder's image_size is 16
    with pytest.raises(ConfigError, match="augmentation.input_size"):
        Recipe.from_dict(raw)
    with pytest.raises(ValueError, match="target_scale"):
        IJepaViewConfig(target_scale=(0.3, 0.2))


@pytest.mark.parametrize(
    ("recipe", "hidden", "patch", "heads"),
    [
        ("ijepa.yaml", 1280, 14, 16),
        ("ijepa_vitb16.yaml", 768, 16, 12),
        ("ijepa_fashion_mnist_demo.yaml", 128, 4, 4),
    ],
)
def test_the_recipes_parse(recipe, hidden, patch, heads):
    parsed = Recipe.for_method("ijepa").from_yaml(RECIPES / recipe)
    config = parsed.model_config
    assert (
        parsed.method == "ijepa"
        and config.backbone_config.hidden_size == hidden
        and config.backbone_config.patch_size == patch
    )
    assert config.predictor_num_attention_heads == heads and config.backbone_config.model_type == "ijepa"
    collator = get_method("ijepa").method_class.build_collator(config, parsed.augmentation, 0)
    side = config.backbone_config.image_size // patch
    assert (collator.height, collator.width) == (side, side)
