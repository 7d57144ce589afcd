import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_ssl.evaluation import (
    LinearProbeEvaluator,
    RawPixels,
    extract_readable_features,
    knn_accuracy,
    linear_probe_accuracy,
)
from tests.evaluation.common import NOT_AN_IMAGE, RANKED_LABELS, TRUNCATED_PNG, ranked_query
from tests.evaluation.common import encoded as _encoded
from tests.evaluation.common import labelled_dataset as _labelled_dataset
from tests.evaluation.common import processor as _processor
from tests.evaluation.common import tiny_vit as _tiny_vit
from tests.evaluation.common import unreadable as _unreadable
from tests.helpers import png_bytes, random_images, tiny_dino_config

ROOT = Path(__file__).resolve().parents[2]


def _clusters(num_per_class, num_classes=4, noise=0.1, seed=0):
    """Features around the corners ``5 * e_c`` of a ``num_classes``-dimensional cube, class ``c`` at corner ``c``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat(num_per_class)
    return torch.eye(num_classes)[labels] * 5 + torch.randn(
        len(labels), num_classes, generator=generator
    ) * noise, labels


def test_separable_clusters_are_classified_perfectly_by_what_the_train_labels_say():
    train, train_labels = _clusters(25, seed=0)
    evaluated, eval_labels = _clusters(10, seed=1)
    assert linear_probe_accuracy(train, train_labels, evaluated, eval_labels) == pytest.approx(
        {"linear_top1": 100.0, "linear_top5": 100.0}
    )
    # trained on labels shifted by one class, it predicts the shifted class for every eval feature
    shifted = linear_probe_accuracy(train, (train_labels + 1) % 4, evaluated, eval_labels)
    assert shifted["linear_top1"] == pytest.approx(0.0)


def test_the_label_in_one_dimension_among_loud_noise_is_found():
    # dimension 5 holds the class (3 ordered levels); the 15 others are noise 10 times louder, which drowns
    # the distances k-NN compares but not a linear classifier on standardised features
    generator = torch.Generator().manual_seed(0)

    def split(count):
        labels = torch.randint(0, 3, (count,), generator=generator)
        features = torch.randn(count, 16, generator=generator) * 10
        features[:, 5] = labels.float() + torch.randn(count, generator=generator) * 0.1
        return features, labels

    (train, train_labels), (evaluated, eval_labels) = split(300), split(200)
    assert linear_probe_accuracy(train, train_labels, evaluated, eval_labels)["linear_top1"] >= 98.0
    assert knn_accuracy(train, train_labels, evaluated, eval_labels)["knn_top1"] < 60.0


def test_random_labels_give_chance_on_held_out_features_and_top5_covers_fewer_classes():
    generator = torch.Generator().manual_seed(0)
    train, evaluated = torch.randn(600, 32, generator=generator), torch.randn(600, 32, generator=generator)
    train_labels, eval_labels = (
        torch.randint(0, 3, (600,), generator=generator),
        torch.randint(0, 3, (600,), generator=generator),
    )
    metrics = linear_probe_accuracy(train, train_labels, evaluated, eval_labels)
    assert 100 / 3 - 7 < metrics["linear_top1"] < 100 / 3 + 7
    # three classes: the top 5 are all of them
    assert metrics["linear_top5"] == pytest.approx(100.0)
    # ten classes (7 of them unseen): the top 5 still holds the 3 seen ones
    assert linear_probe_accuracy(train, train_labels, evaluated, eval_labels, num_classes=10)[
        "linear_top5"
    ] == pytest.approx(100.0)


def test_top5_counts_a_label_ranked_fifth_but_not_sixth():
    # trained on 8 classes at the corners 5 * e_c, the same for every class, so the logit of class c grows with
    # the c-th feature: the query's ranking of the classes puts the 4 eval labels 1st, 4th, 5th and 6th
    train, train_labels = _clusters(10, num_classes=8)
    evaluated = ranked_query().repeat(len(RANKED_LABELS), 1) * 5 / 8
    metrics = linear_probe_accuracy(train, train_labels, evaluated, RANKED_LABELS)
    assert metrics == pytest.approx({"linear_top1": 25.0, "linear_top5": 75.0})  # top-4 would be 50, top-6 100


def _imbalanced(count, generator):
    """70% of class 0; class 1 told apart by dimension 0 alone, 13 of its standard deviations away."""
    labels = (torch.arange(count) % 10 >= 7).long()
    features = torch.randn(count, 8, generator=generator)
    features[:, 0] = labels * 4.0 + torch.randn(count, generator=generator) * 0.3
    return features, labels


def test_the_weight_decay_is_chosen_on_held_out_features():
    # a huge weight decay flattens the weights and leaves the (unpenalised) bias, which predicts the majority
    # class 0 everywhere; a small one separates the classes
    generator = torch.Generator().manual_seed(0)
    (train, train_labels), (evaluated, eval_labels) = _imbalanced(200, generator), _imbalanced(100, generator)
    top1 = {}
    for name, weight_decays, validation_fraction in (
        ("strong", [1e4], 0.1),
        ("weak", [1e-3], 0.1),
        ("chosen", [1e4, 1e-3], 0.1),
        ("first of two", [1e-3, 1e4], 0.0),
    ):
        metrics = linear_probe_accuracy(
            train,
            train_labels,
            evaluated,
            eval_labels,
            weight_decays=weight_decays,
            validation_fraction=validation_fraction,
        )
        top1[name] = metrics["linear_top1"]
    assert top1["strong"] == pytest.approx(70.0) and top1["weak"] == pytest.approx(100.0)
    assert top1["chosen"] == pytest.approx(100.0)
    # nothing held out: no choice, the largest weight decay
    assert top1["first of two"] == pytest.approx(70.0)


def test_the_scale_and_offset_of_the_features_do_not_matter():
    # standardised features: the weight-decay grid means the same for features in thousandths around 100 as for
    # unit ones (unstandardised, every weight decay of the grid would leave only the majority-class bias: 70%)
    generator = torch.Generator().manual_seed(0)
    (train, train_labels), (evaluated, eval_labels) = _imbalanced(200, generator), _imbalanced(100, generator)
    metrics = linear_probe_accuracy(train, train_labels, evaluated, eval_labels)
    rescaled = linear_probe_accuracy(train * 1e-3 + 100, train_labels, evaluated * 1e-3 + 100, eval_labels)
    assert metrics == rescaled == pytest.approx({"linear_top1": 100.0, "linear_top5": 100.0})


def test_the_same_features_give_the_same_numbers():
    generator = torch.Generator().manual_seed(0)
    train, evaluated = torch.randn(400, 24, generator=generator), torch.randn(200, 24, generator=generator)
    direction = torch.randn(24, 5, generator=generator)
    train_labels = (train @ direction + torch.randn(400, 5, generator=generator)).argmax(1)
    eval_labels = (evaluated @ direction + torch.randn(200, 5, generator=generator)).argmax(1)
    first = linear_probe_accuracy(train, train_labels, evaluated, eval_labels)
    with torch.no_grad():  # as an evaluation may be called: the probe turns gradients on for its own fit
        second = linear_probe_accuracy(train.clone(), train_labels.clone(), evaluated.clone(), eval_labels.clone())
    assert first == second
    assert 40.0 < first["linear_top1"] < 100.0  # a noisy problem: a result that is not trivially the same


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(train_labels=torch.zeros(3, dtype=torch.long)), r"train: features must be \(N, D\) and labels \(N,\)"),
        (dict(eval_features=torch.zeros(2, 5)), "4 dimensions but eval features 5"),
        (dict(eval_features=torch.zeros(0, 4), eval_labels=torch.zeros(0, dtype=torch.long)), "eval: no features"),
        (dict(weight_decays=[]), "weight_decays must be one or more numbers"),
        (dict(weight_decays=[0.1, -1.0]), "weight_decays must be one or more numbers"),
        (dict(validation_fraction=1.0), r"validation_fraction must be in \[0, 1\)"),
        (dict(num_classes=2), r"eval labels must be in \[0, 2\), got 0..2"),
    ],
)
def test_bad_arguments_say_what_to_change(change, message):
    arguments = dict(
        train_features=torch.zeros(4, 4),
        train_labels=torch.tensor([0, 1, 0, 1]),
        eval_features=torch.zeros(2, 4),
        eval_labels=torch.tensor([0, 2]),
    )
    with pytest.raises(ValueError, match=message):
        linear_probe_accuracy(**{**arguments, **change})


def test_evaluator_on_a_tiny_vit_and_raw_pixels():
    images = random_images(48)
    train = _labelled_dataset(images[:32], [index % 2 for index in range(32)])
    evaluated = _labelled_dataset(images[32:], [index % 2 for index in range(32, 48)])
    model = _tiny_vit()

    evaluator = LinearProbeEvaluator(train, evaluated, _processor(), batch_size=8, show_progress=False)
    metrics = evaluator(model)
    assert metrics == pytest.approx({"linear_top1": 100.0, "linear_top5": 100.0})
    assert (evaluator.num_skipped_train, evaluator.num_skipped_eval) == (0, 0)
    # the evaluator is the pure function on the k-NN's features
    train_features = extract_readable_features(model, train, _processor(), show_progress=False)
    eval_features = extract_readable_features(model, evaluated, _processor(), show_progress=False)
    assert metrics == linear_probe_accuracy(
        train_features.features, train_features.labels, eval_features.features, eval_features.labels
    )
    # eval labels swapped: every prediction is now wrong, so features and labels stay paired
    swapped = _labelled_dataset(images[32:], [1 - index % 2 for index in range(32, 48)])
    assert LinearProbeEvaluator(train, swapped, _processor(), show_progress=False)(model)[
        "linear_top1"
    ] == pytest.approx(0.0)
    # a "backbone" without parameters
    assert LinearProbeEvaluator(train, evaluated, _processor(), show_progress=False)(RawPixels())[
        "linear_top1"
    ] == pytest.approx(100.0)


def test_unreadable_images_are_dropped_with_their_labels_and_counted(caplog):
    images = random_images(24)
    rows, labels = _encoded(images), [index % 2 for index in range(24)]
    clean_train, clean_eval = _labelled_dataset(rows[:16], labels[:16]), _labelled_dataset(rows[16:], labels[16:])
    # each unreadable row carries the label its neighbours do not, so a misaligned label changes the result
    train = _labelled_dataset(
        rows[:2] + [_unreadable(TRUNCATED_PNG), _unreadable(NOT_AN_IMAGE)] + rows[2:16],
        labels[:2] + [1, 0] + labels[2:16],
    )
    evaluated = _labelled_dataset(
        rows[16:17] + [_unreadable(TRUNCATED_PNG)] + rows[17:], labels[16:17] + [1] + labels[17:]
    )
    model = _tiny_vit()

    evaluator = LinearProbeEvaluator(train, evaluated, _processor(), batch_size=2, show_progress=False)
    with caplog.at_level(logging.WARNING):
        metrics = evaluator(model)
    expected = LinearProbeEvaluator(clean_train, clean_eval, _processor(), batch_size=2, show_progress=False)(model)
    assert metrics == expected
    assert (evaluator.num_skipped_train, evaluator.num_skipped_eval) == (2, 1)
    messages = [record.getMessage() for record in caplog.records]
    assert (
        sum(TRUNCATED_PNG in message for message in messages) == 2
        and sum(NOT_AN_IMAGE in message for message in messages) == 1
    )
    assert sum("2 of 18 train images" in message and "1 of 9 eval images" in message for message in messages) == 1


@pytest.mark.parametrize("bad_split", ["train", "eval"])
def test_a_split_with_no_readable_image_or_no_image_is_an_error(bad_split):
    good = _labelled_dataset(_encoded(random_images(4)), [0, 1, 0, 1])
    unreadable = _labelled_dataset([_unreadable(TRUNCATED_PNG), _unreadable(NOT_AN_IMAGE)], [0, 1])
    empty = _labelled_dataset([], [])
    for bad, message in ((unreadable, "every one of its 2 images is unreadable"), (empty, "is empty")):
        splits = (bad, good) if bad_split == "train" else (good, bad)
        with pytest.raises(ValueError, match=rf"{bad_split} split.*{message}"):
            LinearProbeEvaluator(*splits, _processor(), show_progress=False)(_tiny_vit())


def test_linear_probe_command_on_a_saved_model_and_its_backbone(tmp_path, capsys):
    from transformers import AutoImageProcessor, AutoModel

    from hf_ssl import DinoForPreTraining
    from hf_ssl.commands.cli import main as hf_ssl_command
    from hf_ssl.data import load_image_dataset

    model_dir = tmp_path / "model"
    model = DinoForPreTraining(tiny_dino_config())
    model.save_pretrained(model_dir)
    model.export_backbone(model_dir / "backbone")
    _processor().save_pretrained(model_dir)

    images = random_images(24)
    for root in (tmp_path / "clean", tmp_path / "corrupt"):
        for split, indices in (("train", range(16)), ("test", range(16, 24))):
            for index in indices:
                folder = root / split / ("horizontal" if index % 2 else "vertical")
                folder.mkdir(parents=True, exist_ok=True)
                images[index].save(folder / f"{index}.png")
    (tmp_path / "corrupt" / "train" / "horizontal" / "broken.png").write_bytes(png_bytes(images[0])[:60])
    (tmp_path / "corrupt" / "test" / "vertical" / "broken.png").write_bytes(b"this is a text file, not an image")

    arguments = [
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(tmp_path / "corrupt"),
        "--weight-decays",
        "1e-2",
        "1e-4",
        "--device",
        "cpu",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "hf_ssl.evaluation.linear_probe", "--model", str(model_dir), *arguments],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(metrics) == ["linear_top1", "linear_top5"]
    summary = [line for line in result.stderr.splitlines() if "unreadable images skipped" in line]
    assert len(summary) == 1 and summary[0].startswith("2 unreadable images skipped: 1 of 17 train images"), (
        result.stderr[-4000:]
    )

    # the same numbers as the good images alone
    clean = load_image_dataset("imagefolder", data_dir=str(tmp_path / "clean"))
    evaluator = LinearProbeEvaluator(
        clean["train"],
        clean["test"],
        AutoImageProcessor.from_pretrained(model_dir),
        weight_decays=[1e-2, 1e-4],
        show_progress=False,
    )
    expected = {key: round(value, 2) for key, value in evaluator(AutoModel.from_pretrained(model_dir)).items()}
    assert metrics == expected

    # the hf-ssl command, on the backbone exported for plain transformers: the same features, the same numbers
    capsys.readouterr()
    assert hf_ssl_command(["linear-probe", "--model", str(model_dir / "backbone"), *arguments]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == expected
