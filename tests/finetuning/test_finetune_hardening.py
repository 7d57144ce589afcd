"""Fine-tuning as users break it: kill -9 and resume (exact), a kill inside a checkpoint save, a resume with other
settings, a finished run resumed or trained over, NaN/inf data and losses, ambiguous or mismatched bands, splits that
cannot be held out, early stopping, checkpoint rotation after a kill, and grayscale images on RGB models."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, ViTConfig, ViTImageProcessor, ViTModel

from hf_ssl.errors import BandLayoutError
from hf_ssl.finetuning.data import ClassificationCollator, SeededExamples, check_images_fit
from hf_ssl.finetuning.model import build_classification_model, load_image_processor, resolve_backbone_source
from hf_ssl.finetuning.run import main
from hf_ssl.models import build_image_processor
from tests.finetuning.conftest import MEAN, STD, write_recipe
from tests.helpers import TINY_VIT, random_images

ROOT = Path(__file__).resolve().parents[2]
# 30 training images in batches of 4: 8 steps an epoch; a checkpoint (and a validation) every 3 steps, mid-epoch
STEP_CHECKPOINTS = dict(
    num_train_epochs=3,
    per_device_train_batch_size=4,
    eval_strategy="steps",
    eval_steps=3,
    save_strategy="steps",
    save_steps=3,
    save_total_limit=2,
)


def _weights(path) -> dict:
    return load_file(Path(path) / "model.safetensors")


def _assert_bit_identical(first, second):
    first, second = _weights(first), _weights(second)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first), [
        key for key in first if not torch.equal(first[key], second[key])
    ][:3]


def _checkpoints(output):
    return sorted((path.name for path in Path(output).glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))


@pytest.fixture(scope="module")
def uninterrupted(vit_backbone_dir, image_folder, tmp_path_factory):
    """The reference: one run of STEP_CHECKPOINTS, never interrupted, no DataLoader workers."""
    root = tmp_path_factory.mktemp("uninterrupted")
    recipe = write_recipe(root / "recipe.yaml", vit_backbone_dir, image_folder, root / "out", **STEP_CHECKPOINTS)
    assert main(["--config", str(recipe)]) == 0
    return root / "out"


# ----- 1. kill -9 and resume: bit-identical, with any number of workers ------------------------------------------
def test_sigkill_and_resume_give_the_weights_of_an_uninterrupted_run(
    vit_backbone_dir, image_folder, uninterrupted, tmp_path
):
    output = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, **STEP_CHECKPOINTS)
    command = [sys.executable, str(ROOT / "recipes" / "finetune_classification.py"), "--config", str(recipe)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while not (output / "checkpoint-3").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (output / "all_results.json").exists(), (
        "the run ended before the kill"
    )
    # resumed with two DataLoader workers: the crops depend on (seed, epoch, example), not on who draws them
    assert main(["--config", str(recipe), "--resume", "auto", "training.dataloader_num_workers=2"]) == 0
    _assert_bit_identical(uninterrupted, output)  # the best checkpoint, loaded at the end
    last = _checkpoints(uninterrupted)[-1]
    _assert_bit_identical(uninterrupted / last, output / last)
    reference = json.loads((uninterrupted / "trainer_state.json").read_text())
    resumed = json.loads((output / "trainer_state.json").read_text())
    assert [entry["eval_loss"] for entry in reference["log_history"] if "eval_loss" in entry][-1] == [
        entry["eval_loss"] for entry in resumed["log_history"] if "eval_loss" in entry
    ][-1]


def test_crops_are_drawn_from_seed_epoch_and_example():
    processor = build_image_processor("vit", 16, MEAN, STD)
    rows = [{"image": image, "label": 0} for image in random_images(4, size=(24, 24))]
    examples = SeededExamples(datasets.Dataset.from_list([{"label": index} for index in range(4)]))
    collator = ClassificationCollator(processor, train=True, seed=7, crop_scale=(0.2, 1.0))
    keyed = [{**row, "crop_key": (1, index)} for index, row in enumerate(rows)]
    first = collator(keyed)["pixel_values"]
    assert torch.equal(
        first,
        ClassificationCollator(processor, train=True, seed=7, crop_scale=(0.2, 1.0))(list(reversed(keyed)))[
            "pixel_values"
        ].flip(0),
    )
    assert torch.equal(collator([keyed[2]])["pixel_values"][0], first[2])  # alone in its batch, the same crop
    assert not torch.equal(
        collator([{**keyed[2], "crop_key": (2, 2)}])["pixel_values"][0], first[2]
    )  # another epoch: another crop
    examples.set_epoch(3)
    assert examples[len(examples) * 3 + 1]["crop_key"] == (3, 1) and examples[2]["crop_key"] == (0, 2)


# ----- 2. a kill inside a checkpoint save ------------------------------------------------------------------------
def test_a_save_cut_short_is_passed_over_and_the_resume_is_exact(
    vit_backbone_dir, image_folder, uninterrupted, tmp_path, monkeypatch, capsys, caplog
):
    from hf_ssl.training.state import checkpointing

    output = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, **STEP_CHECKPOINTS)
    write_state = checkpointing.write_state

    def fail_at_step_6(directory, state):
        if state["step"] == 6:
            raise OSError("disk unplugged")
        return write_state(directory, state)

    monkeypatch.setattr(checkpointing, "write_state", fail_at_step_6)
    assert main(["--config", str(recipe)]) == 1
    assert "saving checkpoint 6" in capsys.readouterr().err
    monkeypatch.undo()
    assert _checkpoints(output) == ["checkpoint-3"] and not list(output.glob(".staging-*"))
    # what a SIGKILL inside the Trainer's own save leaves: a folder with its first file only, and a staging folder
    (output / "checkpoint-6").mkdir()
    (output / "checkpoint-6" / "config.json").write_text("{}")
    (output / ".staging-checkpoint-9" / "checkpoint-9").mkdir(parents=True)
    assert main(["--config", str(recipe), "--resume", "auto"]) == 0
    assert "passing over" in caplog.text and "checkpoint-6" in caplog.text
    _assert_bit_identical(uninterrupted, output)
    assert not list(output.glob(".staging-*"))


# ----- 3 / 11. a resume with changed settings ----------------------------------------------------------------------
def test_a_resume_with_changed_settings_is_refused_naming_them(vit_backbone_dir, image_folder, tmp_path, capsys):
    output = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, max_time_seconds=1e-6)
    assert main(["--config", str(recipe)]) == 0  # stops after its first step, with a checkpoint
    for change, key in (
        (["training.learning_rate=0.01"], "training.learning_rate"),
        (["training.seed=1"], "training.seed"),
        (["data.train_val_split=0.5"], "data.train_val_split"),
        (["model.mode=linear_probe", "model.layer_decay=null"], "model.mode"),
        (["augmentation.horizontal_flip=false"], "augmentation.horizontal_flip"),
    ):
        assert main(["--config", str(recipe), "--resume", "auto", *change]) == 2, change
        error = capsys.readouterr().err
        assert f"{key}: checkpoint" in error and "resume_with_changed_settings" in error, error
    assert main(["--config", str(recipe), "--resume", "auto", "training.per_device_train_batch_size=4"]) == 2
    assert "total batch of 8" in capsys.readouterr().err
    # what may change: time limits, workers, logging
    assert (
        main(
            ["--config", str(recipe), "--resume", "auto", "training.max_time_seconds=null", "training.logging_steps=2"]
        )
        == 0
    )
    assert (
        main(
            [
                "--config",
                str(tmp_path / "recipe.yaml"),
                "--resume",
                "auto",
                "training.learning_rate=0.01",
                "training.resume_with_changed_settings=true",
            ]
        )
        == 0
    )


# ----- 4 / 5. a finished run: resumed, or trained over --------------------------------------------------------------
def test_a_finished_run_keeps_its_results_and_is_not_trained_over(vit_backbone_dir, image_folder, tmp_path, capsys):
    output = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, num_train_epochs=1)
    assert main(["--config", str(recipe)]) == 0
    results, weights = (output / "all_results.json").read_bytes(), (output / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["--config", str(recipe), "--resume", "auto"]) == 0
    assert "finished at step" in capsys.readouterr().out
    assert (output / "all_results.json").read_bytes() == results and json.loads(results)["train_loss"] > 0
    assert (output / "model.safetensors").read_bytes() == weights

    single = tmp_path / "no-checkpoints"  # save_strategy no: the model is all there is
    recipe = write_recipe(
        tmp_path / "single.yaml",
        vit_backbone_dir,
        image_folder,
        single,
        num_train_epochs=1,
        save_strategy="no",
        load_best_model_at_end=False,
    )
    assert main(["--config", str(recipe)]) == 0
    weights = (single / "model.safetensors").read_bytes()
    assert main(["--config", str(recipe)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["--config", str(recipe), "--resume", "auto"]) == 2
    assert "model.model_name_or_path=" in capsys.readouterr().err
    assert (single / "model.safetensors").read_bytes() == weights


# ----- 6. NaN / inf: data skipped and counted, a NaN loss stops the run, no NaN model --------------------------------
@pytest.fixture(scope="module")
def band_backbone_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("band-backbone")
    torch.manual_seed(0)
    ViTModel(
        ViTConfig(**{**{k: v for k, v in TINY_VIT.items() if k != "model_type"}, "num_channels": 4}),
        add_pooling_layer=False,
    ).save_pretrained(path)
    build_image_processor("vit", 16, [0.5] * 4, [0.25] * 4).save_pretrained(path)
    return path


def _array_folder(root, shape=(20, 20, 4), count=24, nan_files=0):
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / "train" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        array = rng.random(shape).astype(np.float32) + (index % 2)
        if index < nan_files:
            array[0, 0, 0] = np.nan if index % 2 else np.inf
        np.save(folder / f"{index}.npy", array)
    return root


def _band_recipe(path, backbone, data_dir, output, **data):
    recipe = write_recipe(path, backbone, data_dir, output, num_train_epochs=1, per_device_train_batch_size=4)
    values = json.loads(recipe.read_text())
    values["data"].update({"dataset": "arrayfolder", **data})
    values["model"]["layer_decay"] = None
    path.write_text(json.dumps(values))
    return path


def test_nband_arrays_holding_nan_are_skipped_and_counted(band_backbone_dir, tmp_path):
    data = _array_folder(tmp_path / "arrays", nan_files=4)
    recipe = _band_recipe(tmp_path / "recipe.yaml", band_backbone_dir, data, tmp_path / "out")
    assert main(["--config", str(recipe)]) == 0
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["num_skipped_images"] >= 4
    assert all(bool(torch.isfinite(tensor).all()) for tensor in _weights(tmp_path / "out").values())


def test_a_nonfinite_loss_stops_the_run_without_saving_nan_weights(
    vit_backbone_dir, image_folder, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        vit_backbone_dir,
        image_folder,
        output,
        num_train_epochs=3,
        per_device_train_batch_size=4,
        max_consecutive_nonfinite_steps=3,
    )
    prepare = ClassificationCollator._prepare
    calls = {"train": 0}

    def nan_after_four_batches(self, images):
        pixels = prepare(self, images)
        if self.train:
            calls["train"] += 1
            if calls["train"] > 4:
                pixels[0, 0, 0, 0] = float("nan")  # one NaN pixel makes the loss of the batch NaN
        return pixels

    monkeypatch.setattr(ClassificationCollator, "_prepare", nan_after_four_batches)
    assert main(["--config", str(recipe)]) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handlers went with it
    error = capsys.readouterr().err
    assert "NaN or inf for 3 optimizer steps in a row (up to step 7)" in error and "training.warmup_ratio" in error
    assert not (output / "model.safetensors").exists()
    for checkpoint in output.glob("checkpoint-*"):
        assert all(bool(torch.isfinite(tensor).all()) for tensor in _weights(checkpoint).values())


# ----- 7 / 12. bands: an ambiguous layout, a model of another band count ------------------------------------------
def test_ambiguous_band_layouts_need_data_channels_last(tmp_path):
    processor = build_image_processor("vit", 16, [0.5] * 16, [0.25] * 16)
    cube = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    channels_last = cube.copy()
    channels_last[..., 3] = 5.0  # band 3 of an (H, W, bands) array
    rows = datasets.Dataset.from_list([{"image": channels_last, "label": 0}])
    with pytest.raises(BandLayoutError, match="data.channels_last"):
        check_images_fit(rows, ClassificationCollator(processor, train=False))
    batch = ClassificationCollator(processor, train=False, channels_last=True)([{"image": channels_last, "label": 0}])
    assert torch.allclose(batch["pixel_values"][0, 3], torch.full((16, 16), (5.0 - 0.5) / 0.25))


def test_ambiguous_layout_stops_the_run_before_training(band_backbone_dir, tmp_path, capsys):
    data = _array_folder(tmp_path / "arrays", shape=(4, 20, 4))  # 4 x 20 x 4 with 4 bands: either end
    recipe = _band_recipe(tmp_path / "recipe.yaml", band_backbone_dir, data, tmp_path / "out")
    assert main(["--config", str(recipe)]) == 2
    assert "data.channels_last" in capsys.readouterr().err
    assert main(["--config", str(recipe), "data.channels_last=true"]) == 0


def test_a_model_of_another_band_count_is_refused_before_training(
    vit_backbone_dir, band_backbone_dir, image_folder, tmp_path, capsys
):
    processor = build_image_processor("vit", 16, MEAN, STD)
    with pytest.raises(ValueError, match="holds 4 bands and the model takes 3 channels"):  # an Array3D column's rows
        ClassificationCollator(processor, train=False).decode(np.zeros((20, 24, 4), np.float32))
    arrays = _array_folder(tmp_path / "arrays")
    recipe = _band_recipe(tmp_path / "rgb-model.yaml", vit_backbone_dir, arrays, tmp_path / "out1")
    assert main(["--config", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert "model of 3 channels" in error and "holds 4 bands" in error, error
    recipe = write_recipe(tmp_path / "band-model.yaml", band_backbone_dir, image_folder, tmp_path / "out2")
    assert main(["--config", str(recipe), "model.layer_decay=null"]) == 2
    error = capsys.readouterr().err
    assert "model of 4 channels" in error and "3 bands" in error, error
    assert not (tmp_path / "out1" / "checkpoint-1").exists() and not (tmp_path / "out2" / "checkpoint-1").exists()


# ----- 10. a pretraining checkpoint given to --resume ------------------------------------------------------------
def test_resuming_from_a_pretraining_checkpoint_says_how_to_start_from_it(
    vit_backbone_dir, image_folder, tmp_path, capsys
):
    from hf_ssl import SimClrConfig, SimClrForPreTraining
    from hf_ssl.training.state import checkpointing

    checkpoint = tmp_path / "pretraining" / "checkpoint-5"
    SimClrForPreTraining(
        SimClrConfig(backbone_config=dict(TINY_VIT), projection_hidden_dim=16, projection_dim=8)
    ).save_pretrained(checkpoint)
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, tmp_path / "out")
    for state in (False, True):
        if state:
            checkpointing.write_state(checkpoint, {"method": "simclr", "engine": "trainer", "step": 5})
        assert main(["--config", str(recipe), "--resume", str(checkpoint)]) == 2
        error = capsys.readouterr().err
        assert "simclr pretraining" in error and f"model.model_name_or_path={checkpoint}" in error, error


# ----- 15. splits that cannot be held out ---------------------------------------------------------------------------
def test_one_class_and_a_class_of_one_image_are_named(vit_backbone_dir, tmp_path, capsys):
    single = tmp_path / "single" / "train" / "shoes"
    single.mkdir(parents=True)
    for index, image in enumerate(random_images(6)):
        image.save(single / f"{index}.png")
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, tmp_path / "single", tmp_path / "out")
    assert main(["--config", str(recipe)]) == 2
    assert "needs at least 2 of them" in capsys.readouterr().err
    lonely = tmp_path / "lonely" / "train"
    for index, image in enumerate(random_images(9)):
        folder = lonely / ("boots" if index == 8 else ("shirts" if index % 2 else "shoes"))
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index}.png")
    assert main(["--config", str(recipe), f"data.data_dir={tmp_path / 'lonely'}"]) == 2
    error = capsys.readouterr().err
    assert "class 'boots'" in error and "single image" in error and "data.validation_split" in error, error


# ----- 19. early stopping, and rotation after a kill right after the last checkpoint -------------------------------
def test_an_early_stopped_run_says_so_and_a_resume_keeps_it(vit_backbone_dir, image_folder, tmp_path, capsys):
    output = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        vit_backbone_dir,
        image_folder,
        output,
        num_train_epochs=6,
        early_stopping_patience=1,
        early_stopping_threshold=1.0,
    )
    assert main(["--config", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert "Early stopping ended the run at step" in printed and "--resume auto keeps it" in printed
    step = json.loads((output / "trainer_state.json").read_text())["global_step"]
    assert main(["--config", str(recipe), "--resume", "auto"]) == 0
    assert "(early stopping)" in capsys.readouterr().out
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == step
    assert _checkpoints(output)[-1] == f"checkpoint-{step}"


def test_a_kill_after_the_last_checkpoint_is_finished_by_a_resume(
    vit_backbone_dir, image_folder, tmp_path, monkeypatch
):
    from hf_ssl.finetuning.trainer import FinetuneTrainer

    output = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, **STEP_CHECKPOINTS)
    monkeypatch.setattr(FinetuneTrainer, "rotate_checkpoints", lambda self: None)  # killed before each rotation
    assert main(["--config", str(recipe)]) == 0
    monkeypatch.undo()
    for name in (
        "model.safetensors",
        "all_results.json",
        "trainer_state.json",
        "README.md",
    ):  # killed before the outputs
        (output / name).unlink()
    assert len(_checkpoints(output)) == 8
    assert main(["--config", str(recipe), "--resume", "auto"]) == 0
    state = json.loads((output / "checkpoint-24" / "trainer_state.json").read_text())
    kept = {"checkpoint-24", Path(state["best_model_checkpoint"]).name}
    assert set(_checkpoints(output)) == kept and len(kept) <= 2
    _assert_bit_identical(state["best_model_checkpoint"], output)
    results = json.loads((output / "all_results.json").read_text())
    assert (
        "eval_accuracy" in results and "train_loss" not in results
    )  # this session trained nothing: no train_loss of 0


# ----- 20. grayscale and RGB images on every kind of start ------------------------------------------------------
def _starts(tmp_path):
    """The four starts the README lists, each a 3-channel ViT: an hf_ssl run, its checkpoint, an exported backbone, and
    a plain transformers ViTModel with an ImageNet-style ViTImageProcessor (its own mean and std, no hf_ssl)."""
    from hf_ssl import SimClrConfig, SimClrForPreTraining

    torch.manual_seed(0)
    model = SimClrForPreTraining(
        SimClrConfig(backbone_config=dict(TINY_VIT), projection_hidden_dim=16, projection_dim=8)
    )
    run = tmp_path / "run"
    model.save_pretrained(run / "checkpoint-5")
    model.save_pretrained(run)
    model.export_backbone(str(run / "backbone"), image_processor=build_image_processor("vit", 16, MEAN, STD))
    build_image_processor("vit", 16, MEAN, STD).save_pretrained(run)
    plain = tmp_path / "plain"
    config = AutoConfig.for_model(**TINY_VIT)
    AutoModel.from_config(config).save_pretrained(plain)
    ViTImageProcessor(
        size={"height": 16, "width": 16}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    ).save_pretrained(plain)
    return {
        "hf_ssl run": run,
        "checkpoint": run / "checkpoint-5",
        "exported backbone": run / "backbone",
        "plain transformers": plain,
    }


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "RGBA", "CMYK", "I;16"])
def test_every_start_takes_grayscale_and_colour_images(mode, tmp_path):
    images = [
        image if mode == "RGB" else image.convert("L").convert(mode) if mode == "I;16" else image.convert(mode)
        for image in random_images(4)
    ]
    rows = [{"image": image, "label": index % 2} for index, image in enumerate(images)]
    for name, path in _starts(tmp_path).items():
        source = resolve_backbone_source(str(path), export_dir=tmp_path / f"export-{name.replace(' ', '-')}")
        processor = load_image_processor(source)
        model = build_classification_model(source, ["a", "b"])
        for train in (True, False):
            batch = ClassificationCollator(processor, train=train, seed=0)(rows)
            assert batch["pixel_values"].shape == (4, 3, 16, 16), name
            assert torch.isfinite(model(**batch).loss), name


def test_a_plain_transformers_vit_fine_tunes_on_grayscale_images(tmp_path):
    plain = _starts(tmp_path)["plain transformers"]
    folder = tmp_path / "gray"
    for split, count in (("train", 24), ("test", 8)):
        for index, image in enumerate(random_images(count, size=(28, 28))):
            (folder / split / str(index % 2)).mkdir(parents=True, exist_ok=True)
            image.convert("L").save(folder / split / str(index % 2) / f"{index}.png")
    recipe = write_recipe(tmp_path / "recipe.yaml", plain, folder, tmp_path / "out", num_train_epochs=1)
    assert main(["--config", str(recipe)]) == 0
    assert Image.open(next((folder / "train" / "0").iterdir())).mode == "L"
    assert "test_accuracy" in json.loads((tmp_path / "out" / "all_results.json").read_text())
