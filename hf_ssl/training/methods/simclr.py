"""SimCLR's training step on the shared engines: ``SimClrViewConfig``, ``SimClrTrainingArguments``, ``SimClrMethod``.

SimCLR has no state around the optimizer step: two augmented views of each image, one backbone and projection
head, the NT-Xent loss over the global batch (``hf_ssl.models.simclr``). What it sets here are its augmentation
(``TwoViewConfig`` with the paper's defaults, in the parameter names of lightly's ``SimCLRTransform``, as the SimCLR
training guides use them) and its optimizer defaults (the paper's LARS).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ssl.models.simclr import SimClrConfig, SimClrForPreTraining, SimClrModel
from hf_ssl.training.arguments import PretrainingArguments
from hf_ssl.training.methods.base import PretrainingMethod
from hf_ssl.training.methods.registry import MethodSpec, register_method
from hf_ssl.training.methods.two_view import TwoViewMethod, two_view_preset

SimClrViewConfig = two_view_preset(
    "SimClrViewConfig",
    __name__,
    views_name="SimCLR views",
    doc="""The two augmented views of SimCLR (Chen et al., 2020, Appendix A), named as lightly's ``SimCLRTransform``.
    Defaults are the paper's (``TwoViewConfig``'s own): random resized crop of scale (0.08, 1), horizontal flip 0.5,
    colour jitter with probability 0.8 at strength 1 (brightness, contrast and saturation 0.8 x strength, hue 0.2 x
    strength), grayscale 0.2, Gaussian blur with probability 0.5 and sigma in (0.1, 2.0), no solarisation.

    Both views are drawn alike; the crops are cut on the CPU, everything photometric runs batched on the training
    device (``to_views_config`` gives the pipeline's view group).
    """,
)


@dataclass
class SimClrTrainingArguments(PretrainingArguments):
    """``PretrainingArguments`` with SimCLR's defaults (the paper's ImageNet recipe): LARS, lr 0.3 x total batch /
    256, 10 warmup epochs then cosine, weight decay 1e-6 (not on biases and BatchNorm), no clipping."""

    optimizer: str = field(
        default="lars",
        metadata={
            "help": "adamw, sgd (with momentum) or lars (SGD with layer-wise trust ratios; biases and norms excluded)."
        },
    )
    learning_rate: float = field(
        default=0.3, metadata={"help": "Peak lr (for a total batch of 256 if scale_learning_rate)."}
    )
    scale_learning_rate: bool = field(default=True, metadata={"help": "Peak lr = learning_rate * total batch / 256."})
    warmup_epochs: float = field(default=10.0, metadata={"help": "Epochs of linear lr warmup."})
    weight_decay: float = field(
        default=1e-6, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."}
    )


class SimClrMethod(TwoViewMethod, PretrainingMethod):
    """SimCLR's per-step logic around a ``SimClrForPreTraining``: the two views into the model (``TwoViewMethod``);
    nothing happens around the optimizer step."""

    name = "simclr"
    display_name = "SimCLR"
    logged_outputs = ("embedding_std", "positive_similarity", "negative_similarity", "accuracy")
    monitored_embeddings = "embeddings"
    nonfinite_advice = "a higher model.temperature"

    def gathered_width(self) -> int:
        # NT-Xent contrasts each view with the projections of the global batch
        return self.model.config.projection_dim

    def model_card_values(self, model, args, schedules) -> dict:
        config = model.config
        return {
            "projection": (
                f"{config.projection_num_layers} layers, hidden {config.projection_hidden_dim}, output "
                f"{config.projection_dim}, BatchNorm {config.projection_use_bn}"
            ),
            "temperature": config.temperature,
            "views": self.views.describe(),
        }


register_method(
    MethodSpec(
        name="simclr",
        config_class=SimClrConfig,
        pretraining_model_class=SimClrForPreTraining,
        model_class=SimClrModel,
        method_class=SimClrMethod,
        training_arguments_class=SimClrTrainingArguments,
        view_config_class=SimClrViewConfig,
        pretrained_overridable_keys=("temperature", "drop_path_rate"),
        default_output_dir="outputs/simclr",
        summary="SimCLR: contrastive learning of visual representations (Chen et al., 2020)",
    )
)
