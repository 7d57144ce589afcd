"""`MultiCropConfig`: every knob of DINO's multi-crop augmentation, with the official defaults.

It is DINO's ``augmentation:`` section in DINO's own terms; ``to_views_config()`` gives the two named view
groups (``global_crops``, ``local_crops``) that the CPU stage (`ViewCropTransform`: random resized crops) and
the device stage (`DeviceAugmentation`: flip, colour jitter, grayscale, blur, solarize, normalisation) run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .views import (
    INTERPOLATIONS,
    MEAN_HELP,
    NUM_CHANNELS_HELP,
    STD_HELP,
    ViewGroup,
    ViewsConfig,
    check_probability,
    check_rgb_only_settings,
)


@dataclass
class MultiCropConfig:
    """Multi-crop augmentation of DINO (Caron et al., 2021), defaults from the official ``main_dino.py``.

    Global crop ``i`` uses ``global_blur_probabilities[i]`` and ``global_solarize_probabilities[i]``;
    a length-1 tuple is broadcast to every global crop when ``global_crops_number != 2``.
    Scales are fractions of the image area, ``crop_ratio`` is the (min, max) width/height ratio.
    """

    global_crops_number: int = field(
        default=2, metadata={"help": "Global (large) crops per image; the teacher sees only these."}
    )
    global_crop_size: int = field(default=224, metadata={"help": "Side of a global crop, in pixels."})
    global_crops_scale: tuple[float, float] = field(
        default=(0.4, 1.0), metadata={"help": "(min, max) fraction of the image area a global crop covers."}
    )
    local_crops_number: int = field(
        default=8, metadata={"help": "Local (small) crops per image, seen by the student only (0: none)."}
    )
    local_crop_size: int = field(
        default=96, metadata={"help": "Side of a local crop, in pixels (at most global_crop_size)."}
    )
    local_crops_scale: tuple[float, float] = field(
        default=(0.05, 0.4), metadata={"help": "(min, max) fraction of the image area a local crop covers."}
    )
    crop_ratio: tuple[float, float] = field(
        default=(3 / 4, 4 / 3), metadata={"help": "(min, max) width/height ratio of a crop before it is resized."}
    )
    interpolation: str = field(
        default="bicubic",
        metadata={"help": "Resampling of the crop resize: nearest, bilinear, bicubic, lanczos, box or hamming."},
    )
    flip_probability: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    color_jitter_probability: float = field(
        default=0.8, metadata={"help": "Probability of colour jitter (brightness, contrast, saturation, hue)."}
    )
    brightness: float = field(
        default=0.4,
        metadata={"help": "Brightness jitter: a factor drawn from [max(0, 1 - brightness), 1 + brightness]."},
    )
    contrast: float = field(
        default=0.4, metadata={"help": "Contrast jitter: a factor drawn from [max(0, 1 - contrast), 1 + contrast]."}
    )
    saturation: float = field(
        default=0.2,
        metadata={"help": "Saturation jitter: a factor drawn from [max(0, 1 - saturation), 1 + saturation]."},
    )
    hue: float = field(
        default=0.1, metadata={"help": "Hue jitter: a shift drawn from [-hue, hue] of a full turn, in [0, 0.5]."}
    )
    grayscale_probability: float = field(
        default=0.2, metadata={"help": "Probability of turning the crop to grayscale."}
    )
    blur_sigma: tuple[float, float] = field(
        default=(0.1, 2.0), metadata={"help": "(min, max) sigma of the Gaussian blur, in pixels of the crop."}
    )
    blur_kernel_size: int | None = field(
        default=None,
        metadata={"help": "Taps of the blur kernel (odd); null: 2 * ceil(3 * max sigma) + 1, the whole Gaussian."},
    )
    global_blur_probabilities: tuple[float, ...] = field(
        default=(1.0, 0.1), metadata={"help": "Blur probability of each global crop, one value per global crop."}
    )
    local_blur_probability: float = field(default=0.5, metadata={"help": "Blur probability of each local crop."})
    global_solarize_probabilities: tuple[float, ...] = field(
        default=(0.0, 0.2), metadata={"help": "Solarize probability of each global crop, one value per global crop."}
    )
    local_solarize_probability: float = field(
        default=0.0, metadata={"help": "Solarize probability of each local crop."}
    )
    num_channels: int | None = field(default=None, metadata={"help": NUM_CHANNELS_HELP})
    mean: tuple[float, ...] | None = field(default=None, metadata={"help": MEAN_HELP})
    std: tuple[float, ...] | None = field(default=None, metadata={"help": STD_HELP})

    def __post_init__(self):
        if not isinstance(self.global_crops_number, int) or self.global_crops_number < 1:
            raise ValueError(f"global_crops_number must be an integer >= 1, got {self.global_crops_number!r}")
        if not isinstance(self.local_crops_number, int) or self.local_crops_number < 0:
            raise ValueError(f"local_crops_number must be an integer >= 0, got {self.local_crops_number!r}")
        for name in ("global_crop_size", "local_crop_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer (pixels), got {value!r}")
        if self.local_crops_number > 0 and self.local_crop_size > self.global_crop_size:
            raise ValueError(
                f"local_crop_size ({self.local_crop_size}) is larger than global_crop_size ({self.global_crop_size}): "
                "local crops are the small views (DINO: 96 vs 224); swap the two sizes, or set local_crops_number=0"
            )

        for name in ("global_crops_scale", "local_crops_scale"):
            low, high = self._pair(name)
            if not 0 < low <= high <= 1:
                raise ValueError(
                    f"{name} must be (min, max) with 0 < min <= max <= 1 (fractions of the image area), got "
                    f"{(low, high)}"
                )
        low, high = self._pair("crop_ratio")
        if not 0 < low <= high:
            raise ValueError(
                f"crop_ratio must be (min, max) width/height ratios with 0 < min <= max, got {(low, high)}"
            )
        low, high = self._pair("blur_sigma")
        if not 0 < low <= high:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max (pixels), got {(low, high)}")

        if self.blur_kernel_size is not None and (
            isinstance(self.blur_kernel_size, bool)
            or not isinstance(self.blur_kernel_size, int)
            or self.blur_kernel_size < 1
            or self.blur_kernel_size % 2 == 0
        ):
            raise ValueError(
                "blur_kernel_size must be an odd integer >= 1 (taps of the blur kernel) or null, got "
                f"{self.blur_kernel_size!r}"
            )

        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}")

        for name in (
            "flip_probability",
            "color_jitter_probability",
            "grayscale_probability",
            "local_blur_probability",
            "local_solarize_probability",
        ):
            check_probability(name, getattr(self, name))
        for name in ("global_blur_probabilities", "global_solarize_probabilities"):
            try:
                values = tuple(float(value) for value in getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name} must be a list of probabilities, one per global crop, got {getattr(self, name)!r}"
                ) from None
            if len(values) == 1 and self.global_crops_number != 2:
                values = values * self.global_crops_number
            if len(values) != self.global_crops_number:
                allowed = "one value per global crop" + (
                    " or a single value for all" if self.global_crops_number != 2 else ""
                )
                raise ValueError(
                    f"{name} must have {self.global_crops_number} values ({allowed}, global_crops_number="
                    f"{self.global_crops_number}), got {len(values)}: {getattr(self, name)!r}"
                )
            for index, value in enumerate(values):
                check_probability(f"{name}[{index}]", value)
            setattr(self, name, values)

        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0 <= value:
                raise ValueError(
                    f"{name} must be >= 0 (jitter factor drawn from [max(0, 1 - {name}), 1 + {name}]), got {value!r}"
                )
        if not 0 <= self.hue <= 0.5:
            raise ValueError(
                f"hue must be in [0, 0.5] (shift drawn from [-hue, hue] of a full turn), got {self.hue!r}"
            )

        jitter = self.color_jitter_probability > 0
        check_rgb_only_settings(
            self.num_channels,
            {
                "saturation": self.saturation if jitter else 0.0,
                "hue": self.hue if jitter else 0.0,
                "grayscale_probability": self.grayscale_probability,
                "global_solarize_probabilities": max(self.global_solarize_probabilities),
                "local_solarize_probability": self.local_solarize_probability if self.local_crops_number else 0.0,
            },
        )
        views = self.to_views_config()  # checks mean / std against the channels
        if self.mean is not None:
            self.mean, self.std = views.mean, views.std

    def to_views_config(self) -> ViewsConfig:
        """The pipeline's view groups: ``global_crops`` (``global_crops_number`` views) and, when
        ``local_crops_number > 0``, ``local_crops``, drawn in that order."""
        shared = dict(
            crop_ratio=self.crop_ratio,
            interpolation=self.interpolation,
            flip_probability=self.flip_probability,
            color_jitter_probability=self.color_jitter_probability,
            brightness=self.brightness,
            contrast=self.contrast,
            saturation=self.saturation,
            hue=self.hue,
            grayscale_probability=self.grayscale_probability,
            blur_sigma=self.blur_sigma,
            blur_kernel_size=self.blur_kernel_size,
        )
        groups = {
            "global_crops": ViewGroup(
                number=self.global_crops_number,
                size=self.global_crop_size,
                scale=self.global_crops_scale,
                blur_probabilities=self.global_blur_probabilities,
                solarize_probabilities=self.global_solarize_probabilities,
                **shared,
            )
        }
        if self.local_crops_number > 0:
            groups["local_crops"] = ViewGroup(
                number=self.local_crops_number,
                size=self.local_crop_size,
                scale=self.local_crops_scale,
                blur_probabilities=(self.local_blur_probability,),
                solarize_probabilities=(self.local_solarize_probability,),
                **shared,
            )
        return ViewsConfig(groups=groups, num_channels=self.num_channels, mean=self.mean, std=self.std)

    @staticmethod
    def size_keys() -> dict[str, str]:
        """Group name -> the key of this section that sets its size."""
        return {"global_crops": "augmentation.global_crop_size", "local_crops": "augmentation.local_crop_size"}

    def _pair(self, name: str) -> tuple[float, float]:
        """Check that field ``name`` is a (min, max) pair of finite numbers, store it as a float tuple."""
        value = getattr(self, name)
        try:
            low, high = (float(item) for item in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{name} must hold finite numbers, got {value!r}")
        setattr(self, name, (low, high))
        return low, high
