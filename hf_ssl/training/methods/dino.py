"""DINO's training step on the shared engines: ``DinoTrainingArguments``, ``DinoSchedules``, ``DinoMethod``.

What is DINO here, beyond the EMA teacher every ``EmaTeacherMethod`` has: the teacher temperature schedule
passed to the forward, the center committed once per optimizer step from the whole accumulated batch, and the
head's last layer frozen for the first ``freeze_last_layer_epochs`` (its gradients dropped, an lr of 0 for its
groups, its optimizer moments restarted when the freeze ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hf_ssl.data import MultiCropConfig
from hf_ssl.evaluation.collapse import CollapseDetector
from hf_ssl.models.backbone import get_backbone_embed_dim
from hf_ssl.models.dino import DinoConfig, DinoForPreTraining, DinoModel
from hf_ssl.training.arguments import EmaTeacherArguments
from hf_ssl.training.methods.base import (
    EmaSchedules,
    EmaTeacherMethod,
    Schedules,
    decay_parameter_groups,
    log_ratio,
    restart_moments,
)
from hf_ssl.training.methods.registry import MethodSpec, register_method
from hf_ssl.training.optim.schedules import LinearWarmupConstantSchedule

# what to try when DINO collapses, before the generic advice of ``CollapseDetector``
DINO_COLLAPSE_ADVICE = {
    "uniform": (
        "a lower teacher temperature (model.teacher_temperature, e.g. 0.04 -> 0.02) so sharpening beats centering; "
        "a longer teacher temperature warmup (model.warmup_teacher_temperature_epochs) starting lower "
        "(model.warmup_teacher_temperature); flipping model.norm_last_layer (true is the more stable choice, "
        "false learns faster but collapses more easily); a lower training.learning_rate or a longer warmup; "
        "a larger batch (per_device_train_batch_size or gradient_accumulation_steps), since the center is a batch mean"
    ),
    "constant": (
        "if teacher_entropy is near 0 too, the teacher is one-hot: a slightly higher teacher temperature, and "
        "model.center_momentum below 1 (centering is what prevents this); model.norm_last_layer true; "
        "a lower training.learning_rate or a longer warmup; a larger batch"
    ),
}


@dataclass
class DinoTrainingArguments(EmaTeacherArguments):
    """``PretrainingArguments`` with DINO's defaults (the official ViT-S/16 recipe, main_dino.py) and its
    last-layer freeze; ``learning_rate`` is the reference lr for a total batch of 256."""

    learning_rate: float = field(
        default=5e-4, metadata={"help": "Peak lr (for a total batch of 256 if scale_learning_rate)."}
    )
    scale_learning_rate: bool = field(default=True, metadata={"help": "Peak lr = learning_rate * total batch / 256."})
    warmup_epochs: float = field(default=10.0, metadata={"help": "Epochs of linear lr warmup."})
    min_lr: float = field(default=1e-6, metadata={"help": "lr at the end of the cosine decay."})
    weight_decay: float = field(
        default=0.04, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."}
    )
    weight_decay_end: float | None = field(
        default=0.4, metadata={"help": "Weight decay at the last step (cosine schedule); null: constant weight_decay."}
    )
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient clipping (global norm); 0 disables."})
    freeze_last_layer_epochs: float = field(
        default=1.0, metadata={"help": "Epochs during which the head's last layer gets no update."}
    )

    method_resume_fixed_arguments = (*EmaTeacherArguments.method_resume_fixed_arguments, "freeze_last_layer_epochs")

    def method_non_negative_arguments(self) -> tuple[str, ...]:
        return ("freeze_last_layer_epochs",)


@dataclass(frozen=True)
class DinoSchedules(EmaSchedules):
    """Every per-optimizer-step schedule of a DINO run."""

    teacher_temperature: LinearWarmupConstantSchedule
    freeze_last_layer_steps: int


class DinoMethod(EmaTeacherMethod):
    """DINO's per-step logic around a ``DinoForPreTraining`` (student, EMA teacher, ``DinoLoss`` with its center)."""

    name = "dino"
    logged_outputs = ("teacher_entropy", "student_entropy", "embedding_std", "center_norm")
    monitored_embeddings = "teacher_embeddings"
    evaluated_features = "teacher features"
    nonfinite_advice = "bf16 rather than fp16 (fp16 overflows in the DINO head); a higher model.teacher_temperature"
    required_view_groups = ("global_crops",)  # the teacher's views, seen by the student too
    optional_view_groups = ("local_crops",)  # the student's only

    def bind_model(self, model, optimizer_steps_in_backward: bool) -> None:
        super().bind_model(model, optimizer_steps_in_backward)
        self.last_layer_parameters = model.last_layer_parameters()
        for handle in getattr(self, "_hooks", []):
            handle.remove()
        self._hooks = []
        if optimizer_steps_in_backward:
            # DeepSpeed steps inside backward: the freeze zeroes the last layer's gradients as they are produced
            self._hooks = [
                p.register_hook(self._zero_while_frozen) for p in self.last_layer_parameters if p.requires_grad
            ]

    def _zero_while_frozen(self, gradient: torch.Tensor) -> torch.Tensor | None:
        if self.schedules is not None and self.current_step < self.schedules.freeze_last_layer_steps:
            return torch.zeros_like(gradient)
        return None

    def parameter_groups(self, model) -> list[dict]:
        """Weights get the weight-decay schedule, biases and norms none; the head's last layer comes in groups of
        its own (``last_layer``), after the others, so that its freeze can also be an lr of 0."""
        return decay_parameter_groups(
            model, {"last_layer": {id(parameter) for parameter in model.last_layer_parameters()}}
        )

    def build_schedules(self, args, total_steps: int, steps_per_epoch: int, total_batch_size: int) -> DinoSchedules:
        model_config = self.model.config
        temperature_warmup = round(model_config.warmup_teacher_temperature_epochs * steps_per_epoch)
        self.schedules = DinoSchedules(
            **Schedules.common(args, total_steps, steps_per_epoch, total_batch_size),
            teacher_momentum=self.teacher_momentum_schedule(args, total_steps),
            teacher_temperature=LinearWarmupConstantSchedule(
                model_config.warmup_teacher_temperature, model_config.teacher_temperature, temperature_warmup
            ),
            freeze_last_layer_steps=round(args.freeze_last_layer_epochs * steps_per_epoch),
        )
        return self.schedules

    # ----- the step ------------------------------------------------------------------------------
    def group_learning_rate(self, group: dict, step: int, learning_rate: float) -> float:
        frozen = step < self.schedules.freeze_last_layer_steps
        return 0.0 if frozen and group.get("last_layer", False) else learning_rate

    def on_begin_step(self, optimizer, step: int) -> None:
        """The last-layer groups' moments start afresh at the first step after the freeze, as when DINO drops
        their gradients (AdamW then has no state for them yet). This matters where the gradients cannot be dropped
        (DeepSpeed: they are zeroed instead, and ZeRO keeps one step count per flat group)."""
        if step == self.schedules.freeze_last_layer_steps > 0:
            restart_moments(optimizer, "last_layer")

    def compute_outputs(self, model, views, step: int):
        return model(
            global_crops=views["global_crops"],
            local_crops=views.get("local_crops"),
            teacher_temperature=self.schedules.teacher_temperature(step) if self.schedules else None,
            update_center=False,
        )

    def adjust_gradients(self, step: int) -> None:
        if step < self.schedules.freeze_last_layer_steps:
            for parameter in self.last_layer_parameters:
                parameter.grad = None

    def commit_step_statistics(self) -> None:
        self.model.loss.apply_pending_center_update()

    def discard_step_statistics(self) -> None:
        self.model.loss.pending_center_statistics.zero_()

    def reduction_device(self) -> torch.device:
        return self.model.loss.center.device

    # ----- logs and cards ------------------------------------------------------------------------
    def schedule_logs(self, step: int) -> dict[str, float]:
        return {**super().schedule_logs(step), "teacher_temperature": self.schedules.teacher_temperature(step)}

    def derived_logs(self, logs: dict[str, float]) -> dict[str, float]:
        if "teacher_entropy" not in logs:
            return {}
        return {"teacher_entropy_ratio": log_ratio(logs["teacher_entropy"], self.model.config.out_dim)}

    def collapse_detector(self) -> CollapseDetector:
        config = self.model.config
        return CollapseDetector(
            out_dim=config.out_dim,
            embedding_dim=get_backbone_embed_dim(config.backbone_config),
            method_advice=DINO_COLLAPSE_ADVICE,
        )

    def model_card_values(self, model, args, schedules) -> dict:
        config = model.config
        return {
            "out_dim": config.out_dim,
            "head_hidden_dim": config.head_hidden_dim,
            "head_bottleneck_dim": config.head_bottleneck_dim,
            "norm_last_layer": config.norm_last_layer,
            "crops": self.views.describe(),
            "teacher_temperature": (
                f"{config.warmup_teacher_temperature} -> {config.teacher_temperature} over "
                f"{config.warmup_teacher_temperature_epochs} epochs"
            ),
        }


register_method(
    MethodSpec(
        name="dino",
        config_class=DinoConfig,
        pretraining_model_class=DinoForPreTraining,
        model_class=DinoModel,
        method_class=DinoMethod,
        training_arguments_class=DinoTrainingArguments,
        view_config_class=MultiCropConfig,
        pretrained_overridable_keys=(
            "student_temperature",
            "teacher_temperature",
            "warmup_teacher_temperature",
            "warmup_teacher_temperature_epochs",
            "center_momentum",
            "student_drop_path_rate",
        ),
        default_output_dir="outputs/dino",
        summary="DINO: self-distillation with no labels (Caron et al., 2021)",
    )
)
