"""``PretrainingArguments``: the training arguments every method shares, on top of ``TrainingArguments``.

Each method adds its own fields (and its own defaults) in a subclass next to its training step, e.g.
``DinoTrainingArguments`` in ``hf_ssl.training.methods.dino``; both engines read the same dataclass.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields

import torch
from transformers import TrainingArguments

from hf_ssl.training.optim.optimizers import OPTIMIZERS

ENGINES = ("trainer", "accelerate")

logger = logging.getLogger(__name__)


@dataclass
class PretrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus what every hf_ssl method shares: the optimizer, per-iteration lr and weight-decay
    schedules (linear warmup, then cosine), the engine, checkpoint retention, early stopping, time limits and the
    NaN/inf guard. ``learning_rate`` is the reference lr for a total batch of 256 when ``scale_learning_rate``."""

    optimizer: str = field(
        default="adamw",
        metadata={
            "help": "adamw, sgd (with momentum) or lars (SGD with layer-wise trust ratios; biases and norms excluded)."
        },
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak lr (for a total batch of 256 if scale_learning_rate)."}
    )
    scale_learning_rate: bool = field(default=False, metadata={"help": "Peak lr = learning_rate * total batch / 256."})
    warmup_epochs: float = field(default=0.0, metadata={"help": "Epochs of linear lr warmup."})
    warmup_start_lr: float = field(default=0.0, metadata={"help": "lr at step 0 of the warmup."})
    min_lr: float = field(default=0.0, metadata={"help": "lr at the end of the cosine decay."})
    weight_decay: float = field(
        default=0.0, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."}
    )
    weight_decay_end: float | None = field(
        default=None,
        metadata={"help": "Weight decay at the last step (cosine schedule); null: constant weight_decay."},
    )
    momentum: float = field(default=0.9, metadata={"help": "Momentum of sgd and lars."})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum for sgd and lars."})
    lars_trust_coefficient: float = field(
        default=0.001, metadata={"help": "LARS trust coefficient eta: update scaled by eta * ||w|| / ||g + wd * w||."}
    )
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping (global norm); 0 disables."})
    max_consecutive_nonfinite_steps: int = field(
        default=5, metadata={"help": "Stop after this many NaN/inf losses in a row."}
    )
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay false: the views are built by a transform."}
    )
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Drop the last incomplete batch."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Trackers: none, all, wandb, tensorboard, trackio."}
    )
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing: no, steps, epoch."})
    engine: str = field(
        default="trainer",
        metadata={"help": "trainer (the transformers Trainer) or accelerate (the raw Accelerate loop)."},
    )
    save_best_total_limit: int = field(
        default=0, metadata={"help": "Also keep the N best checkpoints by metric_for_best_model."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations of metric_for_best_model without improvement."}
    )
    early_stopping_min_delta: float = field(
        default=0.0, metadata={"help": "Smallest change of the metric that counts as an improvement."}
    )
    max_time_seconds: float | None = field(
        default=None, metadata={"help": "Save a checkpoint and stop after this much wall time (per session)."}
    )
    save_on_interrupt: bool = field(
        default=True, metadata={"help": "On SIGTERM/SIGINT, save a checkpoint at the end of the step and stop."}
    )
    resume_with_changed_settings: bool = field(
        default=False,
        metadata={
            "help": (
                "Resume even though settings that shape the run changed (lr and its schedule, weight decay, "
                "augmentation...): the new values apply from the checkpoint's step on."
            )
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": (
                "Start a fresh run in an output_dir that holds another run's checkpoints or model (they are deleted / "
                "replaced)."
            )
        },
    )
    hub_license: str | None = field(
        default=None,
        metadata={
            "help": (
                "License of the trained model for the model cards' metadata: a Hub license identifier (apache-2.0, "
                "mit, cc-by-4.0, ..., other); null: the cards state no license."
            )
        },
    )
    push_backbone_to_hub: str | None = field(
        default=None,
        metadata={
            "help": (
                "Also push backbone/ (the plain transformers backbone and its image processor) at the end of the run "
                "as a repository of its own, <org>/<name>, with its own model card (with or without push_to_hub); its "
                "repository is created before training."
            )
        },
    )

    # Arguments a resume must keep: they shape the run (schedules, optimizer, data order). max_steps and
    # num_train_epochs may change (every schedule follows the new length), as may whatever does not change the
    # training: logging, saving, evaluation, trackers, time limits, workers, and the precision (hardware changes).
    # A method's subclass adds its own in ``method_resume_fixed_arguments``.
    resume_fixed_arguments = (
        "optimizer",
        "learning_rate",
        "scale_learning_rate",
        "warmup_epochs",
        "warmup_start_lr",
        "min_lr",
        "weight_decay",
        "weight_decay_end",
        "max_grad_norm",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "momentum",
        "nesterov",
        "lars_trust_coefficient",
        "seed",
        "data_seed",
        "dataloader_drop_last",
    )
    method_resume_fixed_arguments = ()

    @property
    def final_weight_decay(self) -> float:
        """Weight decay at the last step: ``weight_decay_end``, or ``weight_decay`` when that is null."""
        return self.weight_decay if self.weight_decay_end is None else self.weight_decay_end

    def fixed_settings(self) -> dict:
        """The values of ``resume_fixed_arguments`` and the method's own, by name."""
        return {
            name: getattr(self, name) for name in (*self.resume_fixed_arguments, *self.method_resume_fixed_arguments)
        }

    @classmethod
    def own_field_names(cls) -> list[str]:
        """Fields hf_ssl adds or gives another default (this class and the method's subclass), in order."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            if klass is TrainingArguments or not issubclass(klass, PretrainingArguments):
                continue
            for name in klass.__dict__.get("__annotations__", {}):
                if name not in names and name in {item.name for item in fields(cls)}:
                    names.append(name)
        return names

    def _check_ranges(self) -> None:
        """Values that make no sense stop here, named, before torch meets them."""
        at_least_one = (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_consecutive_nonfinite_steps",
        )
        for name in at_least_one:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        non_negative = (
            "learning_rate",
            "min_lr",
            "warmup_start_lr",
            "warmup_epochs",
            "weight_decay",
            "max_grad_norm",
            "early_stopping_min_delta",
            "dataloader_num_workers",
            "save_best_total_limit",
            "lars_trust_coefficient",
            *self.method_non_negative_arguments(),
        )
        if self.weight_decay_end is not None:
            non_negative += ("weight_decay_end",)
        for name in non_negative:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("adam_beta1", "adam_beta2", "momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.adam_epsilon > 0:
            raise ValueError(f"adam_epsilon must be > 0, got {self.adam_epsilon!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise ValueError(
                f"set max_steps > 0 or num_train_epochs > 0 (got max_steps={self.max_steps}, "
                f"num_train_epochs={self.num_train_epochs})"
            )
        if self.max_steps == 0:
            raise ValueError("max_steps must be > 0, or -1 to train for num_train_epochs")
        for name in ("logging_steps", "save_steps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(
                f"save_total_limit must be >= 1 (or null to keep every checkpoint), got {self.save_total_limit}"
            )
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1 (or null), got {self.early_stopping_patience}")
        if self.max_time_seconds is not None and self.max_time_seconds <= 0:
            raise ValueError(f"max_time_seconds must be > 0 or null, got {self.max_time_seconds}")
        self._check_method_ranges()

    def method_non_negative_arguments(self) -> tuple[str, ...]:
        """The method's own arguments that must be finite and >= 0."""
        return ()

    def _check_method_ranges(self) -> None:
        """The method's own checks (a subclass raises ``ValueError`` naming the argument)."""

    def __post_init__(self):
        apply_cpu_defaults(self)
        self._check_ranges()
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be false: the views come from a dataset transform")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if (self.save_best_total_limit or self.early_stopping_patience) and not self.metric_for_best_model:
            raise ValueError(
                "save_best_total_limit and early_stopping_patience need metric_for_best_model (e.g. knn_top1)"
            )
        drop_bf16_without_gpu(self)
        super().__post_init__()
        drop_fp16_on_cpu(self)


@dataclass
class EmaTeacherArguments(PretrainingArguments):
    """``PretrainingArguments`` plus the momentum schedule of an EMA teacher (DINO, BYOL, I-JEPA): a cosine from
    ``teacher_momentum`` at step 0 to ``teacher_momentum_end`` at the last step."""

    teacher_momentum: float = field(default=0.996, metadata={"help": "EMA momentum at step 0."})
    teacher_momentum_end: float = field(
        default=1.0, metadata={"help": "EMA momentum at the last step (cosine schedule)."}
    )

    method_resume_fixed_arguments = ("teacher_momentum", "teacher_momentum_end")

    def _check_method_ranges(self) -> None:
        for name in ("teacher_momentum", "teacher_momentum_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


def apply_cpu_defaults(args: TrainingArguments) -> None:
    """On a machine without CUDA (before ``TrainingArguments.__post_init__``): no pinned memory (it only helps
    host-to-GPU copies), and processes launched together join one gloo process group."""
    if torch.cuda.is_available():
        return
    args.dataloader_pin_memory = False
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # DeepSpeed on CPU processes: accelerate names no backend there (each process would think it is alone), and
        # use_cpu would turn DeepSpeed off
        args.ddp_backend = args.ddp_backend or "gloo"
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # several processes launched on a machine without CUDA (accelerate_configs/cpu.yaml): without use_cpu each
        # process would silently train alone instead of joining the gloo process group
        args.use_cpu = True


def drop_bf16_without_gpu(args: TrainingArguments) -> None:
    """Before ``TrainingArguments.__post_init__``: ``bf16`` on a machine without a GPU (a GPU recipe tried on a
    laptop, which the Trainer would refuse without ``use_cpu``) becomes float32, with a warning. DeepSpeed's bf16 casts
    the model and runs on CPU processes too, so it is kept there."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if args.bf16 and not args.use_cpu and not deepspeed and not _has_accelerator():
        logger.warning(
            "training.bf16=true needs a GPU and this run has none: training in float32 (bf16 is set to false)."
        )
        args.bf16 = False


def drop_fp16_on_cpu(args: TrainingArguments) -> None:
    """After ``TrainingArguments.__post_init__``: ``fp16`` on a CPU device (autocast to float16 is for GPUs, e.g. a
    Kaggle recipe tried on a laptop) becomes float32, with a warning, so recipe.yaml and the card record what ran."""
    if args.fp16 and args.device.type == "cpu":
        logger.warning(
            "training.fp16=true needs a GPU and this run has none: training in float32 (fp16 is set to false)."
        )
        args.fp16 = False


def _has_accelerator() -> bool:
    """A CUDA, XPU or MPS device that bf16 autocast can run on."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or (xpu is not None and xpu.is_available()) or torch.backends.mps.is_available()
