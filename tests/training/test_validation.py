"""val_loss: the method's loss on a held-out split, every N steps, on both engines; it leaves training exactly as it
would be without it, gives the same number for the same weights, and drives early stopping and best-N retention."""

import json

import pytest
import torch

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.data import ViewCropTransform, with_view_crops
from hf_ssl.training import build_trainer, get_method
from hf_ssl.training.engines.validation import ValidationLoss
from tests.training.test_methods import TINY_SETUPS, state_of


@pytest.fixture(scope="module")
def splits():
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    from tests.helpers import random_images

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["vertical", "horizontal"])})
    images = random_images(34, seed=3)
    train = Dataset.from_dict({"image": images[:24], "label": [i % 2 for i in range(24)]}, features=features)
    held_out = Dataset.from_dict({"image": images[24:], "label": [i % 2 for i in range(10)]}, features=features)
    return train, held_out


def build(method, engine, output_dir, splits, with_validation=True, val_eval_steps=1, **overrides):
    spec = get_method(method)
    config, view_config, method_overrides = TINY_SETUPS[method]()
    torch.manual_seed(0)
    model = spec.pretraining_model_class(config)
    values = dict(
        output_dir=str(output_dir),
        engine=engine,
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        scale_learning_rate=False,
        warmup_epochs=0.0,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        seed=0,
        save_strategy="steps",
        save_steps=2,
    )
    values.update(method_overrides)
    values.update(overrides)
    args = spec.training_arguments_class(**values)
    transform = ViewCropTransform(view_config)
    validation = None
    if with_validation:
        validation = ValidationLoss(
            with_view_crops(splits[1], transform, seed=0),
            spec.method_class.build_collator(config, view_config, 0),
            batch_size=4,
        )
    return build_trainer(
        model=model,
        args=args,
        view_config=view_config,
        method=method,
        train_dataset=with_view_crops(splits[0], transform, seed=0),
        validation=validation,
        val_eval_steps=val_eval_steps,
    )


def val_losses(trainer):
    return [(entry["step"], entry["val_loss"]) for entry in trainer.state.log_history if "val_loss" in entry]


def without_history_plot(trainer, monkeypatch):
    """``trainer`` with history.png left out: matplotlib takes most of a tiny run's time (test_history tests the
    plot)."""
    monkeypatch.setattr(type(trainer.history), "plot", lambda history, *args, **kwargs: None)
    return trainer


# every method on both engines: the engines call the same ValidationLoss at different moments
@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
@pytest.mark.parametrize("method", sorted(TINY_SETUPS))
def test_validation_leaves_training_unchanged_and_logs_val_loss(tmp_path, splits, method, engine, monkeypatch):
    # DINO: the forward accumulates center statistics; I-JEPA and H-JEPA: the collator draws masks; BYOL, SimCLR and
    # VICReg: a forward in training mode would move BatchNorm statistics (BYOL's target's too). None of it may leak
    # into training
    plain = without_history_plot(build(method, engine, tmp_path / "plain", splits, with_validation=False), monkeypatch)
    plain.train()
    validated = without_history_plot(build(method, engine, tmp_path / "validated", splits), monkeypatch)
    validated.train()
    expected = state_of(plain.model)
    for name, tensor in state_of(validated.model).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=f"{method} {engine}: {name}")
    logged = val_losses(validated)
    assert [step for step, _ in logged] == [1, 2, 3, 4]  # every step, the last one by val_at_end
    values = [value for _, value in logged]
    assert all(value > 0 for value in values) and len(set(values)) == 4, values
    assert validated.last_validation_metrics == {"val_loss": values[-1]}
    # history.json gets every evaluation, the one at the end of training included
    saved = json.loads((tmp_path / "validated" / "history.json").read_text())["steps"]
    assert [(entry["step"], entry["val_loss"]) for entry in saved if "val_loss" in entry] == logged
    assert validated.model.training  # back in training mode


def test_the_same_weights_give_the_same_val_loss_and_it_is_the_mean_over_images(tmp_path, splits):
    trainer = build("ijepa", "trainer", tmp_path, splits)
    evaluator, method, model = trainer.evaluations.validation, trainer.method, trainer.model
    first = evaluator(method, model, step=0, device="cpu")
    assert evaluator(method, model, step=0, device="cpu") == first
    # by hand: the image-weighted mean of the batches' losses (10 images: batches of 4, 4, 2)
    losses, counts = [], []
    for index, batch in enumerate(evaluator.loader(0, 1)):
        import numpy as np

        from hf_ssl.training.engines.validation import VALIDATION_STREAM

        seed = int(
            np.random.SeedSequence((method.seed, 0, VALIDATION_STREAM, index)).generate_state(1, np.uint64)[0] >> 1
        )
        model.eval()
        with torch.no_grad():
            loss, images = method.validation_loss(model, batch, 0, seed)
        losses.append(float(loss)), counts.append(images)
    assert counts == [4, 4, 2]
    assert first["val_loss"] == pytest.approx(sum(loss * count for loss, count in zip(losses, counts)) / 10, rel=1e-6)
    # the weights move: so does val_loss
    with torch.no_grad():
        for parameter in model.context_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        for parameter in model.predictor.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    assert evaluator(method, model, step=0, device="cpu")["val_loss"] != first["val_loss"]


def test_each_process_gets_an_equal_share_in_order(splits):
    evaluator = ValidationLoss(list(range(10)), collator=None, batch_size=2)
    shares = [evaluator.loader(rank, 3).dataset.indices for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # image 9 does not divide evenly: left out everywhere
    with pytest.raises(ValueError, match="fewer than the 12 processes"):
        evaluator.loader(0, 12)


@pytest.mark.parametrize(
    ("method", "engine"),
    [
        ("ijepa", "trainer"),
        ("ijepa", "accelerate"),
        ("byol", "trainer"),
        ("byol", "accelerate"),
        ("vicreg", "trainer"),
        ("vicreg", "accelerate"),
    ],
)
def test_val_loss_drives_early_stopping_and_best_checkpoints(tmp_path, splits, method, engine):
    # greater_is_better is inferred False for a metric named *loss; a min_delta no change can reach stops the run
    # after patience + 1 evaluations, and the checkpoints record their val_loss
    trainer = build(
        method,
        engine,
        tmp_path,
        splits,
        max_steps=10,
        metric_for_best_model="val_loss",
        early_stopping_patience=2,
        early_stopping_min_delta=100.0,
        save_best_total_limit=1,
        save_steps=1,
        save_total_limit=1,
    )
    assert trainer.args.greater_is_better is False
    trainer.train()
    assert trainer.run_control.stop_reason == "early_stopping"
    assert trainer.state.global_step == 3
    records = {
        path.parent.name: json.loads(path.read_text()) for path in tmp_path.glob("checkpoint-*/hf_ssl_state.json")
    }
    logged = dict(val_losses(trainer))
    assert records and all(record["metrics"]["val_loss"] == logged[record["step"]] for record in records.values())
    best = min(logged, key=logged.get)
    assert f"checkpoint-{best}" in records  # the best by the lowest val_loss is kept beside the last one


def test_recipe_validation_splits(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    from hf_ssl.errors import ConfigError
    from hf_ssl.training.setup.recipe import Recipe
    from tests.helpers import TINY_VIT, random_images

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    images = random_images(30)
    DatasetDict(
        {
            "train": Dataset.from_dict({"image": images[:20], "label": [i % 2 for i in range(20)]}, features=features),
            "validation": Dataset.from_dict(
                {"image": images[20:], "label": [i % 2 for i in range(10)]}, features=features
            ),
        }
    ).save_to_disk(tmp_path / "data")
    raw = {
        "method": "simclr",
        "model": {"backbone_config": dict(TINY_VIT)},
        "augmentation": {"input_size": 16},
        "data": {"dataset": str(tmp_path / "data"), "eval_split": None, "train_val_split": 0.25},
        "training": {"output_dir": str(tmp_path / "out"), "seed": 0},
    }
    data = Recipe.from_dict(raw).load_datasets()
    assert (len(data.train), len(data.validation)) == (15, 5)
    again = Recipe.from_dict(raw).load_datasets()  # seeded: the same images held out
    pixels = lambda split: [image.tobytes() for image in split["image"]]  # noqa: E731
    assert pixels(again.validation) == pixels(data.validation)
    assert not set(pixels(data.validation)) & set(pixels(data.train))

    raw["data"] = {"dataset": str(tmp_path / "data"), "eval_split": None, "validation_split": "validation"}
    raw["evaluation"] = {"val_max_samples": 4}
    data = Recipe.from_dict(raw).load_datasets()
    assert (len(data.train), len(data.validation)) == (20, 4)

    raw["data"]["validation_split"] = "valid"
    with pytest.raises(ConfigError, match="data.validation_split='valid' is not a split"):
        Recipe.from_dict(raw).load_datasets()
    raw["data"]["train_val_split"] = 0.1
    with pytest.raises(ConfigError, match="validation_split or train_val_split, not both"):
        Recipe.from_dict(raw)
    raw["data"] = {"dataset": str(tmp_path / "data"), "train_val_split": 1.5}
    with pytest.raises(ConfigError, match="train_val_split must be a fraction"):
        Recipe.from_dict(raw)
