"""Labelled images for fine-tuning: the splits, the label names, and the collator that decodes and transforms a batch.

Transforms follow transformers' image-classification example, without torchvision: training images get a random
resized crop to the processor's size and a horizontal flip, then the processor's rescale + normalisation; evaluation
images go through the saved image processor as they are (its resize, its centre crop when it has one), as a user of
the fine-tuned model will prepare them. N-band images (multispectral, hyperspectral: a processor with other than 3
means) are read with `hf_ssl.data.decode_bands` and cropped / resized in float with torch.

Crops are seeded by ``(seed, epoch, example)`` (`SeededExamples` under `EpochShuffleSampler`): a run killed and
resumed, or one with another number of DataLoader workers, draws exactly the crops of an uninterrupted one.

Images reach the model with its channel count: 8-bit grayscale, palette, RGBA and CMYK images are converted to RGB for
a 3-channel model (as pretraining does), and data whose band count differs from the model's is refused before
training (`check_images_fit`). An image that cannot be read, or an N-band array holding NaN / inf, is left out of its
batch, logged and counted (``skip_bad_images``), or stops the run with the file named.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

from hf_ssl.data.crops import EpochKeyedDataset, resize_bands
from hf_ssl.data.images import (
    array_to_image,
    decode_bands,
    decode_image,
    describe_image,
    random_resized_crop_box,
    read_band_source,
    skip_or_raise,
    to_8bit,
)
from hf_ssl.errors import BandLayoutError
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
        raise ValueError(
            "the label column must hold class ids (ints) or a ClassLabel; pass data.label_column to pick another "
            "column"
        )
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
            raise ValueError(
                f"split {split!r} has no labels (columns: {dataset[split].column_names}). An image folder takes its "
                "labels from class subfolders (data_dir/<split>/<class>/<image> or data_dir/<class>/<image>) and "
                "needs at least 2 of them (a single class folder gives no labels); for another dataset, name its "
                "label column with data.label_column"
            )
    train = dataset[train_split]
    names = label_names(train)
    if len(names) < 2:
        raise ValueError(
            f"the training split has a single class ({names[0]!r}): a classifier needs images of at least 2 classes"
        )
    if validation_split is not None and validation_split not in dataset:
        raise ValueError(
            f"the dataset has no split {validation_split!r} (data.validation_split); its splits are {available}"
        )
    validation_split = validation_split or (
        "validation" if "validation" in dataset and train_split != "validation" else None
    )
    if validation_split is not None:
        validation = dataset[validation_split]
    else:
        stratify = (
            "label"
            if isinstance(train.features.get("label"), datasets.ClassLabel) and len(train) >= 2 * len(names)
            else None
        )
        if stratify is not None:
            check_stratifiable(train["label"], names, train_val_split)
        held_out = train.train_test_split(test_size=train_val_split, seed=seed, stratify_by_column=stratify)
        train, validation = held_out["train"], held_out["test"]
        logger.info(
            "No validation split: held out %d of the %d training images (train_val_split=%g)",
            len(validation),
            len(train) + len(validation),
            train_val_split,
        )
    test = None
    if test_split is not None:
        if test_split in dataset and test_split not in (train_split, validation_split):
            test = dataset[test_split]
        elif test_split not in dataset:
            logger.info(
                "The dataset has no split %r (data.test_split): no test evaluation; its splits are %s",
                test_split,
                available,
            )
    train = _sample(train, max_train_samples, seed)
    validation, test = _sample(validation, max_eval_samples, seed), _sample(test, max_eval_samples, seed)
    for name, part in (("training", train), ("validation", validation)):
        if len(part) == 0:
            raise ValueError(f"the {name} split is empty")
    return LabelledSplits(train, validation, test, names)


def check_stratifiable(labels: list[int], names: list[str], train_val_split: float) -> None:
    """A stratified hold-out of ``train_val_split`` puts images of every class on both sides: each class needs two
    images, and the held-out part one image per class. Raises a ``ValueError`` naming the classes that are too
    small."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    single = [f"{names[index]!r}" for index in np.flatnonzero(counts == 1)]
    if single:
        listed = ", ".join(single[:10]) + (f" and {len(single) - 10} more" if len(single) > 10 else "")
        raise ValueError(
            f"class{'es' if len(single) > 1 else ''} {listed} of the training split "
            f"ha{'ve' if len(single) > 1 else 's'} a single image: the validation images are held out per class "
            "(data.train_val_split), which needs at least 2 images of every class. Add images of it, remove the "
            "class, or give a validation split (data.validation_split)"
        )
    present = int(np.count_nonzero(counts))
    held_out = int(np.ceil(train_val_split * len(labels)))
    if held_out < present:
        raise ValueError(
            f"data.train_val_split={train_val_split:g} holds out {held_out} of {len(labels)} training images, fewer "
            f"than the {present} classes: raise it to at least {present / len(labels):.3g}, or give a validation "
            "split (data.validation_split)"
        )


def _sample(dataset, max_samples: int | None, seed: int):
    if dataset is None or max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


class SeededExamples(EpochKeyedDataset):
    """The training rows of a fine-tuning run, each with the key that seeds its random crop.

    ``examples[key]`` is row ``index`` plus ``"crop_key": (epoch, index)`` for the sampler key ``epoch * len(dataset) +
    index`` (`EpochShuffleSampler` with ``epoch_holder=`` this dataset): `ClassificationCollator` draws each crop from
    ``(seed, epoch, index)`` alone, whichever worker collates it and however many batches a resumed run skipped."""

    def __init__(self, dataset: datasets.Dataset):
        super().__init__(dataset, "the training split is empty")

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = self.split_key(key)
        return {**self.dataset[index], "crop_key": (epoch, index)}


@dataclass
class ClassificationCollator:
    """``DataLoader(collate_fn=...)`` for labelled rows ``{"image": ..., "label": int}``: decodes, transforms and
    stacks them into ``{"pixel_values": (B, C, S, S) float32, "labels": (B,) int64}``.

    ``train=True``: random resized crop (``crop_scale``, ``crop_ratio``) to ``image_size`` and a flip, then the
    processor's rescale and normalisation; ``train=False``: the processor as saved. A row carrying ``crop_key``
    (`SeededExamples`) is cropped with a generator seeded by ``(seed, *crop_key)``; rows without one draw from one
    generator of the collator (per DataLoader worker). Unreadable rows are dropped from the batch (``B`` may be 0:
    `FinetuneTrainer` skips such a batch) and counted in ``num_skipped``. ``channels_last``: where the bands of 3-d
    N-band arrays are (`hf_ssl.data.decode_bands`; None: inferred where unambiguous).
    """

    image_processor: Any
    train: bool
    image_size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = True
    skip_bad_images: bool = True
    seed: int | None = None
    channels_last: bool | None = None
    num_skipped: int = field(default=0, init=False)

    def __post_init__(self):
        self.num_channels = processor_num_channels(self.image_processor)
        self.image_size = self.image_size or processor_image_size(self.image_processor)
        self._rng, self._rng_key = np.random.default_rng(self.seed), None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        images, labels = [], []
        for position, row in enumerate(rows):
            try:
                images.append(self._read(row["image"], self._generator(row)))
            except Exception as error:  # any failure to read the pixels makes the row unreadable
                self._skip(row["image"], position, error)
            else:
                labels.append(int(row["label"]))
        if not images:
            shape = (0, self.num_channels, self.image_size, self.image_size)
            return {"pixel_values": torch.zeros(shape), "labels": torch.zeros(0, dtype=torch.long)}
        return {"pixel_values": self._prepare(images), "labels": torch.tensor(labels, dtype=torch.long)}

    def _generator(self, row: dict) -> np.random.Generator | None:
        if not self.train:
            return None
        if row.get("crop_key") is not None:
            return np.random.default_rng((0 if self.seed is None else int(self.seed), *map(int, row["crop_key"])))
        # rows without a key: in a DataLoader worker, one generator from the seed torch gives that worker this epoch
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._rng_key:
            self._rng, self._rng_key = np.random.default_rng(worker.seed), worker.seed
        return self._rng

    def decode(self, item) -> PIL.Image.Image | np.ndarray:
        """One dataset item -> an 8-bit RGB image (a 3-channel model) or a float32 ``(C, H, W)`` array (C bands).
        Raises a ``ValueError`` saying what the item holds when it does not have the model's channel count."""
        if self.num_channels == 3:
            _refuse_band_arrays(item)
            if _is_array_file(item):  # .npy / .npz: bands, which must be 3 (read as an RGB image)
                array, _ = read_band_source(item)
                _refuse_band_arrays(array)
                return array_to_image(decode_bands(array, 3, channels_last=self.channels_last)).convert("RGB")
            image = to_8bit(decode_image(item))
            return image if image.mode == "RGB" else image.convert("RGB")  # grayscale: replicated, as in pretraining
        return decode_bands(item, self.num_channels, channels_last=self.channels_last)

    def _read(self, item, rng: np.random.Generator | None):
        image = self.decode(item)
        if self.num_channels == 3:
            return self._crop_image(image, rng) if self.train else image
        return self._crop_bands(image, rng) if self.train else resize_bands_for_evaluation(image, self.image_size)

    def _crop_image(self, image: PIL.Image.Image, rng: np.random.Generator) -> PIL.Image.Image:
        box = random_resized_crop_box(image.width, image.height, self.crop_scale, self.crop_ratio, rng)
        crop = image.resize((self.image_size, self.image_size), PIL.Image.Resampling.BICUBIC, box=box)
        if self.horizontal_flip and rng.random() < 0.5:
            crop = crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return crop

    def _crop_bands(self, bands: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        box = random_resized_crop_box(bands.shape[2], bands.shape[1], self.crop_scale, self.crop_ratio, rng)
        crop = resize_bands(torch.from_numpy(np.ascontiguousarray(bands)), box, self.image_size, "bilinear")
        if self.horizontal_flip and rng.random() < 0.5:
            crop = crop.flip(-1)
        return crop.numpy()

    def _prepare(self, images: list) -> torch.Tensor:
        if self.num_channels != 3:  # the N-band processor only normalises arrays already at its size
            return self.image_processor(images, return_tensors="pt", input_data_format="channels_first")[
                "pixel_values"
            ]
        if self.train:  # the crop is the resize: the processor only converts, rescales and normalises
            return self.image_processor(images, return_tensors="pt", do_resize=False, do_center_crop=False)[
                "pixel_values"
            ]
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def _skip(self, item, position: int, error: Exception) -> None:
        self.num_skipped += self.skip_bad_images
        skip_or_raise(
            item,
            position,
            error,
            self.skip_bad_images,
            self.num_skipped,
            "set data.skip_bad_images=true to skip such images",
            logger,
        )


def _is_array_file(item) -> bool:
    path = item.get("path") if isinstance(item, dict) else item if isinstance(item, (str, os.PathLike)) else None
    return path is not None and str(path).lower().endswith((".npy", ".npz"))


def _refuse_band_arrays(item) -> None:
    """An array given to a 3-channel model must hold 1 or 3 channels: a 4-band (or N-band) array would otherwise be
    read as RGBA and lose a band without a word."""
    if item is None or isinstance(item, (PIL.Image.Image, dict, str, os.PathLike, bytes, bytearray, memoryview)):
        return
    shape = tuple(np.shape(item.detach().cpu().numpy() if hasattr(item, "detach") else item))
    if len(shape) == 3 and shape[0] not in (1, 3) and shape[-1] not in (1, 3):
        bands = min(shape[0], shape[-1])
        raise ValueError(
            f"the array of shape {shape} holds {bands} bands and the model takes 3 channels (RGB): fine-tune a "
            f"backbone pretrained on {bands} bands, or convert the arrays to RGB"
        )


def check_images_fit(dataset: datasets.Dataset, collator: ClassificationCollator, max_images: int = 16) -> None:
    """Before training: decode up to ``max_images`` rows spread over ``dataset`` the way ``collator`` will. When none
    can be read, raise a ``ValueError`` that names the model's channel count and the first image's problem (an RGB
    model given N-band arrays, or the reverse, would otherwise skip every image). A ``BandLayoutError`` (a layout to
    set with data.channels_last) is raised as it is."""
    positions = np.unique(
        np.linspace(0, len(dataset) - 1, num=min(max_images, len(dataset))).astype(np.int64)
    ).tolist()
    first_error = None
    for position in positions:
        item = dataset[position]["image"]
        try:
            collator.decode(item)
            return
        except BandLayoutError:
            raise
        except Exception as error:  # the collator's rule: anything that stops decoding
            first_error = first_error or f"{describe_image(item, f'row {position}')}: {error}"
    raise ValueError(
        f"none of the {len(positions)} training images checked can be read for a model of {collator.num_channels} "
        f"channels (its image processor normalises {collator.num_channels} values): {first_error}"
    )
