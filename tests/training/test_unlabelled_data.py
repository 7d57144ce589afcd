"""Pretraining on images without labels, the common case of self-supervised learning: every recipe runs on a plain
folder of images, k-NN evaluation is skipped with one log line that says why and which keys turn it on, unless the
command line itself asked for the missing split."""

import logging
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from hf_ssl.errors import ConfigError
from hf_ssl.training import Recipe
from tests.helpers import png_bytes, random_images

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
METHODS = ["byol", "dino", "hjepa", "ijepa", "simclr", "vicreg"]
KNN_OFF = "k-NN evaluation is off"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Image folders: ``plain`` (every image at the root), ``one_class`` (train/ and test/ of one class subfolder
    each, which datasets reads without labels), ``split_only`` (train/ and test/ without class subfolders: datasets
    gives them the split names as labels, None in one) and ``labelled`` (two classes in each split); ``parquet``:
    a train split whose label is the same for every image, and a test split of two labels."""
    root = tmp_path_factory.mktemp("folders")
    layouts = {
        "plain": lambda index: "",
        "one_class": lambda index: f"{'train' if index < 8 else 'test'}/all",
        "split_only": lambda index: "train" if index < 8 else "test",
        "labelled": lambda index: f"{'train' if index < 8 else 'test'}/{'horizontal' if index % 2 else 'vertical'}",
    }
    for name, folder_of in layouts.items():
        for index, image in enumerate(random_images(12)):
            folder = root / name / folder_of(index)
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index}.png")
    images = [{"bytes": png_bytes(image), "path": None} for image in random_images(12)]
    (root / "parquet").mkdir()
    Dataset.from_dict({"image": images[:8], "label": [3] * 8}).to_parquet(root / "parquet" / "train.parquet")
    Dataset.from_dict({"image": images[8:], "label": [3, 5] * 2}).to_parquet(root / "parquet" / "test.parquet")
    return root


def load(recipe_file, data_dir, *overrides):
    recipe = Recipe.from_yaml(recipe_file, [f"data.data_dir={data_dir}", "data.train_val_split=null", *overrides])
    return recipe.load_datasets()


def knn_off_lines(caplog):
    return [record.getMessage() for record in caplog.records if KNN_OFF in record.getMessage()]


def with_eval_split(tmp_path, method, eval_split="validation"):
    """The method's recipe with ``data.eval_split`` written in the file, as dino.yaml has it."""
    raw = yaml.safe_load((RECIPES / f"{method}.yaml").read_text())
    raw["data"]["eval_split"] = eval_split
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("method", METHODS)
def test_every_recipe_pretrains_on_a_plain_folder_without_knn(method, folders, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_ssl.training.setup.recipe"):
        data = load(RECIPES / f"{method}.yaml", folders / "plain")
    assert data.knn is None and len(data.train) == 12
    # dino.yaml names a 'validation' split for k-NN; the other recipes leave eval_split null and say nothing
    assert len(knn_off_lines(caplog)) == (1 if method == "dino" else 0), caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ssl.training.setup.recipe"):
        data = load(with_eval_split(tmp_path, method), folders / "plain")
    assert data.knn is None
    (line,) = knn_off_lines(caplog)
    assert line == (
        "k-NN evaluation is off: data.eval_split='validation' of the recipe is not a split of 'imagefolder' "
        "(splits: ['train']); to turn it on, set data.eval_split to a split with labels (an image folder: "
        "<data_dir>/<split>/<class>/ beside <data_dir>/train/<class>/) and data.label_column when they are not in "
        "'label'; data.eval_split=null turns this line off"
    )


@pytest.mark.parametrize("method", METHODS)
def test_a_missing_split_the_command_line_asks_for_stays_an_error(method, folders):
    with pytest.raises(
        ConfigError, match=r"data.eval_split='validation' is not a split of 'imagefolder'; splits: \['train'\]"
    ):
        load(RECIPES / f"{method}.yaml", folders / "plain", "data.eval_split=validation")
    with pytest.raises(ConfigError, match=r"data.eval_split='val' is not a split"):
        load(RECIPES / f"{method}.yaml", folders / "plain", "--eval_split", "val")


@pytest.mark.parametrize(
    ("folder", "why"),
    [
        ("one_class", "'imagefolder' has no labels in split 'train' and 'test'"),
        ("split_only", "'imagefolder' has no labels in split 'train'"),
        ("parquet", "the 'train' split of 'parquet' has a single label (3), nothing to tell apart"),
    ],
)
def test_images_without_labels_to_tell_apart_skip_knn(folder, why, folders, tmp_path, caplog):
    data_files = {split: str(folders / "parquet" / f"{split}.parquet") for split in ("train", "test")}
    source = ["data.dataset=parquet", f"data.data_files={data_files}"] if folder == "parquet" else []
    for overrides in ([], ["data.eval_split=test"]):  # from the recipe file, or even asked for on the command line
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_ssl.training.setup.recipe"):
            data = load(with_eval_split(tmp_path, "dino", "test"), folders / folder, *source, *overrides)
        assert data.knn is None
        (line,) = knn_off_lines(caplog)
        assert line.startswith(f"{KNN_OFF}: {why}; to turn it on, set data.eval_split"), line


def test_a_labelled_folder_keeps_knn(folders, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_ssl.training.setup.recipe"):
        data = load(with_eval_split(tmp_path, "simclr", "test"), folders / "labelled")
    bank, queries = data.knn
    assert (len(bank), len(queries)) == (8, 4) and knn_off_lines(caplog) == []


# ----- early stopping and best-N need the metric they follow --------------------------------------------------------
def check_best_metric(recipe_file, data_dir, *overrides):
    recipe = Recipe.from_yaml(recipe_file, [f"data.data_dir={data_dir}", *overrides])
    recipe.check_best_metric(recipe.load_datasets())


def test_early_stopping_on_a_metric_the_run_never_logs_is_refused_before_training(folders, tmp_path):
    dino = RECIPES / "dino.yaml"
    with pytest.raises(ConfigError, match="never logs it: there is no validation data: set data.validation_split"):
        check_best_metric(
            dino, folders / "labelled", "training.metric_for_best_model=val_loss", "training.early_stopping_patience=3"
        )
    with pytest.raises(ConfigError, match="never logs it: there is no k-NN evaluation"):
        check_best_metric(
            dino, folders / "plain", "training.early_stopping_patience=3", "evaluation.knn_eval_steps=100"
        )
    with pytest.raises(ConfigError, match="the linear probe is off: set evaluation.linear_probe=true"):
        check_best_metric(
            dino,
            folders / "labelled",
            "data.eval_split=test",
            "training.metric_for_best_model=linear_top1",
            "training.early_stopping_patience=3",
            "evaluation.knn_eval_steps=100",
        )
    with pytest.raises(ConfigError, match="evaluation.knn_eval_steps=0 logs only when training ends"):
        check_best_metric(dino, folders / "labelled", "data.eval_split=test", "training.early_stopping_patience=3")
    with pytest.raises(ConfigError, match="evaluation.val_eval_steps=0 logs only when training ends"):
        check_best_metric(
            dino,
            folders / "plain",
            "data.train_val_split=0.25",
            "training.metric_for_best_model=val_loss",
            "training.early_stopping_patience=3",
        )
    # what can run: k-NN every 100 steps; val_loss on held-out images every 50
    check_best_metric(
        dino,
        folders / "labelled",
        "data.eval_split=test",
        "training.early_stopping_patience=3",
        "evaluation.knn_eval_steps=100",
    )
    check_best_metric(
        dino,
        folders / "plain",
        "data.train_val_split=0.25",
        "training.metric_for_best_model=val_loss",
        "training.early_stopping_patience=3",
        "evaluation.val_eval_steps=50",
    )


def test_a_recipe_default_best_n_on_unlabelled_data_only_warns(folders, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_ssl.training.setup.recipe"):
        check_best_metric(
            RECIPES / "dino.yaml", folders / "plain"
        )  # save_best_total_limit 1 by knn_top1, no k-NN here
    assert "training.save_best_total_limit keeps no best checkpoint" in caplog.text
