"""BYOL's training step on the shared engines: ``ByolViewConfig``, ``ByolTrainingArguments``, ``ByolMethod``.

BYOL (Grill et al., 2020) is an ``EmaTeacherMethod``: after every optimizer step the target network (backbone and
projector) moves towards the online one, with a momentum on a cosine from ``training.teacher_momentum`` to 1.
What it sets here are its asymmetric augmentation (one view always blurred, the other sometimes solarised) and its
optimizer defaults (LARS, as the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ssl.models.byol import ByolConfig, ByolForPreTraining, ByolModel
from hf_ssl.training.arguments import EmaTeacherArguments
from hf_ssl.training.methods.base import EmaTeacherMethod
from hf_ssl.training.methods.registry import MethodSpec, register_method
from hf_ssl.training.methods.two_view import ASYMMETRIC_VIEW_DEFAULTS, TwoViewMethod, two_view_preset

ByolViewConfig = two_view_preset(
    "ByolViewConfig",
    __name__,
    views_name="BYOL views",
    **ASYMMETRIC_VIEW_DEFAULTS,
    doc="""The two asymmetric views of BYOL (Grill et al., 2020, Appendix B, Table 6), in the names of
    ``TwoViewConfig`` (lightly's): random resized crop of scale (0.08, 1) resized with bicubic interpolation,
    horizontal flip 0.5, colour jitter with probability 0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1),
    grayscale 0.2, then per view: Gaussian blur with probability 1.0 / 0.1 (sigma in (0.1, 2.0)) and solarisation
    with probability 0.0 / 0.2.

    ``gaussian_blur`` and ``solarize_prob`` hold a (view 1, view 2) pair; everything else is drawn alike for both
    views. The paper's blur kernel is 23 px at 224 px (``kernel_size: 0.1``); the default ``null`` takes 3 sigma
    either side of the largest sigma (13 px for sigma 2), which leaves out 0.3% of the Gaussian's weight at most.
    """,
)


@dataclass
class ByolTrainingArguments(EmaTeacherArguments):
    """``EmaTeacherArguments`` with BYOL's defaults for a 100-epoch run: LARS, lr 0.45 x total batch / 256, 10
    warmup epochs then cosine, weight decay 1e-6 (not on biases and BatchNorm), no clipping, target momentum on a
    cosine from 0.99 to 1. For 1000 epochs the paper uses a momentum of 0.996 (``teacher_momentum: 0.996``)."""

    optimizer: str = field(
        default="lars",
        metadata={
            "help": "adamw, sgd (with momentum) or lars (SGD with layer-wise trust ratios; biases and norms excluded)."
        },
    )
    learning_rate: float = field(
        default=0.45, metadata={"help": "Peak lr (for a total batch of 256 if scale_learning_rate)."}
    )
    scale_learning_rate: bool = field(default=True, metadata={"help": "Peak lr = learning_rate * total batch / 256."})
    warmup_epochs: float = field(default=10.0, metadata={"help": "Epochs of linear lr warmup."})
    weight_decay: float = field(
        default=1e-6, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."}
    )
    teacher_momentum: float = field(
        default=0.99,
        metadata={"help": "EMA momentum of the target network at step 0 (0.99 for 100 epochs, 0.996 for 1000)."},
    )
    teacher_momentum_end: float = field(
        default=1.0, metadata={"help": "EMA momentum of the target network at the last step (cosine schedule)."}
    )


class ByolMethod(TwoViewMethod, EmaTeacherMethod):
    """BYOL's per-step logic around a ``ByolForPreTraining``: the two views into the model (``TwoViewMethod``), the
    EMA update of the target network after each step (``EmaTeacherMethod``). Its loss compares each image's views
    with each other only: an empty batch needs no part in a collective."""

    name = "byol"
    display_name = "BYOL"
    logged_outputs = ("embedding_std", "target_projection_std")
    monitored_embeddings = "embeddings"
    evaluated_features = "online backbone features"
    nonfinite_advice = "bf16 rather than fp16"

    def model_card_values(self, model, args, schedules) -> dict:
        config = model.config
        return {
            "projector": f"hidden {config.projection_hidden_dim}, output {config.projection_dim}",
            "predictor": f"hidden {config.prediction_hidden_dim}, output {config.projection_dim}",
            "teacher_momentum": f"{args.teacher_momentum} -> {args.teacher_momentum_end} (cosine)",
            "views": self.views.describe(),
        }


register_method(
    MethodSpec(
        name="byol",
        config_class=ByolConfig,
        pretraining_model_class=ByolForPreTraining,
        model_class=ByolModel,
        method_class=ByolMethod,
        training_arguments_class=ByolTrainingArguments,
        view_config_class=ByolViewConfig,
        pretrained_overridable_keys=("drop_path_rate",),
        default_output_dir="outputs/byol",
        summary="BYOL: bootstrap your own latent, an EMA target network (Grill et al., 2020)",
    )
)
