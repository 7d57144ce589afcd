"""Weighted k-nearest-neighbour evaluation of frozen features (Wu et al. 2018, as used by DINO).

Features are L2-normalised; each test image takes the ``k`` most cosine-similar training images,
and each neighbour votes for its class with weight ``exp(similarity / temperature)``.

The features are read by `hf_ssl.evaluation.features` (decoded as in training; an unreadable image, a
truncated file or a text file named .jpg, is left out with its label, logged and counted rather than
stopping the evaluation); its names are importable from here too.

Command line::

    python -m hf_ssl.evaluation.knn --model outputs/dino-demo --dataset fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# the shared names are re-exported: they were defined here, and `from hf_ssl.evaluation.knn import ...` still works
from hf_ssl.evaluation.features import (  # noqa: F401
    MODEL_PATH_HELP,
    ExtractedFeatures,
    RawPixels,
    check_model_path,
    command_error,
    extract_features,
    extract_readable_features,
    extract_split,
    image_embedding,
    load_model_and_splits,
    resize_bands_for_evaluation,
    subsample,
    top1_top5_accuracy,
)
from hf_ssl.evaluation.linear_probe import linear_probe_accuracy

logger = logging.getLogger(__name__)


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores of a weighted k-NN vote.

    Args:
        train_features: (N, D) features of the labelled bank (normalised here).
        train_labels: (N,) int64 class ids in [0, num_classes).
        test_features: (M, D) features to classify.
    Returns:
        (M, num_classes) float scores; ``argmax`` is the prediction.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} train features but {train_labels.shape[0]} labels")
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(test_features.float(), dim=1)
    scores = []
    for start in range(0, queries.shape[0], chunk_size):
        similarity = queries[start : start + chunk_size] @ bank.T  # (m, N)
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(top_index.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels[top_index], weights)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (in %) of the weighted k-NN classifier."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    top1, top5 = top1_top5_accuracy(scores, test_labels)
    return {"knn_top1": top1, "knn_top5": top5}


@dataclass
class KnnEvaluator:
    """k-NN accuracy of a model's features on a labelled (train, test) pair of datasets; with ``linear_probe``, also
    the linear probe's (`hf_ssl.evaluation.linear_probe.linear_probe_accuracy`: ``linear_top1``/``linear_top5``),
    fitted on the bank's features and scored on the queries'.

    The train split is the bank of labelled neighbours, the test split the queries. Unreadable images
    are left out of both (see `hf_ssl.evaluation.features.extract_readable_features`); ``num_skipped_bank`` and
    ``num_skipped_queries`` count them for the last call, and a split with no readable image is a
    ``ValueError``.
    """

    train_dataset: object
    test_dataset: object
    image_processor: object
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256
    show_progress: bool = True
    linear_probe: bool = False
    channels_last: bool | None = None
    num_skipped_bank: int = field(default=0, init=False)
    num_skipped_queries: int = field(default=0, init=False)

    def __call__(self, model: torch.nn.Module, device=None) -> dict[str, float]:
        self.num_skipped_bank = self.num_skipped_queries = 0
        bank = self._extract(model, self.train_dataset, "bank (train_dataset)", device)
        self.num_skipped_bank = bank.num_skipped
        queries = self._extract(model, self.test_dataset, "queries (test_dataset)", device)
        self.num_skipped_queries = queries.num_skipped
        if self.num_skipped_bank or self.num_skipped_queries:
            logger.warning(
                "k-NN left out %d of %d bank images and %d of %d query images: they could not be read (the warnings "
                "above name them)",
                self.num_skipped_bank,
                len(self.train_dataset),
                self.num_skipped_queries,
                len(self.test_dataset),
            )
        metrics = knn_accuracy(bank.features, bank.labels, queries.features, queries.labels, self.k, self.temperature)
        if self.linear_probe:  # on the same features: one extraction for both
            metrics.update(linear_probe_accuracy(bank.features, bank.labels, queries.features, queries.labels))
        return metrics

    def _extract(self, model: torch.nn.Module, dataset, split: str, device) -> ExtractedFeatures:
        return extract_split(
            model,
            dataset,
            self.image_processor,
            f"the k-NN {split}",
            self.batch_size,
            device,
            self.show_progress,
            self.channels_last,
        )


def main(argv: list[str] | None = None, prog: str = "python -m hf_ssl.evaluation.knn") -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog=prog, description="Weighted k-NN accuracy of a pretrained model's frozen features."
    )
    parser.add_argument(
        "--model", required=True, help="Model directory or Hub id (hf_ssl checkpoint or plain transformers model)."
    )
    parser.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="Dataset: a Hub id, a local directory, 'imagefolder', 'parquet', or 'fashion_mnist'.",
    )
    parser.add_argument("--dataset-config", default=None, help="Dataset configuration name.")
    parser.add_argument("--data-dir", default=None, help="data_dir for imagefolder-style datasets.")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--image-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-test-samples", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    model, image_processor, (train, test) = load_model_and_splits(args, (args.train_split, args.test_split))
    evaluator = KnnEvaluator(
        subsample(train, args.max_train_samples),
        subsample(test, args.max_test_samples),
        image_processor,
        k=args.k,
        temperature=args.temperature,
        batch_size=args.batch_size,
    )
    metrics = evaluator(model, args.device)
    print(
        f"{evaluator.num_skipped_bank + evaluator.num_skipped_queries} unreadable images skipped: "
        f"{evaluator.num_skipped_bank} of {len(evaluator.train_dataset)} in the bank (split {args.train_split!r}), "
        f"{evaluator.num_skipped_queries} of {len(evaluator.test_dataset)} queries (split {args.test_split!r})",
        file=sys.stderr,
    )
    print(json.dumps({key: round(value, 2) for key, value in metrics.items()}))
    return metrics


if __name__ == "__main__":
    main()
