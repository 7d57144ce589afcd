"""Classification metrics computed locally (top-1, top-5, macro F1), as ``Trainer(compute_metrics=...)`` takes them.

The ``evaluate`` package downloads its metric code at run time, so an offline machine (a Kaggle session without
internet, a cluster node) could not score a run with it; these few lines need nothing but numpy.
"""

from __future__ import annotations

import numpy as np


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy and macro F1, in [0, 1].

    Args:
        logits: (N, C) class scores.
        labels: (N,) int class ids in [0, C).
    Returns:
        ``accuracy`` (top-1), ``top5_accuracy`` (the label among the min(5, C) best scores) and ``macro_f1``: the
        unweighted mean over classes of 2 TP / (2 TP + FP + FN), over the classes that occur among the labels or
        the predictions (a class with neither has no F1), as scikit-learn's ``f1_score(average="macro")``.
    """
    logits, labels = np.asarray(logits), np.asarray(labels).astype(np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    if labels.size == 0:
        raise ValueError("no examples to score")
    num_classes = logits.shape[1]
    predictions = logits.argmax(axis=1)
    k = min(5, num_classes)
    top_k = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)  # confusion: counts[label, prediction]
    np.add.at(counts, (labels, predictions), 1)
    true_positives = np.diag(counts)
    false_positives = counts.sum(axis=0) - true_positives
    false_negatives = counts.sum(axis=1) - true_positives
    present = (counts.sum(axis=0) + counts.sum(axis=1)) > 0
    f1 = (
        2
        * true_positives[present]
        / (2 * true_positives[present] + false_positives[present] + false_negatives[present])
    )
    return {
        "accuracy": float((predictions == labels).mean()),
        "top5_accuracy": float((top_k == labels[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1.mean()),
    }


def compute_metrics(evaluation) -> dict[str, float]:
    """``Trainer(compute_metrics=compute_metrics)``: `classification_metrics` of an ``EvalPrediction``."""
    logits = evaluation.predictions[0] if isinstance(evaluation.predictions, tuple) else evaluation.predictions
    return classification_metrics(logits, evaluation.label_ids)
