"""Every registered method on both engines, through the same machinery: a few steps (forward, backward, optimizer
step), a run interrupted by SIGTERM and resumed that ends with the weights of an uninterrupted one, a resume of
the finished run that trains nothing, the export to a plain transformers model and the reload of the saved model.
A method joins this test by registering itself and adding its tiny setup to ``TINY_SETUPS``."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.data import ViewCropTransform, as_views_config, with_view_crops
from hf_ssl.training import build_trainer, get_method, registered_methods
from tests.helpers import TINY_HEAD, TINY_VIT, random_images, sigterm_during_step, tiny_multicrop_config

MAX_STEPS = 4


def _dino_setup():
    from hf_ssl import DinoConfig

    return (
        DinoConfig(backbone_config=dict(TINY_VIT), **TINY_HEAD),
        tiny_multicrop_config(),
        {"freeze_last_layer_epochs": 0.0},
    )


def _simclr_setup():
    from hf_ssl.models.simclr import SimClrConfig
    from hf_ssl.training.methods.simclr import SimClrViewConfig

    config = SimClrConfig(backbone_config=dict(TINY_VIT), projection_hidden_dim=32, projection_dim=16, temperature=0.5)
    return config, SimClrViewConfig(input_size=16, sigmas=(0.1, 0.5)), {"optimizer": "lars", "learning_rate": 0.3}


def _byol_setup():
    from hf_ssl.models.byol import ByolConfig
    from hf_ssl.training.methods.byol import ByolViewConfig

    config = ByolConfig(
        backbone_config=dict(TINY_VIT), projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32
    )
    return (
        config,
        ByolViewConfig(input_size=16, sigmas=(0.1, 0.5)),
        {"optimizer": "lars", "learning_rate": 0.3, "teacher_momentum": 0.9},
    )


def _vicreg_setup():
    from hf_ssl.models.vicreg import VicRegConfig
    from hf_ssl.training.methods.vicreg import VicRegViewConfig

    config = VicRegConfig(backbone_config=dict(TINY_VIT), expander_dims=[32, 32])
    return config, VicRegViewConfig(input_size=16, sigmas=(0.1, 0.5)), {"optimizer": "lars", "learning_rate": 0.2}


def _ijepa_setup():
    from hf_ssl.models.ijepa import IJepaPretrainingConfig
    from hf_ssl.training.methods.ijepa import IJepaViewConfig

    config = IJepaPretrainingConfig(
        backbone_config={**TINY_VIT, "model_type": "ijepa"}, predictor_hidden_size=16, predictor_num_hidden_layers=2
    )
    # a 4 x 4 patch grid: 2 target blocks of 3-4 patches, a context block of what is left of 10-14 patches
    views = IJepaViewConfig(
        input_size=16, num_targets=2, target_scale=(0.2, 0.25), context_scale=(0.6, 0.9), min_keep=1
    )
    return config, views, {"teacher_momentum": 0.9}


def _hjepa_setup():
    from hf_ssl.models.hjepa import HJepaConfig

    _, views, overrides = _ijepa_setup()
    config = HJepaConfig(
        backbone_config={**TINY_VIT, "model_type": "ijepa"},
        predictor_hidden_size=16,
        predictor_num_hidden_layers=2,
        num_hierarchies=2,
        level_target_layers=[None, 1],
    )
    return config, views, {**overrides, "level_weight_warmup_epochs": [0.0, 0.5]}


# method -> (model config, augmentation config, training-argument overrides): tiny, a few CPU steps
TINY_SETUPS = {
    "byol": _byol_setup,
    "dino": _dino_setup,
    "hjepa": _hjepa_setup,
    "ijepa": _ijepa_setup,
    "simclr": _simclr_setup,
    "vicreg": _vicreg_setup,
}


def test_every_registered_method_has_a_tiny_setup():
    assert set(registered_methods()) == set(TINY_SETUPS), "add the new method's tiny setup to TINY_SETUPS"


@pytest.fixture(scope="module")
def image_dataset():
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["vertical", "horizontal"])})
    return Dataset.from_dict({"image": random_images(24), "label": [i % 2 for i in range(24)]}, features=features)


def make_trainer(method: str, engine: str, output_dir: Path, dataset, **overrides):
    spec = get_method(method)
    config, view_config, method_overrides = TINY_SETUPS[method]()
    torch.manual_seed(0)
    model = spec.pretraining_model_class(config)
    values = dict(
        output_dir=str(output_dir),
        engine=engine,
        per_device_train_batch_size=4,
        max_steps=MAX_STEPS,
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
    arguments = spec.training_arguments_class(**values)
    train_dataset = with_view_crops(dataset, ViewCropTransform(view_config), seed=0)
    return build_trainer(
        model=model, args=arguments, view_config=view_config, train_dataset=train_dataset, method=method
    )


def state_of(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
@pytest.mark.parametrize("method", sorted(TINY_SETUPS))
def test_method_trains_resumes_exports_and_reloads(tmp_path, image_dataset, method, engine):
    # an uninterrupted run: it logs the method's loss and moves the weights
    full = make_trainer(method, engine, tmp_path / "full", image_dataset)
    initial = state_of(full.model)
    full.train()
    assert full.state.global_step == MAX_STEPS
    final = state_of(full.model)
    moved = [
        name for name in initial if initial[name].is_floating_point() and not torch.equal(initial[name], final[name])
    ]
    assert len(moved) > len(initial) // 2, f"{method}: only {len(moved)} of {len(initial)} tensors changed"
    losses = [entry["loss"] for entry in full.state.log_history if "loss" in entry]
    assert len(losses) == MAX_STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "full" / "checkpoint-4" / "hf_ssl_state.json").is_file()

    # interrupted by SIGTERM during step 2 (a checkpoint is saved and the run stops), then resumed
    cut = make_trainer(method, engine, tmp_path / "cut", image_dataset)
    sigterm_during_step(cut, stop_after=2)
    cut.train()
    assert cut.state.global_step == 2 and (tmp_path / "cut" / "checkpoint-2").is_dir()
    resumed = make_trainer(method, engine, tmp_path / "cut", image_dataset)
    resumed.train(resume_from_checkpoint="auto")
    assert resumed.state.global_step == MAX_STEPS
    resumed_state = state_of(resumed.model)
    for name in final:  # bit for bit: the same data, crops, random draws and optimizer state in the same order
        torch.testing.assert_close(resumed_state[name], final[name], rtol=0, atol=0, msg=f"{method} {engine}: {name}")

    # a resume of the finished run trains nothing and keeps the final weights
    again = make_trainer(method, engine, tmp_path / "full", image_dataset)
    again.train(resume_from_checkpoint="auto")
    assert again.finished_before_start
    for name, tensor in state_of(again.model).items():
        torch.testing.assert_close(tensor, final[name], rtol=0, atol=0, msg=name)

    # save, reload through the Auto classes, export a plain transformers backbone with the same features
    full.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is get_method(method).pretraining_model_class
    for name, tensor in state_of(reloaded).items():
        torch.testing.assert_close(tensor, final[name], rtol=0, atol=0, msg=name)
    features = AutoModel.from_pretrained(tmp_path / "saved").eval()
    reloaded.export_backbone(tmp_path / "backbone")
    plain = AutoModel.from_pretrained(tmp_path / "backbone").eval()
    assert not type(plain).__module__.startswith("hf_ssl")
    pixels = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        ours, theirs = features(pixel_values=pixels), plain(pixel_values=pixels)
    # a plain IJepaModel has no pooled output: the feature model's is the mean of the patch tokens
    pooled = theirs.last_hidden_state.mean(1) if theirs.pooler_output is None else theirs.pooler_output.flatten(1)
    torch.testing.assert_close(ours.pooler_output, pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", sorted(TINY_SETUPS))
def test_a_batch_without_readable_images_gives_a_zero_loss_that_touches_every_parameter(method):
    # under DDP every process must run backward through every parameter (and SimCLR's gather) even then
    spec = get_method(method)
    config, view_config, _ = TINY_SETUPS[method]()
    model = spec.pretraining_model_class(config)
    step = spec.method_class(
        model, view_config, seed=0, process_index=0, max_consecutive_nonfinite_steps=3, reduce=lambda t: t
    )
    batch = {
        name: torch.zeros(group.number, 0, 3, group.size, group.size, dtype=torch.uint8)
        for name, group in as_views_config(view_config).groups.items()
    }
    batch["num_skipped"] = torch.tensor(4)
    loss, outputs = step.loss(model, batch, 0)
    assert outputs is None and loss.item() == 0.0 and step.skipped_images == 4
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_what_a_collator_adds_beside_the_crops_reaches_the_method():
    # a masked method's collator puts its masks in the batch: the method's forward gets them as they are
    spec = get_method("simclr")
    config, view_config, _ = TINY_SETUPS["simclr"]()
    model = spec.pretraining_model_class(config)
    step = spec.method_class(
        model, view_config, seed=0, process_index=0, max_consecutive_nonfinite_steps=3, reduce=lambda t: t
    )
    seen = {}

    def compute_outputs(model, views, step_index):
        seen.update(views)
        return model(views=views["views"])

    step.compute_outputs = compute_outputs
    masks = torch.ones(4, 16, dtype=torch.bool)
    batch = {
        "views": torch.zeros(2, 4, 3, 16, 16, dtype=torch.uint8),
        "labels": torch.zeros(4),
        "num_skipped": torch.tensor(0),
        "masks": masks,
    }
    step.loss(model, batch, 0)
    assert seen["masks"] is masks and "labels" not in seen and "num_skipped" not in seen
    assert seen["views"].dtype == torch.float32 and set(seen) == {"views", "masks"}


def test_a_method_trains_on_named_view_groups_given_directly(tmp_path, image_dataset):
    # the engines take a ViewsConfig as well as a method's own augmentation section: SimCLR on its "views" group
    from hf_ssl.data import ViewGroup, ViewsConfig

    views = ViewsConfig(
        groups={
            "views": ViewGroup(number=2, size=16, blur_probabilities=(1.0, 0.1), solarize_probabilities=(0.0, 0.2))
        }
    )
    spec = get_method("simclr")
    config, _, overrides = TINY_SETUPS["simclr"]()
    model = spec.pretraining_model_class(config)
    arguments = spec.training_arguments_class(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        scale_learning_rate=False,
        warmup_epochs=0.0,
        **overrides,
    )
    trainer = build_trainer(
        model=model,
        args=arguments,
        view_config=views,
        method="simclr",
        train_dataset=with_view_crops(image_dataset, ViewCropTransform(views), seed=0),
    )
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.method.views is views


@pytest.mark.parametrize(
    ("method", "groups", "message"),
    [
        (
            "dino",
            {"views": {"number": 2, "size": 16}},
            r"dino trains on the view groups \['global_crops'\], optionally \['local_crops'\]; "
            r"the augmentation has \['views'\]",
        ),
        (
            "simclr",
            {"views": {"number": 3, "size": 16}},
            "SimCLR trains on 2 views of each image; the augmentation's views group has 3",
        ),
        ("simclr", {"views": {"number": 2, "size": 12}}, r"augmentation\.groups\.views\.size"),
        (
            "byol",
            {"views": {"number": 1, "size": 16}},
            "BYOL trains on 2 views of each image; the augmentation's views group has 1",
        ),
        (
            "vicreg",
            {"image": {"number": 2, "size": 16}},
            r"vicreg trains on the view groups \['views'\]; the augmentation has \['image'\]",
        ),
    ],
)
def test_view_groups_a_method_cannot_train_on_are_refused_before_training(method, groups, message):
    from hf_ssl.data import ViewsConfig

    spec = get_method(method)
    config, _, _ = TINY_SETUPS[method]()
    with pytest.raises(ValueError, match=message):
        spec.method_class(
            spec.pretraining_model_class(config),
            ViewsConfig(groups=groups),
            seed=0,
            process_index=0,
            max_consecutive_nonfinite_steps=3,
            reduce=lambda t: t,
        )


def test_a_recipe_section_of_named_view_groups(tmp_path):
    # a method whose augmentation section is a ViewsConfig reads it from YAML, and size errors name its keys
    from hf_ssl.data import ViewsConfig
    from hf_ssl.errors import ConfigError
    from hf_ssl.training.methods.registry import _METHODS, register_method
    from hf_ssl.training.setup.recipe import Recipe

    register_method(replace(get_method("simclr"), name="simclr_views", view_config_class=ViewsConfig))
    try:
        raw = {
            "method": "simclr_views",
            "model": {"backbone_config": dict(TINY_VIT)},
            "augmentation": {
                "groups": {"views": {"number": 2, "size": 16, "blur_probabilities": [1.0, 0.1]}},
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
            },
        }
        recipe = Recipe.from_dict(raw)
        assert (
            recipe.view_config.groups["views"].blur_probabilities == (1.0, 0.1) and recipe.evaluation_image_size == 16
        )
        raw["augmentation"]["groups"]["views"]["size"] = 12
        with pytest.raises(ConfigError, match=r"augmentation\.groups\.views\.size"):
            Recipe.from_dict(raw)
        raw["augmentation"]["groups"]["views"] = {"number": 2, "sise": 16}
        with pytest.raises(ConfigError, match="unknown key 'sise' in view group 'views'"):
            Recipe.from_dict(raw)
    finally:
        _METHODS.pop("simclr_views", None)


def test_a_method_chooses_its_collator_and_a_resume_draws_the_same_masks(tmp_path, image_dataset):
    # a masked method's build_collator: the engines use it when given none, and its masks are seeded by the sampler
    # keys of ViewCropDataset, so an interrupted run sees the masks of an uninterrupted one
    from hf_ssl.data import MultiBlockMaskCollator
    from hf_ssl.training.engines.base import default_collator
    from hf_ssl.training.methods.simclr import SimClrMethod

    spec = get_method("simclr")
    config, view_config, overrides = TINY_SETUPS["simclr"]()
    seen = []

    class MaskedSimClr(SimClrMethod):
        @classmethod
        def build_collator(cls, model_config, view_config, seed):
            return MultiBlockMaskCollator(
                16, 4, num_targets=2, target_scale=(0.2, 0.3), min_keep=1, context_scale=(0.6, 0.9), seed=seed
            )

        def compute_outputs(self, model, views, step):
            seen.append((step, views["masks_context"].clone(), views["masks_target"].clone()))
            return super().compute_outputs(model, views, step)

    masked = replace(spec, method_class=MaskedSimClr)
    arguments = dict(
        per_device_train_batch_size=4,
        report_to="none",
        logging_steps=1,
        dataloader_num_workers=0,
        scale_learning_rate=False,
        warmup_epochs=0.0,
        save_strategy="steps",
        save_steps=2,
        **overrides,
    )
    assert isinstance(
        default_collator(
            spec.pretraining_model_class(config),
            masked,
            view_config,
            spec.training_arguments_class(output_dir=str(tmp_path), **arguments),
        ),
        MultiBlockMaskCollator,
    )

    def run(output_dir, stop_after=None, resume=None, engine="trainer"):
        torch.manual_seed(0)
        trainer = build_trainer(
            model=spec.pretraining_model_class(config),
            method=masked,
            view_config=view_config,
            args=spec.training_arguments_class(output_dir=str(output_dir), max_steps=4, engine=engine, **arguments),
            train_dataset=with_view_crops(image_dataset, ViewCropTransform(view_config), seed=0),
        )
        assert isinstance(trainer.data_collator, MultiBlockMaskCollator)
        sigterm_during_step(trainer, stop_after)
        trainer.train(resume_from_checkpoint=resume)

    for engine in ("trainer", "accelerate"):
        seen.clear()
        run(tmp_path / f"{engine}-full", engine=engine)
        full = {step: masks for step, *masks in seen}
        seen.clear()
        run(tmp_path / f"{engine}-cut", stop_after=2, engine=engine)
        run(tmp_path / f"{engine}-cut", resume="auto", engine=engine)
        resumed = {step: masks for step, *masks in seen}
        assert sorted(full) == [0, 1, 2, 3] and set(resumed) >= {2, 3}
        for step in (2, 3):
            assert all(torch.equal(a, b) for a, b in zip(full[step], resumed[step])), (engine, step)
        assert not torch.equal(full[0][0], full[1][0]) or not torch.equal(full[0][1], full[1][1])
