"""VICReg's training step on the shared engines: ``VicRegViewConfig``, ``VicRegTrainingArguments``, ``VicRegMethod``.

VICReg (Bardes et al., 2022) has no state around the optimizer step: two augmented views of each image, one
backbone and expander, the VICReg loss with its statistics over the global batch (``hf_ssl.models.vicreg``).
What it sets here are its augmentation (BYOL's asymmetric views, as the paper) and its optimizer defaults (the
official LARS recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hf_ssl.data import ViewsConfig
from hf_ssl.training.arguments import PretrainingArguments
from hf_ssl.training.methods.base import PretrainingMethod
from hf_ssl.training.methods.byol import ByolViewConfig


@dataclass
class VicRegViewConfig(ByolViewConfig):
    """The two views of VICReg (Bardes et al., 2022, implementation details; the official ``augmentations.py``):
    BYOL's asymmetric views (``ByolViewConfig``): random resized crop of scale (0.08, 1) with bicubic interpolation,
    flip 0.5, colour jitter 0.8 (0.4, 0.4, 0.2, 0.1), grayscale 0.2, blur 1.0 / 0.1 and solarisation 0.0 / 0.2 for
    (view 1, view 2)."""

    views_name = "VICReg views"


@dataclass
class VicRegTrainingArguments(PretrainingArguments):
    """``PretrainingArguments`` with VICReg's defaults (the official ImageNet recipe): LARS, base lr 0.2 x total
    batch / 256, 10 warmup epochs then cosine, weight decay 1e-6 (not on biases and BatchNorm), no clipping."""

    optimizer: str = field(default="lars", metadata={"help": "adamw, sgd (with momentum) or lars (SGD with layer-wise trust ratios; biases and norms excluded)."})
    learning_rate: float = field(default=0.2, metadata={"help": "Peak lr (for a total batch of 256 if scale_learning_rate)."})
    scale_learning_rate: bool = field(default=True, metadata={"help": "Peak lr = learning_rate * total batch / 256."})
    warmup_epochs: float = field(default=10.0, metadata={"help": "Epochs of linear lr warmup."})
    weight_decay: float = field(default=1e-6, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."})


class VicRegMethod(PretrainingMethod):
    """VICReg's per-step logic around a ``VicRegForPretraining``: the two views into the model; nothing happens
    around the optimizer step."""

    name = "vicreg"
    logged_outputs = ("embedding_std", "invariance", "variance", "covariance")
    monitored_embeddings = "embeddings"
    nonfinite_advice = "bf16 rather than fp16; a larger model.variance_epsilon"
    required_view_groups = ("views",)

    @classmethod
    def check_view_groups(cls, views: ViewsConfig) -> None:
        super().check_view_groups(views)
        if views.groups["views"].number != 2:
            raise ValueError(f"VICReg trains on 2 views of each image; the augmentation's views group has {views.groups['views'].number}")

    def compute_outputs(self, model, views, step: int):
        return model(views=views["views"])

    def empty_batch_loss(self, model) -> torch.Tensor:
        # the loss gathers the embeddings of every process: this one takes part with none of its own
        loss_module = self.model.loss
        embeddings = torch.zeros(0, self.model.config.expander_dims[-1], device=self.reduction_device(), requires_grad=True)
        return super().empty_batch_loss(model) + loss_module(embeddings, embeddings)

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
