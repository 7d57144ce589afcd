"""H-JEPA's training step: the per-level loss-weight schedules at every step, the levels' numbers in the logs and
the history plot, the weights of the step reaching the model, and its recipes."""

from pathlib import Path

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.data import ViewCropTransform, with_view_crops
from hf_ssl.errors import ConfigError
from hf_ssl.training import build_trainer, get_method
from hf_ssl.training.methods import method_for_model
from hf_ssl.training.methods.hjepa import HJepaTrainingArguments
from hf_ssl.training.setup.recipe import Recipe
from tests.helpers import random_images
from tests.training.test_methods import TINY_SETUPS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def dataset():
    from datasets import Dataset

    return Dataset.from_dict({"image": random_images(16)})


def make(tmp_path, dataset, **overrides):
    spec = get_method("hjepa")
    config, views, method_overrides = TINY_SETUPS["hjepa"]()
    torch.manual_seed(0)
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=6,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        save_strategy="no",
        seed=0,
        warmup_epochs=0.0,
        **method_overrides,
    )
    values.update(overrides)
    return build_trainer(
        model=spec.pretraining_model_class(config),
        args=HJepaTrainingArguments(**values),
        view_config=views,
        train_dataset=with_view_crops(dataset, ViewCropTransform(views), seed=0),
        method="hjepa",
    )


def test_level_weights_follow_their_schedules_into_the_model_and_the_logs(tmp_path, dataset):
    # 4 steps an epoch; level 0 (weight 1) from the start, level 1 (weight 0.5) warmed up over 0.5 epoch = 2 steps
    trainer = make(tmp_path, dataset)
    assert method_for_model(trainer.model).name == "hjepa"  # not I-JEPA, whose config H-JEPA's extends
    seen = []
    forward = trainer.model.forward

    def recording(**inputs):
        seen.append(list(inputs["level_weights"]))
        return forward(**inputs)

    trainer.model.forward = recording
    trainer.train()
    expected = [[1.0, 0.0], [1.0, 0.25], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5]]
    assert seen == [pytest.approx(weights) for weights in expected]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [[entry["level0_weight"], entry["level1_weight"]] for entry in logs] == [pytest.approx(w) for w in expected]
    for entry in logs:
        # the loss is the weighted sum of the levels' losses (averaged over the same micro-batch)
        weighted = entry["level0_weight"] * entry["level0_loss"] + entry["level1_weight"] * entry["level1_loss"]
        assert entry["loss"] == pytest.approx(weighted, rel=1e-4)
        for level in (0, 1):
            for name in ("prediction_std", "target_std", "embedding_std", "mean_l2_norm", "effective_rank"):
                assert entry[f"level{level}_{name}"] > 0, (level, name)
    history = trainer.history_callback.history
    assert {"level0_loss", "level1_effective_rank", "level1_weight"} <= set(history.metric_names())


def test_a_warmup_list_of_the_wrong_length_is_refused(tmp_path, dataset):
    with pytest.raises(
        ValueError, match=r"level_weight_warmup_epochs has 3 values \(\[0.0, 1.0, 2.0\]\) but the model has 2 levels"
    ):
        make(tmp_path, dataset, level_weight_warmup_epochs=[0.0, 1.0, 2.0]).train()
    with pytest.raises(ValueError, match="level_weight_warmup_epochs must be a list of epochs >= 0"):
        HJepaTrainingArguments(output_dir=str(tmp_path), level_weight_warmup_epochs=[0.0, -1.0])


def test_recipe_errors_name_the_level_keys(tmp_path):
    raw = {
        "method": "hjepa",
        "model": {
            "backbone_config": {
                "model_type": "ijepa",
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "patch_size": 4,
                "image_size": 16,
            },
            "predictor_hidden_size": 16,
            "num_hierarchies": 2,
            "level_pool_sizes": [1, 2, 4],
        },
        "augmentation": {
            "input_size": 16,
            "min_keep": 1,
            "num_targets": 2,
            "target_scale": [0.2, 0.25],
            "context_scale": [0.6, 0.9],
        },
        "training": {"output_dir": str(tmp_path)},
    }
    with pytest.raises(ConfigError, match="level_pool_sizes"):
        Recipe.from_dict(raw).model_config


def test_a_warmup_list_of_the_wrong_length_stops_the_script_before_data_or_model(tmp_path, monkeypatch, capsys):
    from hf_ssl.commands.pretrain import main

    def never(*args, **kwargs):
        raise AssertionError("the recipe check must come before the data and the model")

    monkeypatch.setattr(Recipe, "load_datasets", never)
    monkeypatch.setattr(Recipe, "build_model", never)
    arguments = ["--config", str(RECIPES / "hjepa_fashion_mnist_demo.yaml"), f"training.output_dir={tmp_path}"]
    assert main([*arguments, "training.level_weight_warmup_epochs=[0, 1]"], method="hjepa") == 2
    error = capsys.readouterr().err
    assert error.startswith(
        "error: training.level_weight_warmup_epochs has 2 values ([0.0, 1.0]) but the model has 3 levels"
    )
    assert "model.num_hierarchies" in error and "Traceback" not in error
    # the same list fits a model of 2 levels
    two_levels = [
        "model.num_hierarchies=2",
        "model.level_pool_sizes=[1, 2]",
        "model.level_target_layers=[null, null]",
        "model.level_loss_weights=[1.0, 0.5]",
    ]
    with pytest.raises(AssertionError, match="the recipe check must come before"):
        main([*arguments, *two_levels, "training.level_weight_warmup_epochs=[0, 1]"], method="hjepa")


@pytest.mark.parametrize(
    ("recipe", "hidden", "levels"), [("hjepa.yaml", 768, 3), ("hjepa_fashion_mnist_demo.yaml", 128, 3)]
)
def test_the_recipes_parse(recipe, hidden, levels):
    parsed = Recipe.for_method("hjepa").from_yaml(RECIPES / recipe)
    config = parsed.model_config
    assert (
        parsed.method == "hjepa" and config.backbone_config.hidden_size == hidden and config.num_hierarchies == levels
    )
    assert config.level_pool_sizes == [1, 2, 4] and config.level_loss_weights == [1.0, 0.5, 0.25]
    assert len(parsed.training.level_weight_warmup_epochs) == levels
    assert parsed.data.train_val_split is not None
