"""Per-channel normalisation statistics computed from the data, for bands that have no standard ones.

RGB images are normalised with ImageNet's mean and std by default; multispectral and hyperspectral bands have no
such convention, so ``band_statistics`` measures each band's mean and standard deviation over the pixels of a
sample of the training images. A recipe does it before training when ``augmentation.mean`` / ``std`` are null,
writes the values into the resolved recipe and the image processor, and the exported backbone's processor
normalises exactly as training did.
"""

from __future__ import annotations

import logging

import numpy as np

from .images import BandLayoutError, decode_bands, decode_image, describe_image, to_8bit

logger = logging.getLogger(__name__)


def band_statistics(
    dataset,
    num_channels: int,
    max_images: int | None = 1000,
    image_column: str = "image",
    *,
    channels_last: bool | None = None,
    skip_bad_images: bool = True,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)``, one value per channel, over every pixel of up to ``max_images`` images spread evenly over
    ``dataset`` (a ``datasets.Dataset`` or a list of items; None: all of them).

    Images are read as training reads them: 3 channels as 8-bit RGB scaled to [0, 1] (what the device
    augmentation normalises), other band counts as float bands in the data's own units
    (`hf_ssl.data.images.decode_bands` with ``channels_last``). Unreadable images, images with another band count
    and images holding NaN / infinite values are skipped, each logged with its file, and counted in a warning;
    none readable is a ``ValueError``, and so is the first of them when ``skip_bad_images`` is False (naming the
    file). Arrays whose band axis their shape does not tell raise ``BandLayoutError``, never skipped. Sums are
    accumulated in float64, so the std of bands with large values (16-bit counts) keeps its precision. A band that
    never varies gets std 1 (it is only centred), with a warning.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: there are no pixels to compute the normalisation from")
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    positions = np.unique(np.linspace(0, len(dataset) - 1, num=count).astype(np.int64)).tolist()
    if hasattr(dataset, "cast_column"):
        from .loading import undecoded_images  # a corrupt file is skipped here, not raised inside datasets

        rows = undecoded_images(dataset, image_column).select(positions)[image_column]
    else:
        rows = [dataset[position] for position in positions]
    total = np.zeros(num_channels, np.float64)
    total_squares = np.zeros(num_channels, np.float64)
    pixels, skipped = 0, 0
    for position, item in zip(positions, rows):
        try:
            bands = _read(item, num_channels, channels_last)
        except BandLayoutError:
            raise
        except Exception as error:  # unreadable like in training: skip and count
            where = describe_image(item, f"row {position}")
            if not skip_bad_images:
                raise ValueError(
                    f"cannot read {where}: {type(error).__name__}: {error}. Fix or remove the file, or skip such "
                    "images (data.skip_bad_images: true)"
                ) from error
            skipped += 1
            logger.warning("Normalisation statistics: skipping %s: %s: %s", where, type(error).__name__, error)
            continue
        flat = bands.reshape(num_channels, -1).astype(np.float64)
        total += flat.sum(axis=1)
        total_squares += np.square(flat).sum(axis=1)
        pixels += flat.shape[1]
    if pixels == 0:
        raise ValueError(f"none of the {len(positions)} images sampled for the normalisation statistics could be read")
    mean = total / pixels
    variance = np.maximum(total_squares / pixels - np.square(mean), 0.0)
    std = np.sqrt(variance)
    constant = np.flatnonzero(std <= 1e-12 * np.maximum(1.0, np.abs(mean)))
    if constant.size:
        logger.warning(
            "Bands %s are constant over the sampled images: their std is set to 1 (they are only centred)",
            constant.tolist(),
        )
        std[constant] = 1.0
    logger.log(
        logging.WARNING if skipped else logging.INFO,
        "Normalisation statistics of %d channels from %d images (%d skipped)",
        num_channels,
        len(positions) - skipped,
        skipped,
    )
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


def _read(item, num_channels: int, channels_last: bool | None) -> np.ndarray:
    if num_channels == 3:
        return np.asarray(to_8bit(decode_image(item)).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255.0
    return decode_bands(item, num_channels, channels_last=channels_last)
