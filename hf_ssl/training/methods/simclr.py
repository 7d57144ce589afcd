"""SimCLR's training step on the shared engines: ``SimClrViewConfig``, ``SimClrTrainingArguments``, ``SimClrMethod``.

SimCLR has no state around the optimizer step: two augmented views of each image, one backbone and projection
head, the NT-Xent loss over the global batch (``hf_ssl.models.simclr``). What it sets here are its augmentation
(the parameter names of lightly's ``SimCLRTransform``, as the SimCLR training guides use them) and its optimizer
defaults (the paper's LARS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from hf_ssl.data import ViewGroup, ViewsConfig
from hf_ssl.data.views import MEAN_HELP, NUM_CHANNELS_HELP, STD_HELP, check_rgb_only_settings
from hf_ssl.training.arguments import PretrainingArguments
from hf_ssl.training.methods.base import PretrainingMethod


@dataclass
class SimClrViewConfig:
    """The two augmented views of SimCLR (Chen et al., 2020, Appendix A), named as lightly's ``SimCLRTransform``.
    Defaults are the paper's: random resized crop of scale (0.08, 1), horizontal flip 0.5, colour jitter with
    probability 0.8 at strength 1 (brightness, contrast and saturation 0.8 x strength, hue 0.2 x strength),
    grayscale 0.2, Gaussian blur with probability 0.5 and sigma in (0.1, 2.0), no solarisation.

    Both views are drawn alike; the crops are cut on the CPU, everything photometric runs batched on the training
    device (``to_views_config`` gives the pipeline's view group). A subclass may give the keys of ``per_view_keys``
    one probability per view (BYOL's asymmetric views: ``hf_ssl.training.methods.byol.ByolViewConfig``).
    """

    # keys holding a (view 1, view 2) pair of probabilities instead of one probability for both views
    per_view_keys: ClassVar[tuple[str, ...]] = ()
    # how an error names this section
    views_name: ClassVar[str] = "SimCLR views"

    input_size: int = field(default=224, metadata={"help": "Side of each view, in pixels."})
    min_scale: float = field(default=0.08, metadata={"help": "Smallest fraction of the image area a view covers (random resized crop up to 1.0)."})
    crop_ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3), metadata={"help": "(min, max) width/height ratio of a crop before it is resized."})
    interpolation: str = field(default="bilinear", metadata={"help": "Resampling of the crop resize: nearest, bilinear, bicubic, lanczos, box or hamming."})
    hf_prob: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    cj_prob: float = field(default=0.8, metadata={"help": "Probability of colour jitter."})
    cj_strength: float = field(default=1.0, metadata={"help": "Colour jitter strength s: multiplies cj_bright, cj_contrast, cj_sat and cj_hue."})
    cj_bright: float = field(default=0.8, metadata={"help": "Brightness jitter at strength 1."})
    cj_contrast: float = field(default=0.8, metadata={"help": "Contrast jitter at strength 1."})
    cj_sat: float = field(default=0.8, metadata={"help": "Saturation jitter at strength 1."})
    cj_hue: float = field(default=0.2, metadata={"help": "Hue jitter at strength 1 (cj_hue x cj_strength at most 0.5)."})
    random_gray_scale: float = field(default=0.2, metadata={"help": "Probability of turning a view to grayscale."})
    gaussian_blur: float = field(default=0.5, metadata={"help": "Probability of a Gaussian blur."})
    kernel_size: float | None = field(default=None, metadata={"help": "Blur kernel side as a fraction of input_size (the paper: 0.1); null: the whole Gaussian of the largest sigma."})
    sigmas: tuple[float, float] = field(default=(0.1, 2.0), metadata={"help": "(min, max) sigma of the blur, in pixels of the view."})
    solarize_prob: float = field(default=0.0, metadata={"help": "Probability of solarising a view (pixels >= 0.5 inverted)."})
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
        if self.cj_hue * self.cj_strength > 0.5:
            raise ValueError(f"cj_hue x cj_strength must be at most 0.5 (a hue shift of half a turn), got {self.cj_hue * self.cj_strength:g}")
        if isinstance(self.min_scale, bool) or not isinstance(self.min_scale, (int, float)) or not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1] (a fraction of the image area), got {self.min_scale!r}")
        if self.kernel_size is not None and (isinstance(self.kernel_size, bool) or not 0 < self.kernel_size <= 1):
            raise ValueError(f"kernel_size must be a fraction of input_size in (0, 1] or null, got {self.kernel_size!r}")
        jitter = self.cj_prob > 0 and self.cj_strength > 0  # the values as written: the message names the keys
        check_rgb_only_settings(self.num_channels, {
            "cj_sat": self.cj_sat if jitter else 0.0,
            "cj_hue": self.cj_hue if jitter else 0.0,
            "random_gray_scale": self.random_gray_scale,
            "solarize_prob": max(self.view_probabilities("solarize_prob")),
        })
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
        """Odd taps of the blur kernel: ``kernel_size`` x ``input_size`` rounded to the nearest odd number (at least 1)."""
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


@dataclass
class SimClrTrainingArguments(PretrainingArguments):
    """``PretrainingArguments`` with SimCLR's defaults (the paper's ImageNet recipe): LARS, lr 0.3 x total batch /
    256, 10 warmup epochs then cosine, weight decay 1e-6 (not on biases and BatchNorm), no clipping."""

    optimizer: str = field(default="lars", metadata={"help": "adamw, sgd (with momentum) or lars (SGD with layer-wise trust ratios; biases and norms excluded)."})
    learning_rate: float = field(default=0.3, metadata={"help": "Peak lr (for a total batch of 256 if scale_learning_rate)."})
    scale_learning_rate: bool = field(default=True, metadata={"help": "Peak lr = learning_rate * total batch / 256."})
    warmup_epochs: float = field(default=10.0, metadata={"help": "Epochs of linear lr warmup."})
    weight_decay: float = field(default=1e-6, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."})


class SimClrMethod(PretrainingMethod):
    """SimCLR's per-step logic around a ``SimClrForPretraining``: the two views into the model; nothing happens
    around the optimizer step."""

    name = "simclr"
    logged_outputs = ("embedding_std", "positive_similarity", "negative_similarity", "accuracy")
    monitored_embeddings = "embeddings"
    nonfinite_advice = "a higher model.temperature"

    required_view_groups = ("views",)

    @classmethod
    def check_view_groups(cls, views: ViewsConfig) -> None:
        super().check_view_groups(views)
        if views.groups["views"].number != 2:
            raise ValueError(f"SimCLR trains on 2 views of each image; the augmentation's views group has {views.groups['views'].number}")

    def compute_outputs(self, model, views, step: int):
        return model(views=views["views"])

    def empty_batch_loss(self, model) -> torch.Tensor:
        # the loss gathers the projections of every process: this one takes part with none of its own
        loss_module = self.model.loss
        projections = torch.zeros(0, self.model.config.projection_dim, device=self.reduction_device(), requires_grad=True)
        return super().empty_batch_loss(model) + loss_module(projections, projections)

    def model_card_values(self, model, args, schedules) -> dict:
        config = model.config
        return {
            "projection": f"{config.projection_num_layers} layers, hidden {config.projection_hidden_dim}, output {config.projection_dim}, BatchNorm {config.projection_use_bn}",
            "temperature": config.temperature,
            "views": self.views.describe(),
        }
