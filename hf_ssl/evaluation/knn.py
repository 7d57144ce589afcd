"""Weighted k-nearest-neighbour evaluation of frozen features (Wu et al. 2018, as used by DINO).

Features are L2-normalised; each test image takes the ``k`` most cosine-similar training images,
and each neighbour votes for its class with weight ``exp(similarity / temperature)``.

Images are decoded here, as in training (`hf_ssl.data.images`); an unreadable one (a truncated
file, a text file named .jpg) is left out with its label, logged and counted rather than stopping
the evaluation.

Command line::

    python -m hf_ssl.evaluation.knn --model outputs/dino-demo --dataset fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_ssl.data.images import BandLayoutError, decode_bands, decode_image, describe_image, to_8bit
from hf_ssl.data.loading import undecoded_images
from hf_ssl.models.image_processing import processor_image_size, processor_num_channels

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
    ranked = scores.argsort(dim=1, descending=True)
    top1 = (ranked[:, 0] == test_labels).float().mean().item() * 100
    top5 = (ranked[:, : min(5, num_classes)] == test_labels[:, None]).any(dim=1).float().mean().item() * 100
    return {"knn_top1": top1, "knn_top5": top5}


def image_embedding(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The image-level feature of a transformers vision model: ``pooler_output`` when the model has
    one (hf_ssl models put the CLS embedding there; CNNs their pooled map), else the CLS token."""
    outputs = model(pixel_values=pixel_values)
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    return outputs.last_hidden_state[:, 0]


class RawPixels(torch.nn.Module):
    """The identity as a "backbone": the feature of an image is its pixels as the image processor prepares them,
    flattened to (B, 3 * H * W). k-NN on these is the bar a learned representation has to clear."""

    def forward(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        return BaseModelOutputWithPooling(last_hidden_state=pixel_values, pooler_output=pixel_values.flatten(1))


@dataclass
class ExtractedFeatures:
    """What `extract_readable_features` read from a labelled dataset.

    ``features``: (N, D) float32 on the CPU, one row per readable image, in dataset order ((0, 0) when
    no image could be read); ``labels``: (N,) int64, ``labels[i]`` the label of ``features[i]``;
    ``num_skipped``: the unreadable images left out, each with its label (N + num_skipped rows in all).
    """

    features: torch.Tensor
    labels: torch.Tensor
    num_skipped: int


@torch.no_grad()
def extract_readable_features(
    model: torch.nn.Module,
    dataset,
    image_processor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    show_progress: bool = True,
    channels_last: bool | None = None,
) -> ExtractedFeatures:
    """Features and labels of every readable image of a ``datasets.Dataset``, and how many were not.

    Images are decoded as training decodes them (`hf_ssl.data.images.decode_image`, then `to_8bit`:
    16-bit scaled by its range, alpha dropped, CMYK and palettes to RGB), then prepared by
    ``image_processor`` exactly as a transformers user would (``processor(images)["pixel_values"]``). A processor
    of other than 3 channels (multispectral / hyperspectral) only normalises: the bands are read with
    `hf_ssl.data.decode_bands` (with ``channels_last``) and resized to its size by `resize_bands_for_evaluation` first.
    A decoding ``Image`` column is read undecoded, so a file that cannot be decoded is left out
    together with its label and logged (its path when known) instead of raising inside ``datasets``.
    """
    device = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    dataset = undecoded_images(dataset, image_column)
    channels = processor_num_channels(image_processor)
    processor_kwargs = {} if channels == 3 else {"input_data_format": "channels_first"}
    if channels == 3:

        def read_image(item):
            image = to_8bit(decode_image(item))
            return image if image.mode == "RGB" else image.convert("RGB")  # a processor of 3 values takes 3 channels
    else:  # N-band arrays: the processor only normalises, so they are resized to its size first
        side = processor_image_size(image_processor)

        def read_image(item):
            return resize_bands_for_evaluation(decode_bands(item, channels, channels_last=channels_last), side)
    was_training = model.training
    model.eval()
    features, labels, num_skipped = [], [], 0
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="features", disable=not show_progress, leave=False):
        batch = dataset[start : start + batch_size]
        images, kept = [], []
        for offset, item in enumerate(batch[image_column]):
            try:
                images.append(read_image(item))
            except BandLayoutError:  # a setting to give (data.channels_last), the same for every image
                raise
            except Exception as error:  # any failure to read the pixels makes the row unreadable, as in training
                num_skipped += 1
                logger.warning("Skipping unreadable %s: %s: %s", describe_image(item, f"row {start + offset}"), type(error).__name__, error)
            else:
                kept.append(offset)
        if not images:
            continue
        pixel_values = image_processor(images, return_tensors="pt", **processor_kwargs)["pixel_values"]
        features.append(image_embedding(model, pixel_values.to(device)).float().cpu())
        batch_labels = batch[label_column]
        labels.append(torch.as_tensor([batch_labels[offset] for offset in kept], dtype=torch.long))
    model.train(was_training)
    if not features:
        return ExtractedFeatures(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), num_skipped)
    return ExtractedFeatures(torch.cat(features), torch.cat(labels), num_skipped)


def resize_bands_for_evaluation(bands: np.ndarray, size: int) -> np.ndarray:
    """A float ``(C, H, W)`` array resized, whole, to ``(C, size, size)`` (antialiased bilinear): what the RGB
    processors' resize does, for bands PIL cannot resize. A user of an exported N-band backbone does the same
    before its processor normalises."""
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(bands, dtype=np.float32))[None], size=(size, size), mode="bilinear",
        align_corners=False, antialias=True,
    )
    return resized[0].numpy()


def extract_features(
    model: torch.nn.Module,
    dataset,
    image_processor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, D), labels (N,))`` of the readable images of a ``datasets.Dataset``; see
    `extract_readable_features`, which also says how many images were left out."""
    extracted = extract_readable_features(
        model, dataset, image_processor, batch_size, device, image_column, label_column, show_progress
    )
    return extracted.features, extracted.labels


@dataclass
class KnnEvaluator:
    """k-NN accuracy of a model's features on a labelled (train, test) pair of datasets; with ``linear_probe``, also
    the linear probe's (``hf_ssl.evaluation.linear_probe.linear_probe_accuracy``: ``linear_top1``/``linear_top5``),
    fitted on the bank's features and scored on the queries'.

    The train split is the bank of labelled neighbours, the test split the queries. Unreadable images
    are left out of both (see `extract_readable_features`); ``num_skipped_bank`` and
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
                "k-NN left out %d of %d bank images and %d of %d query images: they could not be read (the warnings above name them)",
                self.num_skipped_bank,
                len(self.train_dataset),
                self.num_skipped_queries,
                len(self.test_dataset),
            )
        metrics = knn_accuracy(bank.features, bank.labels, queries.features, queries.labels, self.k, self.temperature)
        if self.linear_probe:  # on the same features: one extraction for both
            from hf_ssl.evaluation.linear_probe import linear_probe_accuracy

            metrics.update(linear_probe_accuracy(bank.features, bank.labels, queries.features, queries.labels))
        return metrics

    def _extract(self, model: torch.nn.Module, dataset, split: str, device) -> ExtractedFeatures:
        if len(dataset) == 0:
            raise ValueError(f"the k-NN {split} is empty: give it a labelled dataset with at least one image")
        extracted = extract_readable_features(
            model, dataset, self.image_processor, self.batch_size, device, show_progress=self.show_progress,
            channels_last=self.channels_last,
        )
        if extracted.num_skipped == len(dataset):
            raise ValueError(
                f"the k-NN {split}: every one of its {len(dataset)} images is unreadable (the warnings above name "
                "the files and errors); fix or replace the files, or point the evaluation at another split"
            )
        return extracted


def subsample(dataset, max_samples: int | None, seed: int = 0):
    """A fixed random subset of at most ``max_samples`` rows (the whole dataset when None)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    indices = np.random.default_rng(seed).permutation(len(dataset))[:max_samples]
    return dataset.select(np.sort(indices))


MODEL_PATH_HELP = "a trained run's output directory (e.g. outputs/run), its backbone/ folder, or a Hub model id (ORG/NAME)"


def command_error(message: str) -> SystemExit:
    """End an evaluation command on a user's mistake: ``error: message`` on stderr, exit code 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def check_model_path(name_or_path: str) -> None:
    """Stop with a one-line error when ``--model`` names no model a command can load: a file, a folder without
    ``config.json``, or a path that does not exist and cannot be a Hub id. A well-formed Hub id is left to
    ``from_pretrained`` (``load_model_and_splits`` reports it when it cannot be loaded)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise command_error(f"--model {name_or_path} is a file: give {MODEL_PATH_HELP}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            checkpoints = [found.parent for found in path.glob("checkpoint-*/config.json")]
            latest = f" (its latest checkpoint: {max(checkpoints, key=_checkpoint_step)})" if checkpoints else ""
            raise command_error(f"--model {name_or_path} is a folder without config.json{latest}: give {MODEL_PATH_HELP}")
        return
    try:
        validate_repo_id(name_or_path)  # an absolute or ./ path, or more than one /, cannot be a Hub id
    except HFValidationError:
        raise command_error(f"--model {name_or_path} does not exist: give {MODEL_PATH_HELP}") from None


def _checkpoint_step(folder: Path) -> int:
    step = folder.name.removeprefix("checkpoint-")
    return int(step) if step.isdigit() else -1


def load_model_and_splits(args, splits: tuple[str, ...]):
    """What the evaluation commands load from their parsed arguments (``--model``, ``--device``, ``--dataset``,
    ``--dataset-config``, ``--data-dir``, ``--image-column``, ``--label-column``): the model (an hf_ssl checkpoint or a
    plain transformers backbone) on the device, its image processor, and the labelled ``splits``; a model that cannot
    be found, a missing split or label column ends the command with a message that says what to pass (exit code 2)."""
    from transformers import AutoImageProcessor, AutoModel

    import hf_ssl  # noqa: F401  (registers hf_ssl models with AutoModel)
    from hf_ssl.data import load_image_dataset

    check_model_path(args.model)
    try:
        model = AutoModel.from_pretrained(args.model).to(args.device)
    except OSError as error:  # a local folder missing its weights, or a Hub id that cannot be found or reached
        reason = str(error).strip().splitlines()[0]
        if Path(args.model).expanduser().is_dir():
            raise command_error(f"--model {args.model} cannot be loaded: {reason}") from None
        raise command_error(
            f"--model {args.model} is no folder here, and no Hub model of that id could be loaded ({reason}): give {MODEL_PATH_HELP}"
        ) from None
    image_processor = AutoImageProcessor.from_pretrained(args.model)
    data = load_image_dataset(
        args.dataset, name=args.dataset_config, data_dir=args.data_dir, image_column=args.image_column, label_column=args.label_column
    )
    for split in splits:
        if split not in data:
            raise command_error(f"split {split!r} not in the dataset; it has {list(data)}")
        if "label" not in data[split].column_names:
            raise command_error(f"split {split!r} has no label column; pass --label-column (columns: {data[split].column_names})")
    return model, image_processor, [data[split] for split in splits]


def main(argv: list[str] | None = None, prog: str = "python -m hf_ssl.evaluation.knn") -> dict[str, float]:
    parser = argparse.ArgumentParser(prog=prog, description="Weighted k-NN accuracy of a pretrained model's frozen features.")
    parser.add_argument("--model", required=True, help="Model directory or Hub id (hf_ssl checkpoint or plain transformers model).")
    parser.add_argument("--dataset", default="fashion_mnist", help="Dataset: a Hub id, a local directory, 'imagefolder', 'parquet', or 'fashion_mnist'.")
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
