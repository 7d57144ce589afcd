"""H-JEPA's training step on the shared engines: ``HJepaTrainingArguments``, ``HJepaMethod``.

H-JEPA (``hf_ssl.models.hjepa``) is I-JEPA whose predictor is asked for the target encoder's features at several
levels, each pooled over its own window of patches (and optionally taken from its own encoder depth). The step is
I-JEPA's (the same view, masks, EMA target encoder and optimizer defaults) plus what is per level:

- a schedule of each level's loss weight (the hierarchical scheduler): level ``l`` starts at weight 0 and reaches
  ``model.level_loss_weights[l]`` linearly after ``level_weight_warmup_epochs[l]`` epochs (0: the full weight from
  the first step), so the coarse levels can join once the fine one has started to learn;
- the logs: each level's loss, weight, prediction and target std, and the collapse metrics of its pooled targets
  (std of the L2-normalised vectors, mean L2 norm, effective rank), which the history plot shows beside the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hf_ssl.evaluation.collapse import effective_rank, mean_l2_norm
from hf_ssl.models.hjepa import HJepaConfig, HJepaFeatureModel, HJepaForPreTraining
from hf_ssl.training.methods.base import EmaSchedules
from hf_ssl.training.methods.ijepa import IJepaMethod, IJepaTrainingArguments, IJepaViewConfig
from hf_ssl.training.methods.registry import MethodSpec, register_method
from hf_ssl.training.optim.schedules import LinearWarmupConstantSchedule


@dataclass
class HJepaTrainingArguments(IJepaTrainingArguments):
    """``IJepaTrainingArguments`` (the official I-JEPA optimizer defaults) plus the per-level weight schedule."""

    level_weight_warmup_epochs: list[float] | None = field(
        default=None,
        metadata={
            "help": (
                "Per level, epochs over which its loss weight rises linearly from 0 to model.level_loss_weights "
                "(null: every level at full weight from the start)."
            )
        },
    )

    method_resume_fixed_arguments = (
        *IJepaTrainingArguments.method_resume_fixed_arguments,
        "level_weight_warmup_epochs",
    )

    def _check_method_ranges(self) -> None:
        super()._check_method_ranges()
        if self.level_weight_warmup_epochs is not None:
            values = list(self.level_weight_warmup_epochs)
            if not values or any(
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 for value in values
            ):
                raise ValueError(
                    "level_weight_warmup_epochs must be a list of epochs >= 0, one per level, got "
                    f"{self.level_weight_warmup_epochs!r}"
                )


@dataclass(frozen=True)
class HJepaSchedules(EmaSchedules):
    """``EmaSchedules`` plus one loss-weight schedule per level."""

    level_weights: tuple[LinearWarmupConstantSchedule, ...]

    def level_weights_at(self, step: int) -> list[float]:
        return [schedule(step) for schedule in self.level_weights]


class HJepaMethod(IJepaMethod):
    """H-JEPA's per-step logic around an ``HJepaForPreTraining``: I-JEPA's, with the levels' loss weights of the
    step passed to the model and every level's numbers in the logs."""

    name = "hjepa"
    evaluated_features = "target-encoder features (mean of the patch tokens)"

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.num_levels = model.config.num_hierarchies
        self._level_window = torch.zeros(3, self.num_levels, dtype=torch.float64)
        self._level_count = 0
        self._last_level_embeddings = None

    @classmethod
    def check_training_arguments(cls, model_config, args) -> None:
        super().check_training_arguments(model_config, args)
        warmups = args.level_weight_warmup_epochs
        if warmups is not None and len(warmups) != model_config.num_hierarchies:
            raise ValueError(
                f"training.level_weight_warmup_epochs has {len(warmups)} values ({list(warmups)}) but the model has "
                f"{model_config.num_hierarchies} levels (model.num_hierarchies): give {model_config.num_hierarchies}, "
                "one per level"
            )

    def build_schedules(self, args, total_steps: int, steps_per_epoch: int, total_batch_size: int) -> HJepaSchedules:
        base = super().build_schedules(args, total_steps, steps_per_epoch, total_batch_size)
        weights = list(self.model.config.level_loss_weights)
        self.check_training_arguments(self.model.config, args)
        warmups = args.level_weight_warmup_epochs or [0.0] * self.num_levels
        level_weights = tuple(
            LinearWarmupConstantSchedule(
                0.0 if epochs > 0 else weight, weight, min(round(epochs * steps_per_epoch), total_steps)
            )
            for weight, epochs in zip(weights, warmups)
        )
        self.schedules = HJepaSchedules(
            **{name: getattr(base, name) for name in base.__dataclass_fields__}, level_weights=level_weights
        )
        return self.schedules

    def compute_outputs(self, model, views, step: int):
        level_weights = self.schedules.level_weights_at(step) if self.schedules is not None else None
        return model(
            pixel_values=views["image"][0],
            masks_context=views["masks_context"],
            masks_target=views["masks_target"],
            level_weights=level_weights,
        )

    def loss(self, model, batch, step: int):
        loss, outputs = super().loss(model, batch, step)
        if outputs is not None and torch.isfinite(loss.detach()):
            self._level_window += torch.stack(
                [
                    outputs.level_losses.detach().double().cpu(),
                    outputs.level_prediction_std.detach().double().cpu(),
                    outputs.level_target_std.detach().double().cpu(),
                ]
            )
            self._level_count += 1
            self._last_level_embeddings = outputs.level_embeddings  # measured only when logging
        return loss, outputs

    def schedule_logs(self, step: int) -> dict[str, float]:
        logs = super().schedule_logs(step)
        if self.schedules is not None:
            for level, weight in enumerate(self.schedules.level_weights_at(step)):
                logs[f"level{level}_weight"] = weight
        return logs

    def log_metrics(self, step: int, world_size: int) -> dict[str, float]:
        logs = super().log_metrics(step, world_size)
        if self._level_count:
            means = (self._level_window / self._level_count).tolist()
            for level in range(self.num_levels):
                logs[f"level{level}_loss"] = round(means[0][level], 6)
                logs[f"level{level}_prediction_std"] = round(means[1][level], 6)
                logs[f"level{level}_target_std"] = round(means[2][level], 6)
        if self._last_level_embeddings is not None:
            for level, embeddings in enumerate(self._last_level_embeddings):
                if embeddings.shape[0] < 2:
                    continue
                embeddings = embeddings.float()
                logs[f"level{level}_embedding_std"] = round(
                    float(torch.nn.functional.normalize(embeddings, dim=-1).std(dim=0).mean()), 6
                )
                logs[f"level{level}_mean_l2_norm"] = round(float(mean_l2_norm(embeddings)), 6)
                logs[f"level{level}_effective_rank"] = round(float(effective_rank(embeddings)), 4)
        self._level_window.zero_()
        self._level_count = 0
        self._last_level_embeddings = None
        return logs

    def model_card_values(self, model, args, schedules) -> dict:
        values = super().model_card_values(model, args, schedules)
        config = model.config
        levels = []
        for level in range(config.num_hierarchies):
            layer = config.level_target_layers[level]
            depth = (
                "final output"
                if layer is None or layer < 0 or layer >= config.backbone_config.num_hidden_layers
                else f"after layer {layer}"
            )
            warmup = (args.level_weight_warmup_epochs or [0.0] * config.num_hierarchies)[level]
            levels.append(
                f"level {level}: {config.level_pool_sizes[level]}x{config.level_pool_sizes[level]} windows, {depth}, "
                f"weight {config.level_loss_weights[level]}"
                + (f" (warmed up over {warmup:g} epochs)" if warmup else "")
            )
        values["levels"] = "; ".join(levels)
        return values


register_method(
    MethodSpec(
        name="hjepa",
        config_class=HJepaConfig,
        pretraining_model_class=HJepaForPreTraining,
        model_class=HJepaFeatureModel,
        method_class=HJepaMethod,
        training_arguments_class=HJepaTrainingArguments,
        view_config_class=IJepaViewConfig,
        pretrained_overridable_keys=(
            "loss_type",
            "normalize_targets",
            "level_loss_weights",
            "contrastive_temperature",
        ),
        default_output_dir="outputs/hjepa",
        summary="H-JEPA: I-JEPA predicting its targets at several pooled levels (hf_ssl's hierarchical JEPA)",
    )
)
