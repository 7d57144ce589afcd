"""Turn whatever a dataset row holds into an 8-bit PIL image, and cut random resized crops from it.

Dataset rows hold images as PIL images, ``{"bytes": ..., "path": ...}`` dicts (an ``Image`` column
with ``decode=False``), raw bytes, file paths, or arrays. `decode_image` opens any of them and
`to_8bit` brings any PIL mode to 8-bit ``"L"`` or ``"RGB"``; single-channel images stay ``"L"``
through the crop so resizing touches one plane instead of three.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

from hf_ssl.errors import BandLayoutError  # noqa: F401 (re-exported)

RESAMPLING = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "box": PIL.Image.Resampling.BOX,
    "hamming": PIL.Image.Resampling.HAMMING,
}

_ORIENTATION_TAG = 0x0112


def describe_image(item: Any, where: str) -> str:
    """Name an image in a message: its file when known, else ``where`` (e.g. "position 3 of the batch")."""
    if isinstance(item, dict) and item.get("path"):
        return f"image {item['path']!r}"
    if isinstance(item, str):
        return f"image {item!r}"
    return f"the image at {where} (no file path: in-memory bytes or array)"


def skip_or_raise(
    item: Any, position: int, error: Exception, skip: bool, skipped_so_far: int, how_to_skip: str, log
) -> None:
    """What a data pipeline does with an image it cannot read: with ``skip``, log a warning through ``log`` naming the
    file, the error and the ``skipped_so_far`` count (the caller counts); else raise a ``ValueError`` that names the
    file and says how to skip such images (``how_to_skip``, e.g. "set data.skip_bad_images=true"). A
    ``BandLayoutError`` is raised as it is, ``skip`` or not: it is a setting to give, the same for every image."""
    if isinstance(error, BandLayoutError):  # the same for every image of the dataset: skipping would skip them all
        raise error
    where = describe_image(item, f"position {position} of the batch")
    if not skip:
        raise ValueError(
            f"cannot read {where}: {type(error).__name__}: {error}. Fix or remove the file, or {how_to_skip}"
        ) from error
    log.warning(
        "Skipping %s: %s: %s (%d unreadable images so far in this process)",
        where,
        type(error).__name__,
        error,
        skipped_so_far,
    )


def decode_image(item: Any) -> PIL.Image.Image:
    """Open ``item`` and load its pixels, so a truncated file fails here and not later.

    ``item`` may be a PIL image, a ``{"bytes", "path"}`` dict, ``bytes``, a path, or a numpy array /
    torch tensor (``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in 1, 3, 4). Like
    ``datasets.Image``, an EXIF orientation tag is applied.
    """
    if isinstance(item, PIL.Image.Image):
        image = item
    elif isinstance(item, dict):
        if item.get("bytes") is not None:
            image = PIL.Image.open(io.BytesIO(item["bytes"]))
        elif item.get("path") is not None:
            image = PIL.Image.open(item["path"])
        else:
            raise ValueError("the image entry has neither 'bytes' nor 'path'")
    elif isinstance(item, (bytes, bytearray, memoryview)):
        image = PIL.Image.open(io.BytesIO(item))
    elif isinstance(item, (str, os.PathLike)):
        image = PIL.Image.open(item)
    elif item is None:
        raise ValueError("the image is missing (None)")
    else:
        return array_to_image(item)
    image.load()
    if image.getexif().get(_ORIENTATION_TAG) is not None:
        image = PIL.ImageOps.exif_transpose(image)
    return image


def array_to_image(array: Any) -> PIL.Image.Image:
    """A numpy array or torch tensor -> 8-bit ``"L"`` or ``"RGB"`` PIL image (alpha dropped)."""
    if hasattr(array, "detach"):  # a torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise ValueError(
            f"cannot read an image from an array of shape {array.shape}: expected (H, W), (H, W, C) or (C, H, W), C "
            "in 1, 3, 4"
        )
    array = scale_to_uint8(array)
    if array.ndim == 3:
        array = array[..., :3]
    return PIL.Image.fromarray(np.ascontiguousarray(array))


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map pixel values to 0..255 by what the dtype and range say they are.

    uint8 as is; bool x 255; uint16 as 16-bit (``v * 255 / 65535``); other integers as 8-bit if they
    fit in 0..255, else as 16-bit if they fit in 0..65535; floats as [0, 1] if they fit, else as
    0..255 if they fit. Anything else (negative values, larger ranges) is min-max stretched. NaN -> 0.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # any byte order (PIL's I;16B is big-endian)
        return _round_to_uint8(array / 257.0)
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 255:
            return array.astype(np.uint8)
        if low >= 0 and high <= 65535:
            return _round_to_uint8(array / 257.0)
        return _stretch(array.astype(np.float64), low, high)
    array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high <= 1:
        return _round_to_uint8(array * 255)
    if low >= 0 and high <= 255:
        return _round_to_uint8(array)
    return _stretch(array, low, high)


def _round_to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _stretch(array: np.ndarray, low: float, high: float) -> np.ndarray:
    if high == low:
        return np.zeros(array.shape, dtype=np.uint8)
    return _round_to_uint8((array - low) * (255.0 / (high - low)))


def to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode -> ``"L"`` (single-channel sources) or ``"RGB"``, 8 bits per channel.

    Alpha is dropped, not composited: the colour under a transparent pixel is kept, which is what
    ``image.convert("RGB")`` gives, so features match the usual ``convert("RGB")`` pipelines.
    16-bit and 32-bit modes are scaled by their range (see `scale_to_uint8`), never clipped at 255.
    """
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    if mode.startswith("I") or mode.startswith("F"):
        return PIL.Image.fromarray(scale_to_uint8(np.asarray(image)))
    if mode in ("P", "PA") and ("transparency" in image.info or mode == "PA"):
        # Through RGBA: PIL warns when a palette with transparency goes straight to RGB.
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """A random crop ``(left, top, right, bottom)`` covering ``scale`` of the area, width/height in ``ratio``.

    Same sampling as torchvision's ``RandomResizedCrop``: area uniform in ``scale``, log aspect
    ratio uniform in ``log(ratio)``, up to 10 tries for a crop that fits, else a centre crop of the
    whole image clamped to ``ratio``.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_low, log_high))
        crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return left, top, left + crop_width, top + crop_height
    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_width, crop_height = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        crop_width, crop_height = int(round(height * ratio[1])), height
    else:
        crop_width, crop_height = width, height
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return left, top, left + crop_width, top + crop_height


def crop_into(
    image: PIL.Image.Image, box: tuple[int, int, int, int], size: int, resample: int, out: np.ndarray
) -> None:
    """Resize ``box`` of an ``"L"``/``"RGB"`` image to ``size`` x ``size`` into ``out`` (``(3, size, size)`` uint8).

    PIL's ``resize(box=...)`` reads only the box and resizes with antialiasing, like
    torchvision's crop-then-resize on PIL images. An ``"L"`` crop is replicated to three channels.
    """
    pixels = np.asarray(image.resize((size, size), resample, box=box))
    if pixels.ndim == 2:
        out[:] = pixels
    else:
        out[:] = pixels.transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Multispectral and hyperspectral bands
# ---------------------------------------------------------------------------------------------------------------------

ARRAY_SUFFIXES = (".npy", ".npz")
TIFF_SUFFIXES = (".tif", ".tiff")


def decode_bands(item: Any, num_channels: int, *, channels_last: bool | None = None) -> np.ndarray:
    """Read an N-band image into a float32 ``(num_channels, H, W)`` array in the data's own units (no scaling).

    ``item`` may be
    - an array or nested list (a ``datasets`` ``Array3D`` / ``Sequence`` column, a numpy array, a torch tensor) of
      shape ``(C, H, W)`` or ``(H, W, C)``, or ``(H, W)`` for one band;
    - the path of a ``.npy`` / ``.npz`` file holding such an array (a ``.npz`` with one array, or an ``image`` key),
      or of a TIFF: each page is a band, or a page holds several bands;
    - a ``{"bytes", "path"}`` dict (an undecoded ``datasets.Image``) of any of these files, or of an ordinary image
      (PNG, JPEG...: its L / RGB / RGBA channels, 16-bit kept as numbers);
    - a list of paths or images: a stack, read one by one and concatenated band-wise (e.g. one grayscale file per
      band).

    ``channels_last`` says where the bands of a 3-d array are: True ``(H, W, C)``, False ``(C, H, W)``, None (the
    default) the axis with ``num_channels`` entries, the first when only it has them. Images and TIFF pages know
    their layout; a 3-d part of a stack is ``(C, H, W)`` unless ``channels_last`` is True.

    Raises
    - ``BandLayoutError`` (a ``ValueError``) when ``channels_last`` is None and both the first and the last axis
      have ``num_channels`` entries (e.g. 16 x 16 x 16 with 16 bands), naming ``data.channels_last`` and the shape;
    - ``ValueError`` for an image that cannot be read, that does not have ``num_channels`` bands (saying what it
      holds), that is empty, or that holds NaN or infinite values (saying how many).
    """
    if (
        isinstance(item, (list, tuple))
        and item
        and all(isinstance(part, (str, os.PathLike, dict, PIL.Image.Image, bytes)) for part in item)
    ):
        bands = np.concatenate([_as_bands(*read_band_source(part), None, channels_last) for part in item], axis=0)
    else:
        bands = _as_bands(*read_band_source(item), num_channels, channels_last)
    if bands.shape[0] != num_channels:
        read_as = (
            ""
            if channels_last is None
            else f", read as {'(H, W, C)' if channels_last else '(C, H, W)'} by data.channels_last"
        )
        raise ValueError(
            f"the image has {bands.shape[0]} bands (shape {tuple(bands.shape)}{read_as}) but num_channels is "
            f"{num_channels}"
        )
    if 0 in bands.shape[1:]:
        raise ValueError(f"the image is empty: shape {tuple(bands.shape)}")
    finite = np.isfinite(bands)
    if not finite.all():  # NaN / inf would reach the loss: bad data, skipped like an unreadable image
        count = bands.size - int(np.count_nonzero(finite))
        raise ValueError(
            f"the image holds {count} non-finite value{'s' if count > 1 else ''} (NaN or infinity) among its "
            f"{bands.size}"
        )
    return bands


def read_band_source(item: Any) -> tuple[Any, bool]:
    """A file, bytes, dict, image or array -> ``(array, layout_known)``: the array (or the item itself when it already
    is one) and whether it is known to be ``(C, H, W)`` (read from an image or TIFF pages, not from an array)."""
    if isinstance(item, dict):
        if item.get("bytes") is not None:
            return _read_band_file(io.BytesIO(item["bytes"]), item.get("path") or "")
        if item.get("path") is not None:
            return _read_band_file(item["path"], item["path"])
        raise ValueError("the image entry has neither 'bytes' nor 'path'")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _read_band_file(io.BytesIO(item), "")
    if isinstance(item, (str, os.PathLike)):
        return _read_band_file(item, os.fspath(item))
    if item is None:
        raise ValueError("the image is missing (None)")
    if isinstance(item, PIL.Image.Image):
        return _pil_bands(item), True
    if hasattr(item, "detach"):  # a torch tensor, without importing torch here
        return item.detach().cpu().numpy(), False
    return item, False


def _read_band_file(source, name: str) -> tuple[np.ndarray, bool]:
    suffix = os.path.splitext(str(name))[1].lower()
    if suffix in ARRAY_SUFFIXES or (not suffix and _looks_like_numpy(source)):
        loaded = np.load(source, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                if "image" in keys:
                    return loaded["image"], False
                if len(keys) != 1:
                    raise ValueError(
                        f"{name or 'the .npz file'} holds arrays {keys}: store one array, or name it 'image'"
                    )
                return loaded[keys[0]], False
        return loaded, False
    image = PIL.Image.open(source)
    pages = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        pages.append(_pil_bands(image))
    return np.concatenate(pages, axis=0), True


def _looks_like_numpy(source) -> bool:
    if not isinstance(source, io.BytesIO):
        return False
    magic = source.getvalue()[:6]
    return magic == b"\x93NUMPY" or magic[:2] == b"PK"


def _pil_bands(image: PIL.Image.Image) -> np.ndarray:
    """One PIL image (or TIFF page) -> ``(C, H, W)``: its channels, alpha dropped from RGBA / LA, palettes to RGB."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGB")
    elif image.mode == "LA":
        image = image.convert("L")
    elif image.mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _as_bands(array: Any, layout_known: bool, num_channels: int | None, channels_last: bool | None) -> np.ndarray:
    """An array of shape ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)`` -> float32 ``(C, H, W)``; ``layout_known``: it
    already is ``(C, H, W)``, else `_bands_last` tells."""
    array = np.asarray(array)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"cannot read bands from an array of dtype {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim != 3:
        raise ValueError(
            f"cannot read an image from an array of shape {array.shape}: expected (C, H, W), (H, W, C) or (H, W)"
        )
    elif not layout_known and _bands_last(array.shape, num_channels, channels_last):
        array = array.transpose(2, 0, 1)
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which decode_bands refuses with a count
        return np.ascontiguousarray(array, dtype=np.float32)


def _bands_last(shape: tuple[int, ...], num_channels: int | None, channels_last: bool | None) -> bool:
    """Whether a 3-d array of ``shape`` is ``(H, W, C)``: as ``channels_last`` says when given, else when only its last
    axis has ``num_channels`` entries (None, a stack's part: ``(C, H, W)``)."""
    if channels_last is not None:
        return channels_last
    if num_channels is None or shape[-1] != num_channels:
        return False
    if shape[0] == num_channels:
        raise BandLayoutError(
            f"an array of shape {tuple(shape)} with num_channels={num_channels} reads as (bands, height, width) and "
            "as (height, width, bands): set data.channels_last to true if its bands are the last axis, false if the "
            "first"
        )
    return True
