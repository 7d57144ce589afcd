"""What SimCLR, BYOL and VICReg share: two augmented views of each image. ``TwoViewConfig`` is their augmentation
section, ``two_view_preset`` gives a method its defaults, ``TwoViewMethod`` holds their common training step.

The three augment alike (random resized crop, flip, colour jitter, grayscale, blur, solarisation, in the names of
lightly's ``SimCLRTransform``) and differ only in defaults: SimCLR draws both views alike, BYOL (and VICReg, which
takes BYOL's views) blurs and solarises each view with a probability of its own. Each method's module declares its
preset (``SimClrViewConfig``, ``ByolViewConfig``, ``VicRegViewConfig``: direct subclasses of ``TwoViewConfig``) and
its method class (``TwoViewMethod`` before ``PretrainingMethod`` or ``EmaTeacherMethod``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from hf_ssl.data import ViewGroup, ViewsConfig
from hf_ssl.data.views import MEAN_HELP, NUM_CHANNELS_HELP, STD_HELP, check_rgb_only_settings

# the probabilities a preset may set per view, by giving a (view 1, view 2) pair as default
PER_VIEW_CAPABLE_KEYS = ("gaussian_blur", "solarize_prob")


@dataclass
class TwoViewConfig:
    """Two augmented views of each image, named and defaulted as lightly's ``SimCLRTransform`` (the SimCLR paper,
    Chen et al., 2020, Appendix A): random resized crop of scale (0.08, 1), horizontal flip 0.5, colour jitter with
    probability 0.8 at strength 1 (brightness, contrast and saturation 0.8 x strength, hue 0.2 x strength),
    grayscale 0.2, Gaussian blur with probability 0.5 and sigma in (0.1, 2.0), no solarisation.

    Both views are drawn alike but for the keys of ``per_view_keys``, which hold one probability per view (BYOL's
    asymmetric views); the crops are cut on the CPU, everything photometric runs batched on the training device
    (``to_views_config`` gives the pipeline's view group). A method's defaults are a preset (``two_view_preset``).
    """

    # keys holding a (view 1, view 2) pair of probabilities instead of one probability for both views
    per_view_keys: ClassVar[tuple[str, ...]] = ()
    # how an error names this section
    views_name: ClassVar[str] = "two-view augmentation"

    input_size: int = field(default=224, metadata={"help": "Side of each view, in pixels."})
    min_scale: float = field(
        default=0.08,
        metadata={
            "help": "Smallest fraction of the image area a view covers (random resized crop up to 1.0).",
        },
    )
    crop_ratio: tuple[float, float] = field(
        default=(3 / 4, 4 / 3),
        metadata={
            "help": "(min, max) width/height ratio of a crop before it is resized.",
        },
    )
    interpolation: str = field(
        default="bilinear",
        metadata={
            "help": "Resampling of the crop resize: nearest, bilinear, bicubic, lanczos, box or hamming.",
        },
    )
    hf_prob: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    cj_prob: float = field(default=0.8, metadata={"help": "Probability of colour jitter."})
    cj_strength: float = field(
        default=1.0,
        metadata={
            "help": "Colour jitter strength s: multiplies cj_bright, cj_contrast, cj_sat and cj_hue.",
        },
    )
    cj_bright: float = field(default=0.8, metadata={"help": "Brightness jitter at strength 1."})
    cj_contrast: float = field(default=0.8, metadata={"help": "Contrast jitter at strength 1."})
    cj_sat: float = field(default=0.8, metadata={"help": "Saturation jitter at strength 1."})
    cj_hue: float = field(
        default=0.2,
        metadata={
            "help": "Hue jitter at strength 1 (cj_hue x cj_strength at most 0.5).",
        },
    )
    random_gray_scale: float = field(default=0.2, metadata={"help": "Probability of turning a view to grayscale."})
    gaussian_blur: float = field(
        default=0.5,
        metadata={
            "help": "Probability of a Gaussian blur.",
            "per_view_help": "Probability of a Gaussian blur of (view 1, view 2).",
        },
    )
    kernel_size: float | None = field(
        default=None,
        metadata={
            "help": "Blur kernel side as a fraction of input_size (the paper: 0.1); null: the whole Gaussian of the "
            "largest sigma.",
        },
    )
    sigmas: tuple[float, float] = field(
        default=(0.1, 2.0),
        metadata={
            "help": "(min, max) sigma of the blur, in pixels of the view.",
        },
    )
    solarize_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of solarising a view (pixels >= 0.5 inverted).",
            "per_view_help": "Probability of solarising (view 1, view 2) (pixels >= 0.5 inverted).",
        },
    )
    num_channels: int | None = field(default=None, metadata={"help": NUM_CHANNELS_HELP})
    mean: tuple[float, ...] | None = field(default=None, metadata={"help": MEAN_HELP})
    std: tuple[float, ...] | None = field(default=None, metadata={"help": STD_HELP})

    def __post_init__(self):
        for name in ("hf_prob", "cj_prob", "random_gray_scale", "gaussian_blur", "solarize_prob"):
            for value in self.view_probabilities(name):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        for name in ("cj_strength", "cj_bright", "cj_contrast", "cj_sat", "cj_hue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        hue_shift = self.cj_hue * self.cj_strength
        if hue_shift > 0.5:
            raise ValueError(
                f"cj_hue x cj_strength must be at most 0.5 (a hue shift of half a turn), got {hue_shift:g}"
            )
        min_scale = self.min_scale
        if isinstance(min_scale, bool) or not isinstance(min_scale, (int, float)) or not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1] (a fraction of the image area), got {min_scale!r}")
        if self.kernel_size is not None and (isinstance(self.kernel_size, bool) or not 0 < self.kernel_size <= 1):
            raise ValueError(
                f"kernel_size must be a fraction of input_size in (0, 1] or null, got {self.kernel_size!r}"
            )
        jitter = self.cj_prob > 0 and self.cj_strength > 0  # the values as written: the message names the keys
        check_rgb_only_settings(
            self.num_channels,
            {
                "cj_sat": self.cj_sat if jitter else 0.0,
                "cj_hue": self.cj_hue if jitter else 0.0,
                "random_gray_scale": self.random_gray_scale,
                "solarize_prob": max(self.view_probabilities("solarize_prob")),
            },
        )
        try:
            views = self.to_views_config()
        except ValueError as error:  # the other checks, in the pipeline's terms
            raise ValueError(f"invalid {self.views_name}: {error}") from None
        if self.mean is not None:
            self.mean, self.std = views.mean, views.std

    def view_probabilities(self, name: str) -> tuple[float, ...]:
        """The probability ``name`` as the pipeline takes it: one value for both views, or a (view 1, view 2) pair
        for the keys of ``per_view_keys``."""
        value = getattr(self, name)
        if name not in self.per_view_keys:
            return (value,)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(f"{name} must be a (view 1, view 2) pair of probabilities, got {value!r}")
        return tuple(value)

    def blur_kernel_size(self) -> int | None:
        """Odd taps of the blur kernel: ``kernel_size`` x ``input_size`` rounded to the nearest odd number (at
        least 1)."""
        if self.kernel_size is None:
            return None
        taps = max(1, round(self.kernel_size * self.input_size))
        return taps if taps % 2 else taps + 1

    @staticmethod
    def size_keys() -> dict[str, str]:
        """Group name -> the key of this section that sets its size."""
        return {"views": "augmentation.input_size"}

    def to_views_config(self) -> ViewsConfig:
        """The data pipeline's view groups: one group ``views`` of 2 views of ``input_size``, drawn alike but for the
        probabilities of ``per_view_keys``."""
        strength = self.cj_strength
        group = ViewGroup(
            number=2,
            size=self.input_size,
            scale=(self.min_scale, 1.0),
            crop_ratio=tuple(self.crop_ratio),
            interpolation=self.interpolation,
            flip_probability=self.hf_prob,
            color_jitter_probability=self.cj_prob,
            brightness=self.cj_bright * strength,
            contrast=self.cj_contrast * strength,
            saturation=self.cj_sat * strength,
            hue=self.cj_hue * strength,
            grayscale_probability=self.random_gray_scale,
            blur_sigma=tuple(self.sigmas),
            blur_kernel_size=self.blur_kernel_size(),
            blur_probabilities=self.view_probabilities("gaussian_blur"),
            solarize_probabilities=self.view_probabilities("solarize_prob"),
        )
        return ViewsConfig(groups={"views": group}, num_channels=self.num_channels, mean=self.mean, std=self.std)


# BYOL's views (Grill et al., 2020, Appendix B, Table 6), which VICReg takes as they are (Bardes et al., 2022)
ASYMMETRIC_VIEW_DEFAULTS: dict[str, Any] = {
    "interpolation": "bicubic",
    "cj_bright": 0.4,
    "cj_contrast": 0.4,
    "cj_sat": 0.2,
    "cj_hue": 0.1,
    "gaussian_blur": (1.0, 0.1),
    "solarize_prob": (0.0, 0.2),
}


def two_view_preset(name: str, module: str, doc: str, views_name: str, **defaults: Any) -> type[TwoViewConfig]:
    """A method's augmentation section: a direct subclass of ``TwoViewConfig`` that changes nothing but the defaults
    of the keys in ``defaults`` (each key keeps its type and help), named ``name`` in ``module`` (the method's
    module, where it is imported and unpickled from), documented by ``doc`` (``--help`` shows its first paragraph),
    named ``views_name`` in errors. A function rather than a hand-written subclass per method: BYOL and VICReg share
    their defaults (``ASYMMETRIC_VIEW_DEFAULTS``) without one preset subclassing the other.

    A (view 1, view 2) pair as the default of a key of ``PER_VIEW_CAPABLE_KEYS`` makes it one of the preset's
    ``per_view_keys``: the key then takes a pair only, ``tuple[float, float]`` with the help of the pair (a recipe's
    single value is an error naming the key).
    """
    fields = {item.name: item for item in dataclasses.fields(TwoViewConfig)}
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise TypeError(f"{name}: TwoViewConfig has no keys {unknown}; its keys are {list(fields)}")
    hints = typing.get_type_hints(TwoViewConfig)
    per_view_keys = tuple(key for key in PER_VIEW_CAPABLE_KEYS if isinstance(defaults.get(key), tuple))
    annotations, namespace = {}, {}
    for key, default in defaults.items():
        if key in per_view_keys:
            annotations[key] = tuple[float, float]
            metadata = {"help": fields[key].metadata["per_view_help"]}
        else:
            annotations[key] = hints[key]
            metadata = dict(fields[key].metadata)
        namespace[key] = field(default=default, metadata=metadata)
    namespace.update(
        {
            "__module__": module,
            "__qualname__": name,
            "__doc__": doc,
            "__annotations__": annotations,
            "per_view_keys": per_view_keys,
            "views_name": views_name,
        }
    )
    # redeclared fields keep their place in TwoViewConfig's order: to_plain gives the same keys in the same order
    return dataclass(type(name, (TwoViewConfig,), namespace))


class TwoViewMethod:
    """The training step of a method on two augmented views of each image (SimCLR, BYOL, VICReg): the view group
    ``views`` and its exactly 2 views, the forward ``model(views=...)``, and an empty batch's part in a loss that
    gathers over processes.

    A mixin of these hooks only, not a ``PretrainingMethod``: put it before the method's base,
    ``class SimClrMethod(TwoViewMethod, PretrainingMethod)`` or ``class ByolMethod(TwoViewMethod, EmaTeacherMethod)``.
    Its hooks then come before the base's, its ``super()`` is that base, and the base's own order
    (``EmaTeacherMethod`` before ``PretrainingMethod``) stays as it is: no class is reached by two paths.

    A method sets ``display_name`` (how errors name it) and, when its loss gathers every process's rows (SimCLR's
    NT-Xent, VICReg's statistics), ``gathered_width``.
    """

    display_name: ClassVar[str] = ""
    required_view_groups: ClassVar[tuple[str, ...]] = ("views",)

    @classmethod
    def check_view_groups(cls, views: ViewsConfig) -> None:
        super().check_view_groups(views)
        number = views.groups["views"].number
        if number != 2:
            raise ValueError(
                f"{cls.display_name or cls.name} trains on 2 views of each image; the augmentation's views group "
                f"has {number}"
            )

    def compute_outputs(self, model, views, step: int):
        return model(views=views["views"])

    def gathered_width(self) -> int | None:
        """Width of the rows the loss gathers from every process (SimCLR's projections, VICReg's embeddings), or
        None for a loss without a collective (BYOL's)."""
        return None

    def empty_batch_loss(self, model) -> torch.Tensor:
        width = self.gathered_width()
        if width is None:
            return super().empty_batch_loss(model)
        # the loss gathers the rows of every process: this one takes part with none of its own
        loss_module = self.model.loss
        rows = torch.zeros(0, width, device=self.reduction_device(), requires_grad=True)
        return super().empty_batch_loss(model) + loss_module(rows, rows)
