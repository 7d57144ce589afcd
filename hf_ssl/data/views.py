"""Named view groups: what the data pipeline cuts from each image and how each view is augmented.

A method sees a batch of named groups of views. DINO: ``global_crops`` (2 x 224 px) and ``local_crops`` (8 x 96 px);
SimCLR, BYOL and VICReg: ``views`` (2 of one size); I-JEPA: one ``image`` plus masks from its collator. Every group
has its own crop geometry and photometric settings, and the views of a group share one size, so the batch holds
one ``(number, B, C, size, size)`` tensor per group and the backbone runs once per group.

``num_channels`` is 3 for RGB images (8-bit crops, the ImageNet normalisation by default) or any other number of
bands for multispectral and hyperspectral arrays (float crops in the data's own units, normalised with per-band
statistics that ``hf_ssl.data.band_statistics`` computes from the data when none are given). On bands other than
RGB only the band-wise photometric ops run: flip, per-band brightness and contrast jitter, blur. Saturation, hue,
grayscale and solarize mean something for RGB only, and asking for them on N bands is an error naming the key.

    ViewsConfig(groups={"views": ViewGroup(number=2, size=224, scale=(0.08, 1.0))})

The CPU stage (``ViewCropTransform``) and the device stage (``DeviceAugmentation``) both read a ``ViewsConfig``;
a method's augmentation section in its own terms (``MultiCropConfig`` for DINO, ``SimClrViewConfig`` for SimCLR)
turns into one with ``to_views_config()``. Groups are drawn in their order, view by view, so a config and a seed
give the same pixels on every run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CHANNELS_HELP = (
    "Channels of the images: 3 for RGB; any other number of bands for multispectral / hyperspectral arrays "
    "(null in a recipe: the backbone's num_channels)."
)
MEAN_HELP = (
    "Per-channel mean of the final normalisation (null: ImageNet's for RGB, computed from the training data for other "
    "band counts)."
)
STD_HELP = "Per-channel standard deviation of the final normalisation (null: as for mean)."

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
# The crop resize of bands other than RGB, as torch's interpolate modes: PIL's filters take 8-bit images of at
# most 4 channels. bilinear and bicubic are antialiased like PIL's.
BAND_INTERPOLATIONS = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic", "box": "area"}

# Batch keys the collator writes itself; a group may not take one of them as its name.
RESERVED_BATCH_KEYS = frozenset({"labels", "label", "num_skipped", "valid"})


@dataclass
class ViewGroup:
    """``number`` views per image of ``size`` x ``size`` pixels: random resized crops on the CPU, then flip, colour
    jitter, grayscale, Gaussian blur, solarize and normalisation, batched on the training device.

    ``blur_probabilities`` and ``solarize_probabilities`` hold one probability per view (BYOL and DINO blur their
    first view always and their second rarely); a single value applies to every view. Everything else is drawn
    alike for every view of the group.
    """

    number: int = field(default=2, metadata={"help": "Views of each image in this group."})
    size: int = field(default=224, metadata={"help": "Side of each view, in pixels."})
    scale: tuple[float, float] = field(
        default=(0.08, 1.0), metadata={"help": "(min, max) fraction of the image area a view covers."}
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
    grayscale_probability: float = field(default=0.2, metadata={"help": "Probability of turning a view to grayscale."})
    blur_probabilities: tuple[float, ...] = field(
        default=(0.5,), metadata={"help": "Blur probability of each view (one value per view, or one for all)."}
    )
    blur_sigma: tuple[float, float] = field(
        default=(0.1, 2.0), metadata={"help": "(min, max) sigma of the Gaussian blur, in pixels of the view."}
    )
    blur_kernel_size: int | None = field(
        default=None,
        metadata={"help": "Taps of the blur kernel (odd); null: 2 * ceil(3 * max sigma) + 1, the whole Gaussian."},
    )
    solarize_probabilities: tuple[float, ...] = field(
        default=(0.0,), metadata={"help": "Solarize probability of each view (one value per view, or one for all)."}
    )

    def __post_init__(self):
        for name in ("number", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        low, high = self._pair("scale")
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"scale must be (min, max) with 0 < min <= max <= 1 (fractions of the image area), got {(low, high)}"
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
        for name in ("flip_probability", "color_jitter_probability", "grayscale_probability"):
            check_probability(name, getattr(self, name))
        for name in ("blur_probabilities", "solarize_probabilities"):
            setattr(self, name, self._per_view(name))
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value:
                raise ValueError(
                    f"{name} must be >= 0 (jitter factor drawn from [max(0, 1 - {name}), 1 + {name}]), got {value!r}"
                )
        if isinstance(self.hue, bool) or not isinstance(self.hue, (int, float)) or not 0 <= self.hue <= 0.5:
            raise ValueError(
                f"hue must be in [0, 0.5] (shift drawn from [-hue, hue] of a full turn), got {self.hue!r}"
            )

    @property
    def blur_radius(self) -> int:
        """Half the blur kernel: the whole Gaussian of the largest sigma unless ``blur_kernel_size`` says otherwise."""
        return math.ceil(3 * self.blur_sigma[1]) if self.blur_kernel_size is None else (self.blur_kernel_size - 1) // 2

    def _pair(self, name: str) -> tuple[float, float]:
        value = getattr(self, name)
        try:
            low, high = (float(item) for item in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{name} must hold finite numbers, got {value!r}")
        setattr(self, name, (low, high))
        return low, high

    def _per_view(self, name: str) -> tuple[float, ...]:
        value = getattr(self, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)
        try:
            values = tuple(float(item) for item in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a list of probabilities, one per view, got {value!r}") from None
        if len(values) == 1:
            values = values * self.number
        if len(values) != self.number:
            raise ValueError(
                f"{name} must have one value per view ({self.number}) or a single value for all, got {len(values)}: "
                f"{value!r}"
            )
        for index, item in enumerate(values):
            check_probability(f"{name}[{index}]", item)
        return values


@dataclass
class ViewsConfig:
    """The named view groups of a method, in the order they are drawn, and the normalisation they share.

    ``groups`` maps a batch key to its ``ViewGroup`` (or to a mapping of ``ViewGroup`` keys, as a YAML recipe
    writes it). The first group is the one the backbone's native input size must match (DINO's global crops).
    ``mean`` / ``std`` hold one value per channel; ``None`` is ImageNet's for 3 channels and, for any other number
    of bands, statistics still to be computed from the data (``hf_ssl.data.band_statistics``; a recipe does it
    before training). ``needs_statistics`` says whether they still are.
    """

    groups: dict[str, ViewGroup] = field(
        default_factory=lambda: {"views": ViewGroup()},
        metadata={"help": "Batch key -> its views (number, size, scale, photometric settings)."},
    )
    num_channels: int | None = field(default=None, metadata={"help": NUM_CHANNELS_HELP})
    mean: tuple[float, ...] | None = field(default=None, metadata={"help": MEAN_HELP})
    std: tuple[float, ...] | None = field(default=None, metadata={"help": STD_HELP})

    def __post_init__(self):
        if not isinstance(self.groups, Mapping) or not self.groups:
            raise ValueError(f"groups must map at least one batch key to its views, got {self.groups!r}")
        groups = {}
        for name, group in self.groups.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"a view group's name is its batch key and must be an identifier, got {name!r}")
            if name in RESERVED_BATCH_KEYS:
                raise ValueError(
                    f"{name!r} is a batch key of its own ({sorted(RESERVED_BATCH_KEYS)}): give the view group another "
                    "name"
                )
            if isinstance(group, Mapping):
                valid = [item.name for item in fields(ViewGroup)]
                unknown = sorted(set(group) - set(valid))
                if unknown:
                    raise ValueError(
                        f"unknown key {unknown[0]!r} in view group {name!r}; the keys of a view group are {valid}"
                    )
                try:
                    group = ViewGroup(**group)
                except ValueError as error:
                    raise ValueError(f"view group {name!r}: {error}") from None
            elif not isinstance(group, ViewGroup):
                raise ValueError(
                    f"view group {name!r} must be a ViewGroup or a mapping of its keys, got {type(group).__name__}"
                )
            groups[name] = group
        self.groups = groups
        self.num_channels = 3 if self.num_channels is None else check_num_channels(self.num_channels)
        self.mean, self.std = resolve_normalisation(self.mean, self.std, self.num_channels)
        check_rgb_only_settings(
            self.num_channels,
            {
                f"groups.{name}.{key}": value
                for name, group in groups.items()
                for key, value in rgb_only_settings(group).items()
            },
        )
        for name, group in groups.items():
            if not self.is_rgb and group.interpolation not in BAND_INTERPOLATIONS:
                raise ValueError(
                    f"interpolation={group.interpolation!r} (view group {name!r}) is a filter for 8-bit RGB images; "
                    f"crops of {self.num_channels} bands are resized with one of {list(BAND_INTERPOLATIONS)}"
                )

    @property
    def is_rgb(self) -> bool:
        """3 channels: 8-bit RGB crops and the whole photometric pipeline; otherwise float bands."""
        return self.num_channels == 3

    @property
    def needs_statistics(self) -> bool:
        """``mean`` / ``std`` are still to be computed from the data (``hf_ssl.data.band_statistics``)."""
        return self.mean is None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.groups)

    @property
    def first(self) -> ViewGroup:
        """The first group: it counts the images of a batch and sets the backbone's native input size."""
        return next(iter(self.groups.values()))

    def describe(self) -> str:
        """One line for a model card: ``2 x 224px (scale (0.4, 1.0)), 8 x 96px (scale (0.05, 0.4))``."""
        return ", ".join(f"{group.number} x {group.size}px (scale {group.scale})" for group in self.groups.values())

    def size_keys(self) -> dict[str, str]:
        """Group name -> the recipe key of its view size (what an error about the size names)."""
        return {name: f"augmentation.groups.{name}.size" for name in self.groups}

    def to_views_config(self) -> ViewsConfig:
        return self


def as_views_config(config) -> ViewsConfig:
    """The ``ViewsConfig`` of an augmentation section: itself, or its ``to_views_config()``."""
    if isinstance(config, ViewsConfig):
        return config
    convert = getattr(config, "to_views_config", None)
    if convert is None:
        raise TypeError(
            f"{type(config).__name__} is not an augmentation config: give a ViewsConfig or a config with "
            "to_views_config()"
        )
    return convert()


def view_size_keys(config) -> dict[str, str]:
    """Group name -> the recipe key that sets its size, in the terms of the section ``config`` (``size_keys()``
    when it has one, else ``augmentation.groups.<name>.size``)."""
    keys = getattr(config, "size_keys", None)
    return keys() if keys is not None else as_views_config(config).size_keys()


def check_probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def check_num_channels(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"num_channels must be a positive integer (3 for RGB, the band count otherwise), got {value!r}"
        )
    return value


def normalisation_values(name: str, value, num_channels: int = 3) -> tuple[float, ...]:
    """``num_channels`` per-channel numbers (``mean`` or ``std``; a std must be positive)."""
    what = "one per RGB channel" if num_channels == 3 else f"one per band, num_channels={num_channels}"
    try:
        values = tuple(float(item) for item in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {num_channels} numbers ({what}), got {value!r}") from None
    if len(values) != num_channels:
        raise ValueError(
            f"{name} must have {num_channels} values ({what}), got {len(values)}"
            + ("; set it to null to compute it from the training data" if num_channels != 3 else "")
        )
    if not all(math.isfinite(item) for item in values):
        raise ValueError(f"{name} must hold finite numbers, got {value!r}")
    if name == "std" and any(item <= 0 for item in values):
        raise ValueError(f"std must be positive for every channel, got {value!r}")
    return values


def resolve_normalisation(mean, std, num_channels: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """``(mean, std)`` checked against ``num_channels``: both null gives ImageNet's for 3 channels and stays null
    (to be computed from the data) otherwise; one without the other is an error."""
    mean = normalisation_values("mean", mean, num_channels) if mean is not None else None
    std = normalisation_values("std", std, num_channels) if std is not None else None
    if (mean is None) != (std is None):
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        raise ValueError(
            f"{missing} is null and {given} is not: give both, or neither (null: ImageNet's for RGB, computed from "
            "the data for other bands)"
        )
    if mean is None:
        return (IMAGENET_MEAN, IMAGENET_STD) if num_channels == 3 else (None, None)
    return mean, std


def rgb_only_settings(group: ViewGroup) -> dict[str, float]:
    """The settings of ``group`` that turn on an RGB-only op (saturation, hue, grayscale, solarize), by key."""
    jitter = group.color_jitter_probability > 0
    return {
        "saturation": group.saturation if jitter else 0.0,
        "hue": group.hue if jitter else 0.0,
        "grayscale_probability": group.grayscale_probability,
        "solarize_probabilities": max(group.solarize_probabilities),
    }


def check_rgb_only_settings(num_channels: int | None, settings: dict[str, float]) -> None:
    """Refuse, on bands other than RGB, every op of ``settings`` (``{recipe key: value}``) that is on: saturation,
    hue, grayscale and solarize are defined on RGB colours only. The message names every key to set to 0."""
    if num_channels is None or num_channels == 3:
        return
    active = [f"{key}={value:g}" for key, value in settings.items() if value]
    if active:
        raise ValueError(
            f"{', '.join(active)}: saturation, hue, grayscale and solarize are RGB-only augmentations and the images "
            f"have {num_channels} bands; set {'it' if len(active) == 1 else 'them'} to 0 (brightness and contrast "
            "jitter, blur, flips and crops work per band)"
        )
