"""I-JEPA's training step on the shared engines: ``IJepaViewConfig``, ``IJepaTrainingArguments``, ``IJepaMethod``.

I-JEPA (Assran et al., 2023) predicts, from one context block of an image, the target encoder's features of
several target blocks of the same image. What it sets here: its view (one random resized crop, scale (0.3, 1),
no photometric augmentation) and its masks (``MultiBlockMaskCollator``, drawn in the DataLoader workers and
seeded by the sampler keys, so a resume draws the same masks), its optimizer defaults (the official ViT-H/14
recipe: AdamW, lr 2e-4 -> 1e-3 over 40 warmup epochs then cosine to 1e-6, weight decay 0.04 -> 0.4, no clipping)
and the EMA momentum of its target encoder, linear from 0.996 to 1 as in the official code (DINO's is a cosine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ssl.data import MultiBlockMaskCollator, ViewGroup, ViewsConfig
from hf_ssl.data.views import MEAN_HELP, NUM_CHANNELS_HELP, STD_HELP
from hf_ssl.models.ijepa import IJepaFeatureModel, IJepaForPreTraining, IJepaPretrainingConfig
from hf_ssl.training.arguments import EmaTeacherArguments
from hf_ssl.training.methods.base import EmaTeacherMethod
from hf_ssl.training.methods.registry import MethodSpec, register_method
from hf_ssl.training.optim.schedules import LinearWarmupConstantSchedule


@dataclass
class IJepaViewConfig:
    """The image I-JEPA sees and the masks drawn on it. Defaults: the official ViT-H/14 recipe
    (``configs/in1k_vith14_ep300.yaml``): one random resized crop of scale (0.3, 1.0), no flip or colour
    distortion; 4 target blocks of scale (0.15, 0.2) and aspect ratio (0.75, 1.5), one context block of scale
    (0.85, 1.0) and aspect 1 that excludes the targets, at least ``min_keep`` patches per block.

    The mask grid is ``input_size // patch size`` of the model's backbone."""

    input_size: int = field(
        default=224, metadata={"help": "Side of the image, in pixels (a multiple of the backbone's patch size)."}
    )
    min_scale: float = field(
        default=0.3,
        metadata={"help": "Smallest fraction of the image area the random resized crop covers (up to 1.0)."},
    )
    crop_ratio: tuple[float, float] = field(
        default=(3 / 4, 4 / 3), metadata={"help": "(min, max) width/height ratio of the crop before it is resized."}
    )
    interpolation: str = field(
        default="bilinear",
        metadata={"help": "Resampling of the crop resize: nearest, bilinear, bicubic, lanczos, box or hamming."},
    )
    flip_probability: float = field(
        default=0.0, metadata={"help": "Probability of a horizontal flip (the official recipe: none)."}
    )
    color_jitter_probability: float = field(
        default=0.0, metadata={"help": "Probability of colour jitter (the official recipe: none)."}
    )
    num_targets: int = field(
        default=4, metadata={"help": "Target blocks per image, predicted from the context block."}
    )
    target_scale: tuple[float, float] = field(
        default=(0.15, 0.2), metadata={"help": "(min, max) fraction of the patches a target block covers."}
    )
    target_aspect_ratio: tuple[float, float] = field(
        default=(0.75, 1.5), metadata={"help": "(min, max) height/width ratio of a target block."}
    )
    context_scale: tuple[float, float] = field(
        default=(0.85, 1.0),
        metadata={
            "help": (
                "(min, max) fraction of the patches the context block covers, before the targets are removed from it."
            )
        },
    )
    context_aspect_ratio: tuple[float, float] = field(
        default=(1.0, 1.0), metadata={"help": "(min, max) height/width ratio of the context block."}
    )
    min_keep: int = field(default=10, metadata={"help": "A block must keep more than this many patches."})
    allow_overlap: bool = field(
        default=False, metadata={"help": "Let the context block overlap the targets (the official recipe: no)."}
    )
    num_channels: int | None = field(default=None, metadata={"help": NUM_CHANNELS_HELP})
    mean: tuple[float, ...] | None = field(default=None, metadata={"help": MEAN_HELP})
    std: tuple[float, ...] | None = field(default=None, metadata={"help": STD_HELP})

    def __post_init__(self):
        try:
            views = self.to_views_config()
            self.mask_collator(patch_size=1, seed=0, check_blocks=False)
        except ValueError as error:
            raise ValueError(f"invalid I-JEPA views: {error}") from None
        if self.mean is not None:
            self.mean, self.std = views.mean, views.std

    @staticmethod
    def size_keys() -> dict[str, str]:
        return {"image": "augmentation.input_size"}

    def to_views_config(self) -> ViewsConfig:
        """One group ``image`` of one view: the crop; colour jitter (when asked for) at DINO's strengths, its
        brightness and contrast only on bands other than RGB."""
        rgb = self.num_channels in (None, 3)
        group = ViewGroup(
            number=1,
            size=self.input_size,
            scale=(self.min_scale, 1.0),
            crop_ratio=tuple(self.crop_ratio),
            interpolation=self.interpolation,
            flip_probability=self.flip_probability,
            color_jitter_probability=self.color_jitter_probability,
            grayscale_probability=0.0,
            saturation=0.2 if rgb else 0.0,
            hue=0.1 if rgb else 0.0,
            blur_probabilities=(0.0,),
            solarize_probabilities=(0.0,),
        )
        return ViewsConfig(groups={"image": group}, num_channels=self.num_channels, mean=self.mean, std=self.std)

    def mask_collator(self, patch_size: int, seed: int, check_blocks: bool = True) -> MultiBlockMaskCollator:
        """The collator that adds ``masks_context`` / ``masks_target`` on the ``input_size // patch_size`` grid.

        ``check_blocks=False`` checks the value ranges only, before the patch size is known: on the finest grid (one
        pixel a patch) and without ``min_keep``, whether a block can hold enough patches is the real grid's question.
        """
        return MultiBlockMaskCollator(
            input_size=self.input_size,
            patch_size=patch_size if check_blocks else 1,
            num_targets=self.num_targets,
            target_scale=self.target_scale,
            target_aspect_ratio=self.target_aspect_ratio,
            context_scale=self.context_scale,
            context_aspect_ratio=self.context_aspect_ratio,
            min_keep=self.min_keep if check_blocks else 0,
            allow_overlap=self.allow_overlap,
            seed=seed,
        )


@dataclass
class IJepaTrainingArguments(EmaTeacherArguments):
    """``EmaTeacherArguments`` with I-JEPA's defaults (the official ViT-H/14 recipe): AdamW, lr linear from 2e-4 to
    1e-3 over 40 warmup epochs then cosine to 1e-6 (not scaled by the batch), weight decay cosine 0.04 -> 0.4, no
    gradient clipping, EMA momentum linear from 0.996 to 1."""

    learning_rate: float = field(default=1e-3, metadata={"help": "Peak lr, reached at the end of the warmup."})
    scale_learning_rate: bool = field(
        default=False, metadata={"help": "Peak lr = learning_rate * total batch / 256 (the official recipe: no)."}
    )
    warmup_epochs: float = field(default=40.0, metadata={"help": "Epochs of linear lr warmup from warmup_start_lr."})
    warmup_start_lr: float = field(default=2e-4, metadata={"help": "lr at step 0 of the warmup."})
    min_lr: float = field(default=1e-6, metadata={"help": "lr at the end of the cosine decay."})
    weight_decay: float = field(
        default=0.04, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."}
    )
    weight_decay_end: float | None = field(
        default=0.4, metadata={"help": "Weight decay at the last step (cosine schedule)."}
    )
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Gradient clipping norm; 0: none (the official recipe)."}
    )
    teacher_momentum_end: float = field(
        default=1.0, metadata={"help": "EMA momentum of the target encoder at the last step (linear schedule)."}
    )


class IJepaMethod(EmaTeacherMethod):
    """I-JEPA's per-step logic around an ``IJepaForPreTraining``: the image and its masks into the model, the EMA
    update of the target encoder after each step (linear momentum)."""

    name = "ijepa"
    logged_outputs = ("prediction_std", "target_std")
    monitored_embeddings = "embeddings"
    evaluated_features = "target-encoder features (mean of the patch tokens)"
    nonfinite_advice = "bf16 rather than fp16; a lower training.learning_rate"
    required_view_groups = ("image",)

    @classmethod
    def build_collator(cls, model_config, view_config, seed: int) -> MultiBlockMaskCollator:
        patch_size = model_config.backbone_config.patch_size
        if isinstance(view_config, IJepaViewConfig):
            return view_config.mask_collator(patch_size, seed)
        views = view_config.to_views_config() if hasattr(view_config, "to_views_config") else view_config
        return MultiBlockMaskCollator(input_size=views.first.size, patch_size=patch_size, seed=seed)

    @classmethod
    def check_view_groups(cls, views: ViewsConfig) -> None:
        super().check_view_groups(views)
        if views.groups["image"].number != 1:
            raise ValueError(
                f"I-JEPA sees 1 view of each image; the augmentation's image group has {views.groups['image'].number}"
            )

    @staticmethod
    def teacher_momentum_schedule(args, total_steps: int) -> LinearWarmupConstantSchedule:
        # the official momentum_scheduler: linear over the whole run
        return LinearWarmupConstantSchedule(args.teacher_momentum, args.teacher_momentum_end, total_steps)

    def compute_outputs(self, model, views, step: int):
        return model(
            pixel_values=views["image"][0], masks_context=views["masks_context"], masks_target=views["masks_target"]
        )

    def model_card_values(self, model, args, schedules) -> dict:
        config, views = model.config, self.view_config
        masks = (
            f"{views.num_targets} target blocks of scale {tuple(views.target_scale)}, aspect "
            f"{tuple(views.target_aspect_ratio)}; context block of scale {tuple(views.context_scale)}"
            + (", overlapping the targets" if views.allow_overlap else " without the targets")
            if isinstance(views, IJepaViewConfig)
            else "multi-block (the official ViT-H/14 values)"
        )
        return {
            "predictor": (
                f"{config.predictor_num_hidden_layers} blocks of width {config.predictor_hidden_size}, "
                f"{config.predictor_num_attention_heads} heads"
            ),
            "masks": masks,
            "loss": config.loss_type + (" on layer-normed targets" if config.normalize_targets else ""),
            "teacher_momentum": f"{args.teacher_momentum} -> {args.teacher_momentum_end} (linear)",
            "views": self.views.describe(),
        }


register_method(
    MethodSpec(
        name="ijepa",
        config_class=IJepaPretrainingConfig,
        pretraining_model_class=IJepaForPreTraining,
        model_class=IJepaFeatureModel,
        method_class=IJepaMethod,
        training_arguments_class=IJepaTrainingArguments,
        view_config_class=IJepaViewConfig,
        pretrained_overridable_keys=("loss_type", "normalize_targets"),
        default_output_dir="outputs/ijepa",
        summary="I-JEPA: joint-embedding predictive architecture (Assran et al., 2023)",
    )
)
