"""VICReg's training step on the shared engines: ``VicRegViewConfig``, ``VicRegTrainingArguments``, ``VicRegMethod``.

VICReg (Bardes et al., 2022) has no state around the optimizer step: two augmented views of each image, one
backbone and expander, the VICReg loss with its statistics over the global batch (``hf_ssl.models.vicreg``).
What it sets here are its augmentation (BYOL's asymmetric views, as the paper) and its optimizer defaults (the
official LARS recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ssl.models.vicreg import VicRegConfig, VicRegForPreTraining, VicRegModel
from hf_ssl.training.arguments import PretrainingArguments
from hf_ssl.training.methods.base import PretrainingMethod
from hf_ssl.training.methods.registry import MethodSpec, register_method
from hf_ssl.training.methods.two_view import ASYMMETRIC_VIEW_DEFAULTS, TwoViewMethod, two_view_preset

VicRegViewConfig = two_view_preset(
    "VicRegViewConfig",
    __name__,
    views_name="VICReg views",
    **ASYMMETRIC_VIEW_DEFAULTS,
    doc="""The two views of VICReg (Bardes et al., 2022, implementation details; the official ``augmentations.py``):
    BYOL's asymmetric views (``ASYMMETRIC_VIEW_DEFAULTS``): random resized crop of scale (0.08, 1) with bicubic
    interpolation, flip 0.5, colour jitter 0.8 (0.4, 0.4, 0.2, 0.1), grayscale 0.2, blur 1.0 / 0.1 and solarisation
    0.0 / 0.2 for (view 1, view 2).""",
)


@dataclass
class VicRegTrainingArguments(PretrainingArguments):
    """``PretrainingArguments`` with VICReg's defaults (the official ImageNet recipe): LARS, base lr 0.2 x total
    batch / 256, 10 warmup epochs then cosine, weight decay 1e-6 (not on biases and BatchNorm), no clipping."""

    optimizer: str = field(
        default="lars",
        metadata={
            "help": "adamw, sgd (with momentum) or lars (SGD with layer-wise trust ratios; biases and norms excluded)."
        },
    )
    learning_rate: float = field(
        default=0.2, metadata={"help": "Peak lr (for a total batch of 256 if scale_learning_rate)."}
    )
    scale_learning_rate: bool = field(default=True, metadata={"help": "Peak lr = learning_rate * total batch / 256."})
    warmup_epochs: float = field(default=10.0, metadata={"help": "Epochs of linear lr warmup."})
    weight_decay: float = field(
        default=1e-6, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."}
    )


class VicRegMethod(TwoViewMethod, PretrainingMethod):
    """VICReg's per-step logic around a ``VicRegForPreTraining``: the two views into the model (``TwoViewMethod``);
    nothing happens around the optimizer step."""

    name = "vicreg"
    display_name = "VICReg"
    logged_outputs = ("embedding_std", "invariance", "variance", "covariance")
    monitored_embeddings = "embeddings"
    nonfinite_advice = "bf16 rather than fp16; a larger model.variance_epsilon"

    def gathered_width(self) -> int:
        # the variance and covariance terms are statistics of the global batch's expanded embeddings
        return self.model.config.expander_dims[-1]

    def model_card_values(self, model, args, schedules) -> dict:
        config = model.config
        return {
            "expander": "-".join(str(size) for size in config.expander_dims),
            "loss_weights": (
                f"invariance {config.invariance_weight}, variance {config.variance_weight}, covariance "
                f"{config.covariance_weight} (epsilon {config.variance_epsilon})"
            ),
            "views": self.views.describe(),
        }


register_method(
    MethodSpec(
        name="vicreg",
        config_class=VicRegConfig,
        pretraining_model_class=VicRegForPreTraining,
        model_class=VicRegModel,
        method_class=VicRegMethod,
        training_arguments_class=VicRegTrainingArguments,
        view_config_class=VicRegViewConfig,
        pretrained_overridable_keys=(
            "invariance_weight",
            "variance_weight",
            "covariance_weight",
            "variance_epsilon",
            "drop_path_rate",
        ),
        default_output_dir="outputs/vicreg",
        summary="VICReg: variance-invariance-covariance regularization (Bardes et al., 2022)",
    )
)
