"""BYOL's training step: its paper defaults, its asymmetric views, the EMA of the target network during training and
the momentum schedule against hand-computed values, and its recipes."""

from pathlib import Path

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.data import ViewCropTransform, with_view_crops
from hf_ssl.errors import ConfigError
from hf_ssl.training import build_trainer, get_method
from hf_ssl.training.methods.byol import ByolTrainingArguments, ByolViewConfig
from hf_ssl.training.setup.recipe import Recipe
from tests.helpers import TINY_VIT, random_images
from tests.training.test_methods import TINY_SETUPS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_defaults_are_the_paper_recipe(tmp_path):
    args = ByolTrainingArguments(output_dir=str(tmp_path))
    assert (args.optimizer, args.learning_rate, args.scale_learning_rate, args.warmup_epochs) == (
        "lars",
        0.45,
        True,
        10.0,
    )
    assert (args.weight_decay, args.max_grad_norm, args.teacher_momentum, args.teacher_momentum_end) == (
        1e-6,
        0.0,
        0.99,
        1.0,
    )
    group = ByolViewConfig().to_views_config().groups["views"]
    assert (group.number, group.size, group.scale, group.interpolation) == (2, 224, (0.08, 1.0), "bicubic")
    assert (group.flip_probability, group.color_jitter_probability, group.grayscale_probability) == (0.5, 0.8, 0.2)
    assert (group.brightness, group.contrast, group.saturation, group.hue) == (0.4, 0.4, 0.2, 0.1)
    assert group.blur_probabilities == (1.0, 0.1) and group.solarize_probabilities == (0.0, 0.2)
    assert group.blur_sigma == (0.1, 2.0)


def test_per_view_probabilities_are_pairs_and_errors_name_the_key(tmp_path):
    group = ByolViewConfig(gaussian_blur=(0.5, 0.0), solarize_prob=(0.3, 0.1)).to_views_config().groups["views"]
    assert group.blur_probabilities == (0.5, 0.0) and group.solarize_probabilities == (0.3, 0.1)
    with pytest.raises(ValueError, match=r"gaussian_blur must be a \(view 1, view 2\) pair"):
        ByolViewConfig(gaussian_blur=0.5)
    with pytest.raises(ValueError, match="solarize_prob must be a probability"):
        ByolViewConfig(solarize_prob=(0.0, 1.5))
    raw = {
        "method": "byol",
        "model": {"backbone_config": dict(TINY_VIT)},
        "augmentation": {"input_size": 16, "gaussian_blur": [0.2, 0.3]},
        "training": {"output_dir": str(tmp_path)},
    }
    assert Recipe.from_dict(raw).view_config.first.blur_probabilities == (0.2, 0.3)
    raw["augmentation"]["gaussian_blur"] = 0.5
    with pytest.raises(ConfigError, match=r"augmentation\.gaussian_blur"):
        Recipe.from_dict(raw)


def test_momentum_is_a_cosine_from_the_base_to_one(tmp_path):
    spec = get_method("byol")
    config, views, _ = TINY_SETUPS["byol"]()
    method = spec.method_class(
        spec.pretraining_model_class(config),
        views,
        seed=0,
        process_index=0,
        max_consecutive_nonfinite_steps=3,
        reduce=lambda t: t,
    )
    method.build_schedules(
        ByolTrainingArguments(output_dir=str(tmp_path)), total_steps=4, steps_per_epoch=2, total_batch_size=8
    )
    # 1 - (1 - 0.99) (1 + cos(pi t / 3)) / 2 at steps t = 0..3: 1 at the last step
    expected = [0.99, 1 - 0.005 * 1.5, 1 - 0.005 * 0.5, 1.0]
    assert [method.schedule_logs(step)["teacher_momentum"] for step in range(4)] == pytest.approx(expected)


def test_the_target_network_follows_the_online_one_by_the_ema(tmp_path):
    # one step at a constant momentum: target = m * target + (1 - m) * online for the backbone and projector, the
    # predictor has no target, and only the online network and the predictor are optimised
    from datasets import Dataset

    spec = get_method("byol")
    config, views, _ = TINY_SETUPS["byol"]()
    torch.manual_seed(0)
    args = ByolTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        save_strategy="no",
        seed=0,
        learning_rate=0.3,
        scale_learning_rate=False,
        warmup_epochs=0.0,
        min_lr=0.3,
        teacher_momentum=0.9,
        teacher_momentum_end=0.9,
    )
    trainer = build_trainer(
        model=spec.pretraining_model_class(config),
        args=args,
        view_config=views,
        method="byol",
        train_dataset=with_view_crops(
            Dataset.from_dict({"image": random_images(8)}), ViewCropTransform(views), seed=0
        ),
    )
    model = trainer.model
    trained = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in model.target.parameters())
    assert all(id(p) in trained for p in [*model.online.parameters(), *model.predictor.parameters()])
    before = {name: tensor.clone() for name, tensor in model.target.named_parameters()}
    trainer.train()
    online = dict(model.online.named_parameters())
    for name, value in model.target.named_parameters():
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * online[name], rtol=1e-5, atol=1e-6, msg=name)
    moved = [name for name, value in model.target.named_parameters() if (value - before[name]).abs().max() > 1e-5]
    assert len(moved) > len(before) // 2
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert {"target_projection_std", "embedding_std", "teacher_momentum"} <= set(logged)


@pytest.mark.parametrize(
    ("recipe", "backbone_type", "projection"),
    [("byol.yaml", "resnet", (4096, 256, 4096)), ("byol_fashion_mnist_demo.yaml", "vit", (256, 64, 256))],
)
def test_the_recipes_parse(recipe, backbone_type, projection):
    parsed = Recipe.for_method("byol").from_yaml(RECIPES / recipe)
    config = parsed.model_config
    assert parsed.method == "byol" and config.backbone_config.model_type == backbone_type
    assert (config.projection_hidden_dim, config.projection_dim, config.prediction_hidden_dim) == projection
    group = parsed.view_config.first
    assert group.blur_probabilities == (1.0, 0.1) and group.solarize_probabilities == (0.0, 0.2)
    assert type(parsed.training).__name__ == "ByolTrainingArguments" and parsed.training.teacher_momentum == 0.99
