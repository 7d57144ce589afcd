"""CPU stage of the view pipeline (every method's crops): decode, random resized crops of every view group, collation.

    dataset --(ViewCropTransform, in DataLoader workers)--> per-example uint8 views, one entry per group
            --(ViewCropCollator)--> {"global_crops": (G, B, C, H, W), "local_crops": (L, B, C, h, w), ...}
            --(DeviceAugmentation, on the accelerator)--> normalised float views

The groups are a config's named view groups (`hf_ssl.data.views`): DINO's ``global_crops`` and ``local_crops``,
SimCLR's ``views``, I-JEPA's ``image``.

Only geometry happens here; colour, blur and solarize run batched on the device
(`hf_ssl.data.device_augmentation`), so workers ship small uint8 crops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

from .images import (
    RESAMPLING,
    BandLayoutError,
    crop_into,
    decode_bands,
    decode_image,
    describe_image,
    random_resized_crop_box,
    skip_or_raise,
    to_8bit,
)
from .loading import undecoded_images
from .views import BAND_INTERPOLATIONS, as_views_config

logger = logging.getLogger(__name__)

# What an example holds beside its view groups: the decode flag, the label and ViewCropDataset's sampler key.
EXAMPLE_FIELDS = ("valid", "label", "key")


class ViewCropTransform:
    """Batch transform for ``Dataset.with_transform``: images -> the views of every group of a config.

    ``config`` is a ``ViewsConfig`` or an augmentation section with ``to_views_config()`` (DINO's
    ``MultiCropConfig``: groups ``global_crops`` and ``local_crops``). Takes a batch ``{"image": [...],
    "label": [...] (optional), ...}`` and returns, per example, one uint8 ``(number, 3, size, size)`` tensor per
    group under the group's name, ``valid`` (False for an image that could not be decoded) and ``label`` when
    the batch has one. Other columns are dropped.

    An image may be a PIL image, a ``{"bytes", "path"}`` dict (an undecoded ``datasets.Image``),
    bytes, a path or an array, in any PIL mode; it is brought to 8-bit RGB (alpha dropped, 16-bit
    scaled by its range, see `hf_ssl.data.images.to_8bit`). Views are torchvision
    ``RandomResizedCrop`` crops: images smaller than the view are upscaled. The groups are cut in the
    config's order, view by view.

    With ``num_channels`` other than 3 (multispectral, hyperspectral) an image is an N-band array instead
    (`hf_ssl.data.images.decode_bands`: arrays, ``.npy`` / ``.npz`` / TIFF files, stacks of single-band files),
    kept as float32 in the data's own units; its views are float32 ``(number, N, size, size)``, resized with
    torch's interpolation (antialiased bilinear / bicubic, nearest or area), and an image with another number of
    bands, or with NaN / infinite values, is a bad image like one that does not decode. ``channels_last`` is
    `decode_bands`'s: where the bands of an array are (None: told by its shape; an array that does not tell
    raises ``BandLayoutError`` whatever ``skip_bad_images`` says).

    An image that fails to decode gives zero views with ``valid=False`` and a logged warning when
    ``skip_bad_images`` (`ViewCropCollator` drops and counts it), else a ``ValueError``.

    Randomness comes from ``rng`` when given (`ViewCropDataset` passes one seeded by seed, epoch
    and index), else from torch's global RNG (one draw per batch seeds a numpy generator), so
    ``torch.manual_seed`` makes it reproducible and DataLoader workers, which torch seeds apart,
    draw different crops.
    """

    def __init__(self, config, skip_bad_images: bool = True, channels_last: bool | None = None):
        self.config = config
        self.views = as_views_config(config)
        self.skip_bad_images = skip_bad_images
        self.channels_last = channels_last
        if self.views.is_rgb:
            self.resample = {name: RESAMPLING[group.interpolation] for name, group in self.views.groups.items()}
        else:
            self.resample = {
                name: BAND_INTERPOLATIONS[group.interpolation] for name, group in self.views.groups.items()
            }
        # Images skipped by this copy of the transform (each DataLoader worker holds its own copy).
        self.num_bad_images = 0

    def __call__(self, batch: dict[str, list], rng: np.random.Generator | None = None) -> dict[str, list]:
        if "image" not in batch:
            raise KeyError(
                f"ViewCropTransform needs an 'image' column, the batch has {sorted(batch)}: "
                "load the dataset with hf_ssl.data.load_image_dataset(..., image_column=...) to rename it"
            )
        if rng is None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        output: dict[str, list] = {name: [] for name in self.views.names}
        output["valid"] = []
        for position, item in enumerate(batch["image"]):
            try:
                image = self.decode(item)
            except Exception as error:  # any failure to read the pixels makes the example a bad image
                image = None
                self._handle_bad_image(item, position, error)
            for name, crops in self.make_crops(image, rng).items():
                output[name].append(crops)
            output["valid"].append(image is not None)
        if "label" in batch:
            output["label"] = list(batch["label"])
        return output

    def decode(self, item: Any) -> PIL.Image.Image | np.ndarray:
        """One dataset item -> an 8-bit ``"L"``/``"RGB"`` image (3 channels) or a float32 ``(N, H, W)`` array."""
        if self.views.is_rgb:
            return to_8bit(decode_image(item))
        return decode_bands(item, self.views.num_channels, channels_last=self.channels_last)

    def make_crops(
        self, image: PIL.Image.Image | np.ndarray | None, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """Group name -> the ``(number, C, size, size)`` views of one image (``decode``'s output): uint8 for RGB,
        float32 for other bands; all zeros when ``image`` is ``None``."""
        if not self.views.is_rgb:
            return self._make_band_crops(image, rng)
        crops = {}
        for name, group in self.views.groups.items():
            views = np.zeros((group.number, 3, group.size, group.size), np.uint8)
            if image is not None:
                width, height = image.size
                for out in views:
                    box = random_resized_crop_box(width, height, group.scale, group.crop_ratio, rng)
                    crop_into(image, box, group.size, self.resample[name], out)
            crops[name] = torch.from_numpy(views)
        return crops

    def _make_band_crops(self, bands: np.ndarray | None, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        crops = {}
        source = torch.from_numpy(bands) if bands is not None else None
        for name, group in self.views.groups.items():
            views = torch.zeros((group.number, self.views.num_channels, group.size, group.size), dtype=torch.float32)
            if source is not None:
                height, width = source.shape[-2:]
                for out in views:
                    box = random_resized_crop_box(width, height, group.scale, group.crop_ratio, rng)
                    out.copy_(resize_bands(source, box, group.size, self.resample[name]))
            crops[name] = views
        return crops

    def _handle_bad_image(self, item: Any, position: int, error: Exception) -> None:
        self.num_bad_images += self.skip_bad_images
        skip_or_raise(
            item,
            position,
            error,
            self.skip_bad_images,
            self.num_bad_images,
            "pass skip_bad_images=True to skip such images",
            logger,
        )


def resize_bands(bands: torch.Tensor, box: tuple[int, int, int, int], size: int, mode: str) -> torch.Tensor:
    """``box`` (left, top, right, bottom) of a float ``(C, H, W)`` tensor resized to ``(C, size, size)`` with torch
    interpolation ``mode``; bilinear and bicubic are antialiased when shrinking, as PIL's resize is."""
    left, top, right, bottom = box
    crop = bands[None, :, top:bottom, left:right]
    if mode in ("bilinear", "bicubic"):
        return torch.nn.functional.interpolate(
            crop, size=(size, size), mode=mode, align_corners=False, antialias=True
        )[0]
    return torch.nn.functional.interpolate(crop, size=(size, size), mode=mode)[0]


def with_view_crops(dataset, transform: ViewCropTransform, seed: int = 0):
    """Attach ``transform`` to ``dataset`` (a ``Dataset``, ``DatasetDict`` or ``IterableDataset``).

    A map-style ``Dataset`` becomes a `ViewCropDataset`, whose crops are a function of ``seed``, the
    epoch and the example's index (exact resume, the same crops for any number of DataLoader
    workers); a ``DatasetDict`` becomes a dict of them. A streaming ``IterableDataset`` gets the
    transform through a lazy batched ``map`` and draws its crops from torch's global RNG.

    An ``Image`` column is switched to ``decode=False`` first: the transform then decodes the bytes
    itself, so a corrupt file becomes a skipped example instead of an exception inside ``datasets``.
    """
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        parts = {split: with_view_crops(part, transform, seed) for split, part in dataset.items()}
        return type(dataset)(parts) if isinstance(dataset, datasets.IterableDatasetDict) else parts
    dataset = undecoded_images(dataset)
    if isinstance(dataset, datasets.IterableDataset):
        # Streaming datasets have no random access; a batched map runs lazily the same way.
        return dataset.map(transform, batched=True, remove_columns=dataset.column_names)
    return ViewCropDataset(dataset, transform, seed)


class EpochKeyedDataset(torch.utils.data.Dataset):
    """A map-style ``datasets.Dataset`` read through `EpochShuffleSampler`'s keys ``epoch * len(dataset) + index``
    (``split_key``), which seed what is drawn for an example (crops, masks): the same after a resume and with any
    number of DataLoader workers. It holds the epoch training is in (``set_epoch``) for the sampler built on it."""

    def __init__(self, dataset: datasets.Dataset, empty_message: str = "the dataset is empty"):
        if len(dataset) == 0:
            raise ValueError(empty_message)
        self.dataset = dataset
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loaders (directly, or through ``EpochShuffleSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def split_key(self, key: int) -> tuple[int, int]:
        """``(epoch, index)`` of a sampler key; plain indices ``0 .. len - 1`` are epoch 0."""
        return divmod(int(key), len(self.dataset))


class ViewCropDataset(EpochKeyedDataset):
    """Multi-crop examples of a map-style ``datasets.Dataset`` with reproducible randomness.

    ``dataset[key]`` is `ViewCropTransform`'s output for example ``key % len(dataset)``, with crops
    drawn from a generator seeded by ``(seed, key // len(dataset), key % len(dataset))``: a key
    carries its epoch (`EpochShuffleSampler` yields ``epoch * len(dataset) + index``), so every epoch
    sees new crops, and a resumed run, or one with another number of DataLoader workers, sees exactly
    the crops of an uninterrupted one. Plain indices ``0 .. len - 1`` are epoch 0. The example also carries
    ``key``, so that a collator's own draws (I-JEPA's masks, `MultiBlockMaskCollator`) are seeded the same way.
    """

    def __init__(self, dataset: datasets.Dataset, transform: ViewCropTransform, seed: int = 0):
        super().__init__(undecoded_images(dataset), "the dataset is empty: there is nothing to pretrain on")
        self.transform = transform
        self.seed = int(seed)

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = self.split_key(key)
        example = self.dataset[index]
        rng = np.random.default_rng((self.seed, epoch, index))
        output = self.transform({name: [value] for name, value in example.items()}, rng=rng)
        example = {name: values[0] for name, values in output.items()}
        example["key"] = int(key)  # where the sampler is: seeds what a collator draws (masks) like the crops
        return example

    @property
    def column_names(self) -> list[str]:
        return self.dataset.column_names

    def probe_readable_images(self, max_images: int = 32) -> tuple[int, int, str | None]:
        """Decode up to ``max_images`` images spread evenly over the dataset (no crops) and return
        ``(readable, checked, first error)``: a cheap look, before training, for a dataset none of whose images
        can be read (training would only skip them). A ``BandLayoutError`` (arrays whose band axis their shape does
        not tell) is raised, so that the missing setting stops the run here."""
        positions = np.unique(
            np.linspace(0, len(self.dataset) - 1, num=min(max_images, len(self.dataset))).astype(np.int64)
        )
        readable, first_error = 0, None
        for position in positions.tolist():
            item = self.dataset[position]["image"]
            try:
                self.transform.decode(item)
                readable += 1
            except BandLayoutError:
                raise
            except Exception as error:  # the same rule as the transform: anything that stops decoding
                if first_error is None:
                    first_error = f"{describe_image(item, f'row {position}')}: {type(error).__name__}: {error}"
        return readable, len(positions), first_error


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """Shuffles ``range(num_examples)`` anew each epoch, from ``seed + epoch`` alone, and yields the keys
    ``epoch * num_examples + index`` that `ViewCropDataset` turns into per-epoch random crops.

    The order depends on nothing but the seed and the epoch (``set_epoch``, which the Trainer and the
    Accelerate loop call at the start of each epoch), so it is the same in every process and after a
    resume; accelerate splits its batches between processes.

    ``epoch_holder`` (a ``ViewCropDataset``): keep the epoch there rather than here. accelerate passes the
    epoch to the sampler or, where it cannot reach it (the loader that skips the batches a resumed run has
    already seen, on several processes), to the dataset; with one holder both paths agree.
    """

    def __init__(self, num_examples: int, seed: int = 0, shuffle: bool = True, epoch_holder=None):
        self.num_examples = num_examples
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch_holder = epoch_holder
        self._epoch = 0

    @property
    def epoch(self) -> int:
        return self.epoch_holder.epoch if self.epoch_holder is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        if self.epoch_holder is not None:
            self.epoch_holder.set_epoch(epoch)
        else:
            self._epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_examples, generator=generator)
        else:
            order = torch.arange(self.num_examples)
        yield from (order + self.epoch * self.num_examples).tolist()


class ViewCropCollator:
    """Stack examples from `ViewCropTransform` into one batch, view index first.

    Returns one uint8 ``(number, B, 3, size, size)`` tensor per view group (DINO: ``{"global_crops": (G, B, 3,
    H, W), "local_crops": (L, B, 3, h, w)}``), ``"labels": int64 (B,)`` when the examples have labels, and
    ``"num_skipped": int64 ()``. The groups are every key of an example but ``valid``, ``label`` and ``key``
    (`ViewCropDataset`'s sampler key; or ``view_names`` when given). Views of one size share a tensor so the backbone
    runs once per group.

    Examples with ``valid=False`` are dropped and counted in ``num_skipped``: the collator runs in
    the DataLoader workers, so the count travels with the batch. When every example is bad the
    batch has ``B == 0`` (the trainer skips it).
    """

    view_names: tuple[str, ...] | None = None  # also for a subclass that does not call __init__

    def __init__(self, view_names: Sequence[str] | None = None):
        self.view_names = tuple(view_names) if view_names is not None else None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("ViewCropCollator got an empty list of examples")
        kept = [example for example in examples if example.get("valid", True)]
        names = self.view_names or [name for name in examples[0] if name not in EXAMPLE_FIELDS]
        batch = {name: _stack_crops(examples, kept, name) for name in names}
        if "label" in examples[0]:
            batch["labels"] = torch.tensor([int(example["label"]) for example in kept], dtype=torch.int64)
        batch["num_skipped"] = torch.tensor(len(examples) - len(kept), dtype=torch.int64)
        return batch


def _stack_crops(examples: list[dict[str, Any]], kept: list[dict[str, Any]], key: str) -> torch.Tensor:
    """``B`` tensors ``(V, C, H, W)`` -> ``(V, B, C, H, W)`` of their dtype (uint8 RGB, float32 bands); bad examples
    still tell the shape when B == 0."""
    if key not in examples[0]:
        raise KeyError(f"the examples have no view group {key!r}; they have {sorted(examples[0])}")
    if kept:
        return torch.stack([torch.as_tensor(example[key]) for example in kept], dim=1)
    reference = torch.as_tensor(examples[0][key])
    return reference.new_empty((reference.shape[0], 0, *reference.shape[1:]))


# the names from when DINO's multi-crop was the only pipeline: the same objects, so that code written for them works
MultiCropTransform = ViewCropTransform
MultiCropCollator = ViewCropCollator
MultiCropDataset = ViewCropDataset
with_multicrop = with_view_crops
