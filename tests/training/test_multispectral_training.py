"""Multispectral and hyperspectral runs end to end: generated 4-band and 32-band array folders through both engines,
the per-band normalisation computed from the data, the exported N-band backbone in plain transformers, and the
408-band recipe at tiny size."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hf_ssl.commands.pretrain import main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "simclr_hyperspectral.yaml"
TINY_BACKBONES = {  # the recipe's ResNet-18 at tiny size, and a ViT
    "resnet": {
        "model_type": "resnet",
        "embedding_size": 8,
        "hidden_sizes": [8, 16],
        "depths": [1, 1],
        "layer_type": "basic",
    },
    "vit": {
        "model_type": "vit",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "patch_size": 4,
        "image_size": 16,
    },
}
RUN_ARGS = [
    "training.max_steps=3",
    "training.per_device_train_batch_size=4",
    "training.dataloader_num_workers=0",
    "training.report_to=none",
    "training.logging_steps=1",
    "training.save_strategy=no",
    "training.bf16=false",
    "evaluation.knn_k=3",
]


def write_array_folder(
    root: Path, bands: int, per_class: int = 8, test_per_class: int = 3, size: int = 20, seed: int = 0
) -> Path:
    """Two classes told apart by their spatial pattern (stripes one way or the other), each image with its own
    random spectrum in 12-bit counts, saved as .npy files (odd ones channels last)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(("horizontal", "vertical")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pattern = np.zeros((size, size), np.float32)
                if label:
                    pattern[:, ::4] = 1
                else:
                    pattern[::4] = 1
                spectrum = rng.uniform(200, 3000, size=(bands, 1, 1))
                image = np.clip(pattern[None] * spectrum + rng.normal(400, 60, (bands, size, size)), 0, 4095).astype(
                    np.uint16
                )
                np.save(folder / f"{index}.npy", image if index % 2 == 0 else image.transpose(1, 2, 0))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {bands: write_array_folder(tmp_path_factory.mktemp(f"bands{bands}"), bands) for bands in (4, 32)}


def tiny_recipe(tmp_path: Path, backbone: str, bands: int) -> Path:
    """The hyperspectral recipe with a tiny backbone of ``bands`` channels."""
    raw = yaml.safe_load(RECIPE.read_text())
    raw["model"]["backbone_config"] = {**TINY_BACKBONES[backbone], "num_channels": bands}
    raw["augmentation"].pop("num_channels")  # the backbone's
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
@pytest.mark.parametrize("bands, backbone", [(4, "vit"), (32, "resnet")])
def test_n_band_runs_train_normalise_and_export(folders, tmp_path, engine, bands, backbone):
    from transformers import AutoImageProcessor, AutoModel

    import hf_ssl  # noqa: F401  (registers the Auto classes)
    from hf_ssl.data import band_statistics, load_image_dataset
    from hf_ssl.evaluation.knn import resize_bands_for_evaluation

    output_dir = tmp_path / "run"
    code = main(
        [
            "--config",
            str(tiny_recipe(tmp_path, backbone, bands)),
            f"data.data_dir={folders[bands]}",
            f"training.output_dir={output_dir}",
            f"training.engine={engine}",
            "data.train_val_split=null",
            "training.metric_for_best_model=null",
            "training.early_stopping_patience=null",
            "augmentation.input_size=16",
            "model.projection_hidden_dim=32",
            "model.projection_dim=16",
            *RUN_ARGS,
        ]
    )
    assert code == 0

    saved = yaml.safe_load((output_dir / "recipe.yaml").read_text())
    train = load_image_dataset("arrayfolder", data_dir=str(folders[bands]), split="train")
    mean, std = band_statistics(train, bands)
    assert saved["augmentation"]["num_channels"] == bands
    np.testing.assert_allclose(saved["augmentation"]["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(saved["augmentation"]["std"], std, rtol=1e-6)

    # the exported backbone and its processor, in plain transformers
    backbone = AutoModel.from_pretrained(output_dir / "backbone")
    processor = AutoImageProcessor.from_pretrained(output_dir / "backbone")
    assert backbone.config.num_channels == bands and list(processor.image_mean) == pytest.approx(mean)
    image = np.load(folders[bands] / "test" / "vertical" / "0.npy").astype(np.float32)
    pixel_values = processor(
        [resize_bands_for_evaluation(image, 16)], return_tensors="pt", input_data_format="channels_first"
    )["pixel_values"]
    expected = (
        torch.from_numpy(resize_bands_for_evaluation(image, 16)) - torch.tensor(mean).view(-1, 1, 1)
    ) / torch.tensor(std).view(-1, 1, 1)
    torch.testing.assert_close(pixel_values[0], expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain = backbone(pixel_values=pixel_values).pooler_output.flatten(1)  # a ResNet pools to (B, C, 1, 1)
        ours = AutoModel.from_pretrained(output_dir)(pixel_values=pixel_values).pooler_output  # hf_ssl's feature model
    torch.testing.assert_close(plain, ours)
    assert torch.isfinite(plain).all()


def test_the_408_band_recipe_runs_at_tiny_size_with_early_stopping_on_val_loss(tmp_path):
    folder = write_array_folder(tmp_path / "data", 408, per_class=6, test_per_class=2, size=16)
    output_dir = tmp_path / "run"
    code = main(
        [
            "--config",
            str(RECIPE),
            f"data.data_dir={folder}",
            f"training.output_dir={output_dir}",
            "augmentation.input_size=16",
            "model.backbone_config.embedding_size=8",
            "model.backbone_config.hidden_sizes=[8,16]",
            "model.backbone_config.depths=[1,1]",
            "model.projection_hidden_dim=32",
            "model.projection_dim=16",
            "data.train_val_split=0.25",
            "evaluation.val_eval_steps=1",
            "training.early_stopping_patience=1",
            "training.early_stopping_min_delta=100",
            *RUN_ARGS,
        ]
    )
    assert code == 0
    saved = yaml.safe_load((output_dir / "recipe.yaml").read_text())
    assert saved["model"]["backbone_config"]["num_channels"] == 408 and len(saved["augmentation"]["mean"]) == 408
    assert saved["training"]["metric_for_best_model"] == "val_loss"
    from transformers import AutoModel

    exported = AutoModel.from_pretrained(output_dir / "backbone")
    assert exported.config.num_channels == 408
    assert exported.embedder.embedder.convolution.weight.shape[1] == 408
    # no val_loss improves by 100, so patience 1 stops the 3-step run after its second evaluation
    steps = json.loads((output_dir / "history.json").read_text())["steps"]
    assert [entry["step"] for entry in steps if "val_loss" in entry] == [1, 2]
    assert max(entry["step"] for entry in steps) == 2


RGB_ONLY_OFF = {  # the RGB-only keys of each method's augmentation section, switched off
    "cj_sat": 0.0,
    "cj_hue": 0.0,
    "random_gray_scale": 0.0,
    "solarize_prob": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
    "grayscale_probability": 0.0,
    "global_solarize_probabilities": (0.0, 0.0),
    "local_solarize_probability": 0.0,
}


def test_every_method_trains_on_four_bands(tmp_path):
    """Each registered method's tiny setup with a 4-channel backbone and 4-band views: two steps, finite losses, and
    an evaluated backbone that takes 4 channels."""
    import dataclasses

    from datasets import Array3D, Dataset, Features

    from hf_ssl.data import ViewCropTransform, with_view_crops
    from hf_ssl.training import build_trainer, get_method
    from tests.training.test_methods import TINY_SETUPS

    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0, 4000, (4, 20, 20)).astype(np.float32) for _ in range(8)]
    dataset = Dataset.from_dict(
        {"image": arrays}, features=Features({"image": Array3D(shape=(4, 20, 20), dtype="float32")})
    )
    for method, setup in sorted(TINY_SETUPS.items()):
        spec = get_method(method)
        config, views, overrides = setup()
        config.backbone_config.num_channels = 4
        per_view = getattr(type(views), "per_view_keys", ())  # BYOL's and VICReg's (view 1, view 2) probabilities
        off = {
            key: (value, value) if key in per_view else value
            for key, value in RGB_ONLY_OFF.items()
            if key in {item.name for item in dataclasses.fields(views)}
        }
        views = dataclasses.replace(views, num_channels=4, mean=(2000.0,) * 4, std=(1150.0,) * 4, **off)
        torch.manual_seed(0)
        model = spec.pretraining_model_class(config)
        arguments = spec.training_arguments_class(
            output_dir=str(tmp_path / method),
            per_device_train_batch_size=4,
            max_steps=2,
            learning_rate=1e-3,
            scale_learning_rate=False,
            warmup_epochs=0.0,
            logging_steps=1,
            report_to="none",
            dataloader_num_workers=0,
            save_strategy="no",
            seed=0,
            **{key: value for key, value in overrides.items() if key != "learning_rate"},
        )
        trainer = build_trainer(
            model=model,
            args=arguments,
            view_config=views,
            method=method,
            train_dataset=with_view_crops(dataset, ViewCropTransform(views), seed=0),
        )
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert len(losses) == 2 and all(np.isfinite(losses)), method
        assert model.evaluation_backbone().config.num_channels == 4, method


def test_broken_and_wrong_band_files_are_skipped_and_counted(tmp_path):
    folder = write_array_folder(tmp_path / "data", 4, per_class=4, test_per_class=2)
    (folder / "train" / "horizontal" / "broken.npy").write_bytes(b"\x93NUMPY truncated")
    np.save(folder / "train" / "vertical" / "six_bands.npy", np.zeros((6, 20, 20), np.uint16))
    output_dir = tmp_path / "run"
    code = main(
        [
            "--config",
            str(tiny_recipe(tmp_path, "resnet", 4)),
            f"data.data_dir={folder}",
            f"training.output_dir={output_dir}",
            "data.train_val_split=null",
            "training.metric_for_best_model=null",
            "training.early_stopping_patience=null",
            "augmentation.input_size=16",
            "model.projection_hidden_dim=32",
            "model.projection_dim=16",
            "training.per_device_train_batch_size=10",
            *[argument for argument in RUN_ARGS if "batch_size" not in argument],
        ]
    )
    assert code == 0
    steps = json.loads((output_dir / "history.json").read_text())["steps"]
    assert (
        sum(entry.get("skipped_images", 0) for entry in steps if "loss" in entry) >= 2
    )  # both, once per epoch at least


def test_band_counts_that_disagree_stop_before_training(tmp_path):
    from hf_ssl.errors import ConfigError
    from hf_ssl.training.setup.recipe import Recipe

    raw = yaml.safe_load(RECIPE.read_text())
    raw["model"]["backbone_config"] = {**TINY_BACKBONES["resnet"], "num_channels": 4}
    raw["augmentation"]["num_channels"] = 5
    with pytest.raises(
        ConfigError,
        match=r"augmentation\.num_channels=5 but the backbone takes 4 channels "
        r"\(model\.backbone_config\.num_channels\)",
    ):
        Recipe.from_dict(raw)
    raw["augmentation"].pop("num_channels")
    assert Recipe.from_dict(raw).view_config.num_channels == 4  # left out: the backbone's
    raw["augmentation"]["cj_sat"] = 0.5
    with pytest.raises(ConfigError, match=r"cj_sat=0\.5.*RGB-only.*4 bands"):
        Recipe.from_dict(raw)


def tiny_run_args(folder: Path, output_dir: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        f"data.data_dir={folder}",
        f"training.output_dir={output_dir}",
        "data.train_val_split=null",
        "training.metric_for_best_model=null",
        "training.early_stopping_patience=null",
        "augmentation.input_size=16",
        "model.projection_hidden_dim=32",
        "model.projection_dim=16",
        f"training.per_device_train_batch_size={batch_size}",
        *[argument for argument in RUN_ARGS if "batch_size" not in argument],
        *extra,
    ]


@pytest.mark.parametrize("statistics", ["computed", "given"])
def test_an_array_holding_nan_is_skipped_counted_and_left_out_of_the_statistics(tmp_path, statistics):
    from hf_ssl.data import band_statistics, load_image_dataset

    folder = write_array_folder(tmp_path / "data", 4, per_class=4, test_per_class=2)
    good = load_image_dataset("arrayfolder", data_dir=str(folder), split="train")
    nan_image = np.load(folder / "train" / "vertical" / "0.npy").astype(np.float32)
    nan_image[0, :2] = np.nan
    np.save(folder / "train" / "vertical" / "nan.npy", nan_image)
    given = (
        ["augmentation.mean=[1500,1500,1500,1500]", "augmentation.std=[800,800,800,800]"]
        if statistics == "given"
        else []
    )
    output_dir = tmp_path / "run"
    code = main(["--config", str(tiny_recipe(tmp_path, "resnet", 4)), *tiny_run_args(folder, output_dir, 9, *given)])
    assert code == 0
    steps = json.loads((output_dir / "history.json").read_text())["steps"]
    losses = [entry["loss"] for entry in steps if "loss" in entry]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert [entry["skipped_steps"] for entry in steps if "loss" in entry] == [0, 0, 0]  # no step lost to a NaN loss
    assert [entry["skipped_images"] for entry in steps if "loss" in entry] == [
        1,
        2,
        3,
    ]  # so far; a step is all 9 images
    if statistics == "computed":
        saved = yaml.safe_load((output_dir / "recipe.yaml").read_text())
        mean, std = band_statistics(good, 4)  # the 8 good images
        np.testing.assert_allclose(saved["augmentation"]["mean"], mean, rtol=1e-6)
        np.testing.assert_allclose(saved["augmentation"]["std"], std, rtol=1e-6)


def test_an_array_holding_nan_stops_a_run_that_skips_no_image_naming_the_file(tmp_path, capsys):
    folder = write_array_folder(tmp_path / "data", 4, per_class=4, test_per_class=2)
    np.save(folder / "train" / "vertical" / "nan.npy", np.full((4, 20, 20), np.nan, np.float32))
    # with the statistics computed from the data, before training
    arguments = tiny_run_args(folder, tmp_path / "computed", 9, "data.skip_bad_images=false")
    assert main(["--config", str(tiny_recipe(tmp_path, "resnet", 4)), *arguments]) == 2
    assert re.search(
        r"cannot read image '.*nan\.npy': ValueError: the image holds 1600 non-finite values", capsys.readouterr().err
    )
    # with mean / std given, when training reaches it
    arguments = tiny_run_args(
        folder,
        tmp_path / "run",
        9,
        "data.skip_bad_images=false",
        "augmentation.mean=[1500,1500,1500,1500]",
        "augmentation.std=[800,800,800,800]",
    )
    with pytest.raises(
        ValueError, match=r"cannot read image '.*nan\.npy': ValueError: the image holds 1600 non-finite values"
    ):
        main(["--config", str(tiny_recipe(tmp_path, "resnet", 4)), *arguments])


def test_arrays_whose_band_axis_their_shape_does_not_tell_stop_before_training(tmp_path, capsys):
    folder = write_array_folder(tmp_path / "data", 16, per_class=2, test_per_class=1, size=16)  # 16 x 16 x 16
    recipe = str(tiny_recipe(tmp_path, "resnet", 16))
    code = main(["--config", recipe, *tiny_run_args(folder, tmp_path / "computed", 4)])
    assert code == 2
    message = capsys.readouterr().err
    assert "shape (16, 16, 16) with num_channels=16" in message and "set data.channels_last to true" in message
    # with mean / std given, the look at the data before training stops it
    given = [f"augmentation.mean=[{','.join(['1000'] * 16)}]", f"augmentation.std=[{','.join(['500'] * 16)}]"]
    assert main(["--config", recipe, *tiny_run_args(folder, tmp_path / "given", 4, *given)]) == 2
    assert "shape (16, 16, 16) with num_channels=16" in capsys.readouterr().err
    assert not (tmp_path / "computed" / "history.json").exists() and not (tmp_path / "given" / "history.json").exists()


@pytest.mark.parametrize("channels_last", [True, False])
def test_data_channels_last_reads_arrays_whose_shape_does_not_tell(tmp_path, channels_last):
    from hf_ssl.data import band_statistics, load_image_dataset

    folder = tmp_path / "data"
    for split, count in (("train", 4), ("test", 2)):
        for label in ("a", "b"):
            (folder / split / label).mkdir(parents=True)
            for index in range(count):
                noise = np.random.default_rng(index).uniform(0, 10, (16, 16, 16))
                bands = np.arange(16, dtype=np.float32)[:, None, None] * 100 + noise
                np.save(folder / split / label / f"{index}.npy", bands.transpose(1, 2, 0) if channels_last else bands)
    output_dir = tmp_path / "run"
    code = main(
        [
            "--config",
            str(tiny_recipe(tmp_path, "resnet", 16)),
            *tiny_run_args(folder, output_dir, 8, f"data.channels_last={str(channels_last).lower()}"),
        ]
    )
    assert code == 0
    saved = yaml.safe_load((output_dir / "recipe.yaml").read_text())
    assert saved["data"]["channels_last"] is channels_last
    np.testing.assert_allclose(
        saved["augmentation"]["mean"], np.arange(16) * 100 + 5, atol=0.5
    )  # band b around 100 * b
    train = load_image_dataset("arrayfolder", data_dir=str(folder), split="train")
    np.testing.assert_allclose(
        saved["augmentation"]["mean"], band_statistics(train, 16, channels_last=channels_last)[0], rtol=1e-6
    )
