import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_ssl.evaluation.knn import (
    KnnEvaluator,
    extract_readable_features,
    image_embedding,
    knn_accuracy,
    knn_predict,
    subsample,
)
from tests.evaluation.common import NOT_AN_IMAGE, RANKED_LABELS, TRUNCATED_PNG, ranked_query
from tests.evaluation.common import encoded as _encoded
from tests.evaluation.common import labelled_dataset as _labelled_dataset
from tests.evaluation.common import processor as _processor
from tests.evaluation.common import tiny_vit as _tiny_vit
from tests.evaluation.common import unreadable as _unreadable
from tests.helpers import png_bytes, random_images, tiny_dino_config

ROOT = Path(__file__).resolve().parents[2]


def test_weighted_vote_matches_hand_computation():
    # bank: three unit vectors; query close to the first two
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[3.0, 4.0]])  # normalised: (0.6, 0.8); similarities 0.6, 0.8, -0.6
    scores = knn_predict(bank, labels, query, num_classes=2, k=2, temperature=0.5)
    expected = torch.tensor([[math.exp(0.6 / 0.5), math.exp(0.8 / 0.5)]])
    torch.testing.assert_close(scores, expected)
    # with k=3 the far neighbour adds exp(-0.6/0.5) to class 1
    scores = knn_predict(bank, labels, query, num_classes=2, k=3, temperature=0.5)
    torch.testing.assert_close(scores[0, 1], torch.tensor(math.exp(1.6) + math.exp(-1.2)))


def test_temperature_changes_the_winner():
    # class 0: one very close neighbour; class 1: two medium ones
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    sharp = knn_predict(bank, labels, query, num_classes=2, k=3, temperature=0.07).argmax(1)
    flat = knn_predict(bank, labels, query, num_classes=2, k=3, temperature=100.0).argmax(1)
    assert sharp.item() == 0 and flat.item() == 1


def test_accuracy_on_separable_clusters_and_chunking():
    generator = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 5
    train_labels = torch.arange(4).repeat(25)
    test_labels = torch.arange(4).repeat(10)
    train = centers[train_labels] + torch.randn(100, 4, generator=generator) * 0.1
    test = centers[test_labels] + torch.randn(40, 4, generator=generator) * 0.1
    metrics = knn_accuracy(train, train_labels, test, test_labels, k=5)
    assert metrics["knn_top1"] == pytest.approx(100.0) and metrics["knn_top5"] == pytest.approx(100.0)
    wrong = knn_accuracy(train, (train_labels + 1) % 4, test, test_labels, k=5)
    assert wrong["knn_top1"] == pytest.approx(0.0)
    full = knn_predict(train, train_labels, test, 4, k=5)
    chunked = knn_predict(train, train_labels, test, 4, k=5, chunk_size=7)
    torch.testing.assert_close(full, chunked)


def test_top5_counts_a_label_ranked_fifth_but_not_sixth():
    # the bank: one feature per class at its corner e_c, all 8 voting (k >= 8): the class scores follow the
    # query's similarity to the corners, whose ranking puts the 4 queries' labels 1st, 4th, 5th and 6th
    bank, bank_labels = torch.eye(8), torch.arange(8)
    queries = ranked_query().repeat(len(RANKED_LABELS), 1)
    metrics = knn_accuracy(bank, bank_labels, queries, RANKED_LABELS, k=8)
    assert metrics == pytest.approx({"knn_top1": 25.0, "knn_top5": 75.0})  # top-4 would be 50, top-6 100


def test_k_larger_than_bank_and_length_mismatch():
    bank, labels = torch.randn(3, 2), torch.tensor([0, 1, 0])
    assert knn_predict(bank, labels, torch.randn(2, 2), num_classes=2, k=20).shape == (2, 2)
    with pytest.raises(ValueError, match="labels"):
        knn_predict(bank, labels[:2], torch.randn(2, 2), num_classes=2)


def test_image_embedding_uses_pooler_or_cls():
    model = _tiny_vit()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(image_embedding(model, pixels), model(pixel_values=pixels).last_hidden_state[:, 0])


def test_subsample_is_fixed_and_bounded(tiny_image_dataset):
    first = subsample(tiny_image_dataset, 5, seed=1)
    second = subsample(tiny_image_dataset, 5, seed=1)
    assert len(first) == 5 and first["label"] == second["label"]
    assert subsample(tiny_image_dataset, None) is tiny_image_dataset


def test_unreadable_images_are_dropped_with_their_labels_and_counted(caplog):
    rows, labels = _encoded(random_images(14)), [index % 2 for index in range(14)]
    clean_bank, clean_queries = _labelled_dataset(rows[:10], labels[:10]), _labelled_dataset(rows[10:], labels[10:])
    # batch_size 2: the bank's second batch is all unreadable, the queries' first batch is half unreadable;
    # each unreadable row carries the label its neighbours do not, so a misaligned label changes the votes
    bank = _labelled_dataset(
        rows[:2] + [_unreadable(TRUNCATED_PNG), _unreadable(NOT_AN_IMAGE)] + rows[2:10],
        labels[:2] + [1, 0] + labels[2:10],
    )
    queries = _labelled_dataset(
        rows[10:11] + [_unreadable(TRUNCATED_PNG)] + rows[11:], labels[10:11] + [1] + labels[11:]
    )
    model = _tiny_vit()

    evaluator = KnnEvaluator(bank, queries, _processor(), k=3, batch_size=2, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="hf_ssl.evaluation"):  # the features' warnings and k-NN's summary
        metrics = evaluator(model)
    expected = KnnEvaluator(clean_bank, clean_queries, _processor(), k=3, batch_size=2, show_progress=False)(model)
    assert metrics == pytest.approx(expected)
    assert (evaluator.num_skipped_bank, evaluator.num_skipped_queries) == (2, 1)
    messages = [record.getMessage() for record in caplog.records]
    assert (
        sum(TRUNCATED_PNG in message for message in messages) == 2
        and sum(NOT_AN_IMAGE in message for message in messages) == 1
    )
    assert sum("2 of 12 bank images" in message and "1 of 5 query images" in message for message in messages) == 1

    read = extract_readable_features(model, bank, _processor(), batch_size=2, show_progress=False)
    clean = extract_readable_features(model, clean_bank, _processor(), batch_size=2, show_progress=False)
    assert read.num_skipped == 2 and clean.num_skipped == 0
    torch.testing.assert_close(read.features, clean.features)
    assert read.labels.tolist() == clean.labels.tolist() == labels[:10]


def test_knn_command_skips_a_corrupt_file_in_each_imagefolder_split(tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    from hf_ssl import DinoForPreTraining
    from hf_ssl.data import load_image_dataset

    model_dir = tmp_path / "model"
    model = DinoForPreTraining(tiny_dino_config())
    model.save_pretrained(model_dir)
    model.export_backbone(model_dir / "backbone")
    _processor().save_pretrained(model_dir)

    images = random_images(16)
    for root in (tmp_path / "clean", tmp_path / "corrupt"):
        for split, indices in (("train", range(12)), ("test", range(12, 16))):
            for index in indices:
                folder = root / split / ("horizontal" if index % 2 else "vertical")
                folder.mkdir(parents=True, exist_ok=True)
                images[index].save(folder / f"{index}.png")
    (tmp_path / "corrupt" / "train" / "horizontal" / "broken.png").write_bytes(png_bytes(images[0])[:60])
    (tmp_path / "corrupt" / "test" / "vertical" / "broken.png").write_bytes(b"this is a text file, not an image")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_ssl.evaluation.knn",
            "--model",
            str(model_dir),
            "--dataset",
            "imagefolder",
            "--data-dir",
            str(tmp_path / "corrupt"),
            "--k",
            "3",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(metrics) == ["knn_top1", "knn_top5"]
    summary = [line for line in result.stderr.splitlines() if "unreadable images skipped" in line]
    assert len(summary) == 1 and summary[0].startswith("2 unreadable images skipped"), result.stderr[-4000:]

    # the same numbers as the good images alone
    clean = load_image_dataset("imagefolder", data_dir=str(tmp_path / "clean"))
    evaluator = KnnEvaluator(
        clean["train"], clean["test"], AutoImageProcessor.from_pretrained(model_dir), k=3, show_progress=False
    )
    expected = evaluator(AutoModel.from_pretrained(model_dir))
    assert metrics == {key: round(value, 2) for key, value in expected.items()}


@pytest.mark.parametrize("unreadable_split", ["bank", "queries"])
def test_a_split_with_no_readable_image_is_an_error(unreadable_split):
    good = _labelled_dataset(_encoded(random_images(4)), [0, 1, 0, 1])
    bad = _labelled_dataset([_unreadable(TRUNCATED_PNG), _unreadable(NOT_AN_IMAGE)], [0, 1])
    bank, queries = (bad, good) if unreadable_split == "bank" else (good, bad)
    evaluator = KnnEvaluator(bank, queries, _processor(), k=3, show_progress=False)
    with pytest.raises(ValueError, match=rf"{unreadable_split}.*every one of its 2 images is unreadable"):
        evaluator(_tiny_vit())


def test_with_linear_probe_the_evaluator_adds_the_probe_of_the_same_features(monkeypatch):
    from hf_ssl.evaluation import knn

    images, labels = random_images(24), [index % 2 for index in range(24)]
    bank, queries = (
        _labelled_dataset(_encoded(images[:16]), labels[:16]),
        _labelled_dataset(_encoded(images[16:]), labels[16:]),
    )
    evaluator = KnnEvaluator(bank, queries, _processor(), k=3, show_progress=False)
    knn_only = evaluator(_tiny_vit())
    assert set(knn_only) == {"knn_top1", "knn_top5"}
    seen = []
    original = knn.linear_probe_accuracy

    def recording(train_features, train_labels, eval_features, eval_labels, **kwargs):
        seen.append((train_features, train_labels, eval_features, eval_labels))
        return original(train_features, train_labels, eval_features, eval_labels, **kwargs)

    monkeypatch.setattr(knn, "linear_probe_accuracy", recording)
    evaluator.linear_probe = True
    both = evaluator(_tiny_vit())
    assert {key: both[key] for key in knn_only} == knn_only  # k-NN unchanged
    train_features, train_labels, eval_features, eval_labels = seen[0]
    assert train_features.shape == (16, 32) and eval_features.shape == (8, 32)  # the bank's and the queries' features
    assert train_labels.tolist() == labels[:16] and eval_labels.tolist() == labels[16:]
    assert both["linear_top1"] == original(train_features, train_labels, eval_features, eval_labels)["linear_top1"]
