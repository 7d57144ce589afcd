import math

import pytest
import torch

from hf_ssl.evaluation.knn import image_embedding, knn_accuracy, knn_predict, subsample


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


def test_k_larger_than_bank_and_length_mismatch():
    bank, labels = torch.randn(3, 2), torch.tensor([0, 1, 0])
    assert knn_predict(bank, labels, torch.randn(2, 2), num_classes=2, k=20).shape == (2, 2)
    with pytest.raises(ValueError, match="labels"):
        knn_predict(bank, labels[:2], torch.randn(2, 2), num_classes=2)


def test_image_embedding_uses_pooler_or_cls():
    from transformers import ViTConfig, ViTModel

    from tests.helpers import TINY_VIT

    config = ViTConfig(**{k: v for k, v in TINY_VIT.items() if k != "model_type"})
    model = ViTModel(config, add_pooling_layer=False).eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(image_embedding(model, pixels), model(pixel_values=pixels).last_hidden_state[:, 0])


def test_subsample_is_fixed_and_bounded(tiny_image_dataset):
    first = subsample(tiny_image_dataset, 5, seed=1)
    second = subsample(tiny_image_dataset, 5, seed=1)
    assert len(first) == 5 and first["label"] == second["label"]
    assert subsample(tiny_image_dataset, None) is tiny_image_dataset
