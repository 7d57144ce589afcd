"""Frozen features of a backbone over a labelled dataset, and what the k-NN and linear-probe evaluations share.

Both evaluations read the same features (`extract_readable_features`: the same decoding, image processor and
image embedding; unreadable images left out with their labels and counted), score them the same way
(`top1_top5_accuracy`) and load their model and splits the same way on the command line (`load_model_and_splits`).
`hf_ssl.evaluation.knn` and `hf_ssl.evaluation.linear_probe` import from here, so neither has to import the other
for these.

Images are decoded here, as in training (`hf_ssl.data.images`); an unreadable one (a truncated file, a text
file named .jpg) is left out with its label, logged and counted rather than stopping the evaluation.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_ssl.data.images import decode_bands, decode_image, describe_image, to_8bit
from hf_ssl.data.loading import undecoded_images
from hf_ssl.errors import BandLayoutError
from hf_ssl.models.image_processing import processor_image_size, processor_num_channels

logger = logging.getLogger(__name__)


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
                logger.warning(
                    "Skipping unreadable %s: %s: %s",
                    describe_image(item, f"row {start + offset}"),
                    type(error).__name__,
                    error,
                )
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
        torch.from_numpy(np.ascontiguousarray(bands, dtype=np.float32))[None],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
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


def extract_split(
    model: torch.nn.Module,
    dataset,
    image_processor,
    split: str,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    channels_last: bool | None = None,
) -> ExtractedFeatures:
    """`extract_readable_features` of one split an evaluator was given, named ``split`` in its errors (e.g.
    "the k-NN bank (train_dataset)"): an empty split, or one with no readable image, is a ``ValueError``."""
    if len(dataset) == 0:
        raise ValueError(f"{split} is empty: give it a labelled dataset with at least one image")
    extracted = extract_readable_features(
        model, dataset, image_processor, batch_size, device, show_progress=show_progress, channels_last=channels_last
    )
    if extracted.num_skipped == len(dataset):
        raise ValueError(
            f"{split}: every one of its {len(dataset)} images is unreadable (the warnings above name the files and "
            "errors); fix or replace the files, or point the evaluation at another split"
        )
    return extracted


def top1_top5_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (in %) of class ``scores`` (M, C) against ``labels`` (M,); with fewer than 5
    classes, top-5 is top-C (then 100)."""
    ranked = scores.argsort(dim=1, descending=True)
    top1 = (ranked[:, 0] == labels).float().mean().item() * 100
    top5 = (ranked[:, : min(5, scores.shape[1])] == labels[:, None]).any(dim=1).float().mean().item() * 100
    return top1, top5


def subsample(dataset, max_samples: int | None, seed: int = 0):
    """A fixed random subset of at most ``max_samples`` rows (the whole dataset when None)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    indices = np.random.default_rng(seed).permutation(len(dataset))[:max_samples]
    return dataset.select(np.sort(indices))


MODEL_PATH_HELP = (
    "a trained run's output directory (e.g. outputs/run), its backbone/ folder, or a Hub model id (ORG/NAME)"
)


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
            raise command_error(
                f"--model {name_or_path} is a folder without config.json{latest}: give {MODEL_PATH_HELP}"
            )
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
            f"--model {args.model} is no folder here, and no Hub model of that id could be loaded ({reason}): give "
            f"{MODEL_PATH_HELP}"
        ) from None
    image_processor = AutoImageProcessor.from_pretrained(args.model)
    data = load_image_dataset(
        args.dataset,
        name=args.dataset_config,
        data_dir=args.data_dir,
        image_column=args.image_column,
        label_column=args.label_column,
    )
    for split in splits:
        if split not in data:
            raise command_error(f"split {split!r} not in the dataset; it has {list(data)}")
        if "label" not in data[split].column_names:
            raise command_error(
                f"split {split!r} has no label column; pass --label-column (columns: {data[split].column_names})"
            )
    return model, image_processor, [data[split] for split in splits]
