"""Linear-probe evaluation of frozen features: a softmax classifier trained on them, top-1/top-5 on a held-out split.

The features are those k-NN reads (`hf_ssl.evaluation.features.extract_readable_features`: the same decoding,
image processor and image embedding; unreadable images left out with their labels and counted). The probe is
multinomial logistic regression on standardised features, fitted full-batch with L-BFGS: the problem is
convex and the features fit in memory, so each fit goes to (close to) the optimum of its L2 penalty, the
number does not depend on a learning rate or a batch order, and the same features give the same result (on the
same device, with the same number of threads).
The L2 weight decay is the only hyper-parameter: each value of a small grid is fitted on 90% of the train split
and scored on the other 10%, and the best one is refitted on the whole train split.

Command line::

    python -m hf_ssl.evaluation.linear_probe --model outputs/ijepa-demo --dataset fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import torch
import torch.nn.functional as F

from hf_ssl.evaluation.features import (
    ExtractedFeatures,
    extract_split,
    load_model_and_splits,
    subsample,
    top1_top5_accuracy,
)

logger = logging.getLogger(__name__)

# Decades around the optima seen on Fashion-MNIST (raw pixels: 1e-1, a random ViT's CLS token: 1e-3), wide
# enough for features that need much more or much less; fitted from the strongest, each from the previous one.
DEFAULT_WEIGHT_DECAYS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
# L-BFGS stops earlier when no gradient entry is larger: the held-out accuracy no longer moves by then.
GRADIENT_TOLERANCE = 1e-4


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    validation_fraction: float = 0.1,
    max_iterations: int = 100,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (in %) on the eval features of a linear classifier trained on the train features.

    Args:
        train_features: (N, D) features the classifier is trained on.
        train_labels: (N,) int64 class ids in [0, num_classes).
        eval_features: (M, D) features it is scored on.
        eval_labels: (M,) int64 class ids in [0, num_classes).
        num_classes: classes of the classifier; None: the largest label of either split + 1.
        weight_decays: the L2 penalty coefficients to choose from (on the weights, not the bias; added to the
            mean cross-entropy). With more than one, a ``validation_fraction`` of the train features is held
            out, the one with the best held-out top-1 is kept (ties: the lower held-out cross-entropy), then
            refitted on all of them.
        validation_fraction: the share of the train features held out to choose the weight decay; 0, or a
            train split too small to hold out one feature and keep one, fits the largest weight decay directly.
        max_iterations: L-BFGS iterations per fit (each evaluates the loss on every feature once or a few times).
        seed: picks the held-out features; the rest is deterministic (the classifier starts at zero).
        device: where the classifier is trained; None: the train features' device.
    Returns:
        ``{"linear_top1": ..., "linear_top5": ...}``; top-5 is top-``num_classes`` when there are fewer classes
        (then 100).
    """
    _check_features("train", train_features, train_labels)
    _check_features("eval", eval_features, eval_labels)
    if train_features.shape[1] != eval_features.shape[1]:
        raise ValueError(
            f"train features have {train_features.shape[1]} dimensions but eval features {eval_features.shape[1]}"
        )
    if not weight_decays or min(weight_decays) < 0:
        raise ValueError(f"weight_decays must be one or more numbers >= 0, got {list(weight_decays)}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), eval_labels.max())) + 1
    for split, labels in (("train", train_labels), ("eval", eval_labels)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{split} labels must be in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}"
            )
    device = torch.device(device) if device is not None else train_features.device
    train_features, train_labels = train_features.to(device, torch.float32), train_labels.to(device)
    eval_features, eval_labels = eval_features.to(device, torch.float32), eval_labels.to(device)

    weight_decays = sorted(set(weight_decays), reverse=True)
    weight_decay, initial = weight_decays[0], None
    num_held_out = round(validation_fraction * len(train_features))
    if len(weight_decays) > 1 and 1 <= num_held_out < len(train_features):
        order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed)).to(device)
        held_out, fitted = order[:num_held_out], order[num_held_out:]
        weight_decay, initial = _select_weight_decay(
            train_features[fitted],
            train_labels[fitted],
            train_features[held_out],
            train_labels[held_out],
            num_classes,
            weight_decays,
            max_iterations,
        )
    # the probe reported: refitted on the whole train split, from the chosen fit when there was a choice
    train_features, eval_features = _standardise(train_features, eval_features)
    weight, bias = _fit_softmax_regression(
        train_features, train_labels, num_classes, weight_decay, max_iterations, initial
    )
    top1, top5 = top1_top5_accuracy(F.linear(eval_features, weight, bias), eval_labels)
    return {"linear_top1": top1, "linear_top5": top5}


def _check_features(split: str, features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{split}: features must be (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"{split}: no features to {'train' if split == 'train' else 'score'} the linear probe on")


def _standardise(reference: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``reference`` and ``others`` centred and scaled by ``reference``'s per-dimension mean and std."""
    # The reference split's statistics, frozen (MAE's affine-free BatchNorm in eval mode): one weight-decay grid
    # then suits every backbone's feature scale. A constant dimension stays near 0 instead of dividing by 0.
    mean, std = reference.mean(0), reference.std(0, correction=0).clamp_min(1e-6)
    return tuple((features - mean) / std for features in (reference, *others))


def _select_weight_decay(
    fit_features, fit_labels, held_out_features, held_out_labels, num_classes, weight_decays, max_iterations
) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    """The weight decay (of ``weight_decays``, largest first) whose fit has the best held-out top-1 (then the lowest
    held-out cross-entropy), and that fit."""
    fit_features, held_out_features = _standardise(fit_features, held_out_features)
    fits, accuracies, losses = [], [], []
    for weight_decay in weight_decays:
        # warm start from the previous, more regularised, solution: the next optimum is near it
        fits.append(
            _fit_softmax_regression(
                fit_features, fit_labels, num_classes, weight_decay, max_iterations, fits[-1] if fits else None
            )
        )
        logits = F.linear(held_out_features, *fits[-1])
        accuracies.append((logits.argmax(1) == held_out_labels).float().mean().item() * 100)
        losses.append(F.cross_entropy(logits, held_out_labels).item())
    # a small held-out part often ties on accuracy; its cross-entropy then tells the fits apart
    best = min(range(len(weight_decays)), key=lambda index: (-accuracies[index], losses[index]))
    logger.info(
        "linear probe: held-out top-1 %s on %d features; weight decay %g chosen",
        ", ".join(
            f"{accuracy:.2f}% (weight decay {weight_decay:g})"
            for weight_decay, accuracy in zip(weight_decays, accuracies)
        ),
        len(held_out_labels),
        weight_decays[best],
    )
    return weight_decays[best], fits[best]


def _fit_softmax_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iterations: int,
    initial: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight (C, D), bias (C,))`` minimising mean cross-entropy + ``weight_decay / 2 * ||weight||^2`` by full-batch
    L-BFGS from ``initial`` (zeros when None)."""
    if initial is None:  # (C, D) as in nn.Linear: the weight's gradient is then a fast (C, N) @ (N, D) product
        initial = (features.new_zeros(num_classes, features.shape[1]), features.new_zeros(num_classes))
    weight, bias = (tensor.detach().clone().requires_grad_(True) for tensor in initial)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iterations,
        tolerance_grad=GRADIENT_TOLERANCE,
        line_search_fn="strong_wolfe",
    )

    def loss_and_gradient():
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(features, weight, bias), labels) + weight_decay / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(loss_and_gradient)  # L-BFGS runs the closure with gradients on, even under no_grad
    return weight.detach(), bias.detach()


@dataclass
class LinearProbeEvaluator:
    """Linear-probe accuracy of a model's frozen features on a labelled (train, eval) pair of datasets.

    Called like `KnnEvaluator`: ``evaluator(model, device=None)`` extracts the features of both splits (with
    ``batch_size`` images at a time, on ``device`` or the model's), trains the probe on the train split's (on the
    same device) and returns ``{"linear_top1": ..., "linear_top5": ...}`` in %, by `linear_probe_accuracy` with
    ``weight_decays``, ``validation_fraction``, ``max_iterations`` and ``seed``. The number of classes is the
    ``label`` column's ``ClassLabel`` when it has one, else the largest label + 1.

    Unreadable images are left out of both splits (see `hf_ssl.evaluation.features.extract_readable_features`);
    ``num_skipped_train`` and ``num_skipped_eval`` count them for the last call, and a split with no readable image
    is a ``ValueError``.
    """

    train_dataset: object
    eval_dataset: object
    image_processor: object
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS
    validation_fraction: float = 0.1
    max_iterations: int = 100
    seed: int = 0
    batch_size: int = 256
    show_progress: bool = True
    num_skipped_train: int = field(default=0, init=False)
    num_skipped_eval: int = field(default=0, init=False)

    def __call__(self, model: torch.nn.Module, device=None) -> dict[str, float]:
        self.num_skipped_train = self.num_skipped_eval = 0
        train = self._extract(model, self.train_dataset, "train split (train_dataset)", device)
        self.num_skipped_train = train.num_skipped
        evaluated = self._extract(model, self.eval_dataset, "eval split (eval_dataset)", device)
        self.num_skipped_eval = evaluated.num_skipped
        if self.num_skipped_train or self.num_skipped_eval:
            logger.warning(
                "The linear probe left out %d of %d train images and %d of %d eval images: they could not be read "
                "(the warnings above name them)",
                self.num_skipped_train,
                len(self.train_dataset),
                self.num_skipped_eval,
                len(self.eval_dataset),
            )
        class_counts = [_class_label_count(dataset) for dataset in (self.train_dataset, self.eval_dataset)]
        return linear_probe_accuracy(
            train.features,
            train.labels,
            evaluated.features,
            evaluated.labels,
            num_classes=max(class_counts) if None not in class_counts else None,
            weight_decays=self.weight_decays,
            validation_fraction=self.validation_fraction,
            max_iterations=self.max_iterations,
            seed=self.seed,
            device=device if device is not None else next(model.parameters(), torch.empty(0)).device,
        )

    def _extract(self, model: torch.nn.Module, dataset, split: str, device) -> ExtractedFeatures:
        return extract_split(
            model,
            dataset,
            self.image_processor,
            f"the linear probe's {split}",
            self.batch_size,
            device,
            self.show_progress,
        )


def _class_label_count(dataset, label_column: str = "label") -> int | None:
    """The number of classes of ``dataset``'s ``ClassLabel`` label column; None when the column is not one."""
    label_feature = (getattr(dataset, "features", None) or {}).get(label_column)
    return label_feature.num_classes if isinstance(label_feature, datasets.ClassLabel) else None


def main(argv: list[str] | None = None, prog: str = "python -m hf_ssl.evaluation.linear_probe") -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog=prog, description="Linear-probe accuracy of a pretrained model's frozen features."
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
    parser.add_argument("--train-split", default="train", help="The split the probe is trained on.")
    parser.add_argument(
        "--eval-split", "--test-split", dest="eval_split", default="test", help="The split it is scored on."
    )
    parser.add_argument("--image-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument(
        "--weight-decays",
        type=float,
        nargs="+",
        default=list(DEFAULT_WEIGHT_DECAYS),
        help="L2 penalties to choose from on a held-out part of the train split.",
    )
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="The held-out part of the train split.")
    parser.add_argument("--max-iterations", type=int, default=100, help="L-BFGS iterations per fit.")
    parser.add_argument("--seed", type=int, default=0, help="Picks the held-out images.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", "--max-test-samples", dest="max_eval_samples", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    model, image_processor, (train, evaluated) = load_model_and_splits(args, (args.train_split, args.eval_split))
    evaluator = LinearProbeEvaluator(
        subsample(train, args.max_train_samples),
        subsample(evaluated, args.max_eval_samples),
        image_processor,
        weight_decays=args.weight_decays,
        validation_fraction=args.validation_fraction,
        max_iterations=args.max_iterations,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    metrics = evaluator(model, args.device)
    print(
        f"{evaluator.num_skipped_train + evaluator.num_skipped_eval} unreadable images skipped: "
        f"{evaluator.num_skipped_train} of {len(evaluator.train_dataset)} train images (split {args.train_split!r}), "
        f"{evaluator.num_skipped_eval} of {len(evaluator.eval_dataset)} eval images (split {args.eval_split!r})",
        file=sys.stderr,
    )
    print(json.dumps({key: round(value, 2) for key, value in metrics.items()}))
    return metrics


if __name__ == "__main__":
    main()
