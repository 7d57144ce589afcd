"""Labelled images for fine-tuning: the splits, the label names, and the collator that decodes and transforms a batch.

Transforms follow transformers' image-classification example, without torchvision: training images get a random
resized crop to the processor's size and a horizontal flip, then the processor's rescale + normalisation; evaluation
images go through the saved image processor as they are (its resize, its centre crop when it has one), as a user of
the fine-tuned model will prepare them. N-band images (multispectral, hyperspectral: a processor with other than 3
means) are read with `hf_ssl.data.decode_bands` and cropped / resized in float with torch.

An image that cannot be read is left out of its batch, logged and counted (``skip_bad_images``), or stops the run
with the file named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

from hf_ssl.data.images import decode_bands, decode_image, random_resized_crop_box, skip_or_raise, to_8bit
from hf_ssl.data.multicrop import resize_bands
from hf_ssl.evaluation.knn import resize_bands_for_evaluation
from hf_ssl.models.image_processing import processor_image_size, processor_num_channels

logger = logging.getLogger(__name__)


@dataclass
class LabelledSplits:
    """What `split_labelled_dataset` returns: the train / validation / test splits (test may be None) and the class
    names, index = class id."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    label_names: list[str]

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.label_names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))


def label_names(dataset: datasets.Dataset) -> list[str]:
    """The class names of a ``label`` column: a ``ClassLabel``'s names, else ``"0" .. str(max)`` for integer labels."""
    feature = dataset.features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    labels = dataset["label"]
    if not labels or not all(isinstance(label, (int, np.integer)) and not isinstance(label, bool) for label in labels):
        raise ValueError("the label column must hold class ids (ints) or a ClassLabel; pass data.label_column to pick another column")
    if min(labels) < 0:
        raise ValueError(f"labels must be class ids >= 0, found {min(labels)}")
    return [str(index) for index in range(max(labels) + 1)]


def split_labelled_dataset(
    dataset: datasets.DatasetDict,
    train_split: str = "train",
    validation_split: str | None = None,
    test_split: str | None = "test",
    train_val_split: float = 0.1,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> LabelledSplits:
    """Pick the splits of a labelled ``DatasetDict``.

    The validation split is ``validation_split``, else the dataset's ``validation`` split, else a stratified, seeded
    ``train_val_split`` fraction held out of the training split (the rest trains). The test split is measured once at
    the end; a missing ``test_split`` is skipped with a log line (not an error: many datasets have none). Raises a
    ``ValueError`` naming the splits there are when a named split is missing or a split has no ``label`` column.
    """
    available = list(dataset)
    if train_split not in dataset:
        raise ValueError(f"the dataset has no split {train_split!r} (data.train_split); its splits are {available}")
    for split in available:
        if "label" not in dataset[split].column_names:
            raise ValueError(f"split {split!r} has no label column (columns: {dataset[split].column_names}); set data.label_column")
    train = dataset[train_split]
    names = label_names(train)
    if validation_split is not None and validation_split not in dataset:
        raise ValueError(f"the dataset has no split {validation_split!r} (data.validation_split); its splits are {available}")
    validation_split = validation_split or ("validation" if "validation" in dataset and train_split != "validation" else None)
    if validation_split is not None:
        validation = dataset[validation_split]
    else:
        stratify = "label" if isinstance(train.features.get("label"), datasets.ClassLabel) and len(train) >= 2 * len(names) else None
        held_out = train.train_test_split(test_size=train_val_split, seed=seed, stratify_by_column=stratify)
        train, validation = held_out["train"], held_out["test"]
        logger.info("No validation split: held out %d of the %d training images (train_val_split=%g)", len(validation), len(train) + len(validation), train_val_split)
    test = None
    if test_split is not None:
        if test_split in dataset and test_split not in (train_split, validation_split):
            test = dataset[test_split]
        elif test_split not in dataset:
            logger.info("The dataset has no split %r (data.test_split): no test evaluation; its splits are %s", test_split, available)
    train = _sample(train, max_train_samples, seed)
    validation, test = _sample(validation, max_eval_samples, seed), _sample(test, max_eval_samples, seed)
    for name, part in (("training", train), ("validation", validation)):
        if len(part) == 0:
            raise ValueError(f"the {name} split is empty")
    return LabelledSplits(train, validation, test, names)


def _sample(dataset, max_samples: int | None, seed: int):
    if dataset is None or max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


@dataclass
class ClassificationCollator:
    """``DataLoader(collate_fn=...)`` for labelled rows ``{"image": ..., "label": int}``: decodes, transforms and stacks
    them into ``{"pixel_values": (B, C, S, S) float32, "labels": (B,) int64}``.

    ``train=True``: random resized crop (``crop_scale``, ``crop_ratio``) to ``image_size`` and a flip, then the
    processor's rescale and normalisation; ``train=False``: the processor as saved. Unreadable rows are dropped from
    the batch (``B`` may be 0: `FinetuneTrainer` skips such a batch) and counted in ``num_skipped``.
    """

    image_processor: Any
    train: bool
    image_size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = True
    skip_bad_images: bool = True
    seed: int | None = None
    num_skipped: int = field(default=0, init=False)

    def __post_init__(self):
        self.num_channels = processor_num_channels(self.image_processor)
        self.image_size = self.image_size or processor_image_size(self.image_processor)
        self._rng, self._rng_key = np.random.default_rng(self.seed), None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        # In a DataLoader worker, crops come from the seed torch gives that worker for this epoch (derived from the
        # run's seed): each worker and each epoch draws new crops, and a rerun draws the same.
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._rng_key:
            self._rng, self._rng_key = np.random.default_rng(worker.seed), worker.seed
        images, labels = [], []
        for position, row in enumerate(rows):
            try:
                images.append(self._read(row["image"]))
            except Exception as error:  # any failure to read the pixels makes the row unreadable
                self._skip(row["image"], position, error)
            else:
                labels.append(int(row["label"]))
        if not images:
            shape = (0, self.num_channels, self.image_size, self.image_size)
            return {"pixel_values": torch.zeros(shape), "labels": torch.zeros(0, dtype=torch.long)}
        return {"pixel_values": self._prepare(images), "labels": torch.tensor(labels, dtype=torch.long)}

    def _read(self, item):
        if self.num_channels == 3:
            image = to_8bit(decode_image(item))
            return self._crop_image(image) if self.train else image
        bands = decode_bands(item, self.num_channels)
        return self._crop_bands(bands) if self.train else resize_bands_for_evaluation(bands, self.image_size)

    def _crop_image(self, image: PIL.Image.Image) -> PIL.Image.Image:
        box = random_resized_crop_box(image.width, image.height, self.crop_scale, self.crop_ratio, self._rng)
        crop = image.resize((self.image_size, self.image_size), PIL.Image.Resampling.BICUBIC, box=box)
        if self.horizontal_flip and self._rng.random() < 0.5:
            crop = crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return crop

    def _crop_bands(self, bands: np.ndarray) -> np.ndarray:
        box = random_resized_crop_box(bands.shape[2], bands.shape[1], self.crop_scale, self.crop_ratio, self._rng)
        crop = resize_bands(torch.from_numpy(np.ascontiguousarray(bands)), box, self.image_size, "bilinear")
        if self.horizontal_flip and self._rng.random() < 0.5:
            crop = crop.flip(-1)
        return crop.numpy()

    def _prepare(self, images: list) -> torch.Tensor:
        if self.num_channels != 3:  # the N-band processor only normalises arrays already at its size
            return self.image_processor(images, return_tensors="pt", input_data_format="channels_first")["pixel_values"]
        if self.train:  # the crop is the resize: the processor only converts, rescales and normalises
            return self.image_processor(images, return_tensors="pt", do_resize=False, do_center_crop=False)["pixel_values"]
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def _skip(self, item, position: int, error: Exception) -> None:
        self.num_skipped += self.skip_bad_images
        skip_or_raise(item, position, error, self.skip_bad_images, self.num_skipped, "set data.skip_bad_images=true to skip such images", logger)
