"""DINO on the transformers ``Trainer``: ``DinoTrainingArguments`` + ``DinoTrainer``.

The Trainer supplies the loop, mixed precision, gradient accumulation, DDP/FSDP/DeepSpeed through
accelerate, checkpointing and Hub pushes. DINO adds, per optimizer step: the lr / weight-decay /
teacher-momentum / teacher-temperature schedules, last-layer freezing, the EMA teacher update, the
device-side photometric augmentation and the collapse metrics in the logs.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments

from hf_ssl.data import EpochShuffleSampler, MultiCropCollator, MultiCropConfig, MultiCropDataset
from hf_ssl.evaluation.collapse import CollapseDetector
from hf_ssl.models.dino import get_backbone_embed_dim
from hf_ssl.training import checkpointing
from hf_ssl.training.config import to_plain
from hf_ssl.training.callbacks import DinoStepCallback, EmaCallback, RunControlCallback
from hf_ssl.training.dino_step import (
    FULL_PRECISION_TEACHER_FILE,
    DinoStep,
    NonFiniteLossError,
    check_distributed_setup,
    check_training_data,
    save_full_precision_model,
)
from hf_ssl.training.history import History, HistoryCallback
from hf_ssl.training.knn_callback import KnnCallback
from hf_ssl.training.model_card import write_dino_model_card
from hf_ssl.training.outputs import hub_repo_error
from hf_ssl.training.run_control import build_run_control
from hf_ssl.training.schedules import LinearWarmupConstantSchedule, WarmupCosineSchedule, scaled_learning_rate


ENGINES = ("trainer", "accelerate")

logger = logging.getLogger(__name__)


@dataclass
class DinoTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus DINO's per-iteration schedules. Defaults are the official ViT-S/16
    recipe (main_dino.py); ``learning_rate`` is the reference lr for a total batch of 256 when
    ``scale_learning_rate`` is true."""

    learning_rate: float = field(default=5e-4, metadata={"help": "Peak lr (for a total batch of 256 if scale_learning_rate)."})
    scale_learning_rate: bool = field(default=True, metadata={"help": "Peak lr = learning_rate * total batch / 256."})
    warmup_epochs: float = field(default=10.0, metadata={"help": "Epochs of linear lr warmup."})
    warmup_start_lr: float = field(default=0.0, metadata={"help": "lr at step 0 of the warmup."})
    min_lr: float = field(default=1e-6, metadata={"help": "lr at the end of the cosine decay."})
    weight_decay: float = field(default=0.04, metadata={"help": "Weight decay at step 0 (weights only, not biases/norms)."})
    weight_decay_end: float = field(default=0.4, metadata={"help": "Weight decay at the last step (cosine schedule)."})
    teacher_momentum: float = field(default=0.996, metadata={"help": "EMA momentum at step 0."})
    teacher_momentum_end: float = field(default=1.0, metadata={"help": "EMA momentum at the last step (cosine schedule)."})
    freeze_last_layer_epochs: float = field(default=1.0, metadata={"help": "Epochs during which the head's last layer gets no update."})
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient clipping (global norm); 0 disables."})
    max_consecutive_nonfinite_steps: int = field(default=5, metadata={"help": "Stop after this many NaN/inf losses in a row."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay false: crops are built by a transform."})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Drop the last incomplete batch."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Trackers: none, all, wandb, tensorboard, trackio."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing: no, steps, epoch."})
    engine: str = field(default="trainer", metadata={"help": "trainer (the transformers Trainer) or accelerate (the raw Accelerate loop)."})
    save_best_total_limit: int = field(default=0, metadata={"help": "Also keep the N best checkpoints by metric_for_best_model."})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Stop after N evaluations of metric_for_best_model without improvement."})
    early_stopping_min_delta: float = field(default=0.0, metadata={"help": "Smallest change of the metric that counts as an improvement."})
    max_time_seconds: float | None = field(default=None, metadata={"help": "Save a checkpoint and stop after this much wall time (per session)."})
    save_on_interrupt: bool = field(default=True, metadata={"help": "On SIGTERM/SIGINT, save a checkpoint at the end of the step and stop."})
    resume_with_changed_settings: bool = field(
        default=False,
        metadata={"help": "Resume even though settings that shape the run changed (lr and its schedule, weight decay, augmentation...): the new values apply from the checkpoint's step on."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a fresh run in an output_dir that holds another run's checkpoints or model (they are deleted / replaced)."},
    )

    def _check_ranges(self) -> None:
        """Values that make no sense stop here, named, before torch meets them."""
        at_least_one = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_consecutive_nonfinite_steps")
        for name in at_least_one:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        non_negative = (
            "learning_rate", "min_lr", "warmup_start_lr", "warmup_epochs", "weight_decay", "weight_decay_end",
            "freeze_last_layer_epochs", "max_grad_norm", "early_stopping_min_delta", "dataloader_num_workers",
            "save_best_total_limit",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.adam_epsilon > 0:
            raise ValueError(f"adam_epsilon must be > 0, got {self.adam_epsilon!r}")
        for name in ("teacher_momentum", "teacher_momentum_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise ValueError(f"set max_steps > 0 or num_train_epochs > 0 (got max_steps={self.max_steps}, num_train_epochs={self.num_train_epochs})")
        if self.max_steps == 0:
            raise ValueError("max_steps must be > 0, or -1 to train for num_train_epochs")
        for name in ("logging_steps", "save_steps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1 (or null to keep every checkpoint), got {self.save_total_limit}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1 (or null), got {self.early_stopping_patience}")
        if self.max_time_seconds is not None and self.max_time_seconds <= 0:
            raise ValueError(f"max_time_seconds must be > 0 or null, got {self.max_time_seconds}")

    def __post_init__(self):
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinned memory only helps host-to-GPU copies
            if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
                # DeepSpeed on CPU processes: accelerate names no backend there (each process would think it is
                # alone), and use_cpu would turn DeepSpeed off
                self.ddp_backend = self.ddp_backend or "gloo"
            elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # several processes launched on a machine without CUDA (accelerate_configs/cpu.yaml): without
                # use_cpu each process would silently train alone instead of joining the gloo process group
                self.use_cpu = True
        self._check_ranges()
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be false for DINO: the crops come from a dataset transform")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if (self.save_best_total_limit or self.early_stopping_patience) and not self.metric_for_best_model:
            raise ValueError("save_best_total_limit and early_stopping_patience need metric_for_best_model (e.g. knn_top1)")
        super().__post_init__()
        if self.fp16 and self.device.type == "cpu":
            # autocast to float16 is for GPUs; say so, and record what really runs (recipe.yaml, the model card)
            logger.warning("training.fp16=true needs a GPU and this run has none: training in float32 (fp16 is set to false).")
            self.fp16 = False


# Training arguments a resume must keep: they shape the run (schedules, optimizer, data order). max_steps and
# num_train_epochs may change (every schedule follows the new length), as may whatever does not change the
# training: logging, saving, evaluation, trackers, time limits, workers, and the precision (hardware changes).
RESUME_FIXED_ARGUMENTS = (
    "learning_rate", "scale_learning_rate", "warmup_epochs", "warmup_start_lr", "min_lr", "weight_decay",
    "weight_decay_end", "teacher_momentum", "teacher_momentum_end", "freeze_last_layer_epochs", "max_grad_norm",
    "adam_beta1", "adam_beta2", "adam_epsilon", "seed", "data_seed", "dataloader_drop_last",
)


def resume_settings(args: DinoTrainingArguments, multicrop_config: MultiCropConfig, train_dataset) -> dict:
    """What a checkpoint records and a resume must match (see ``checkpointing.check_resume_compatible``): the
    ``RESUME_FIXED_ARGUMENTS``, the augmentation and the number of training images (the model configuration
    and the total batch are checked on their own)."""
    settings = {name: getattr(args, name) for name in RESUME_FIXED_ARGUMENTS}
    settings["augmentation"] = to_plain(multicrop_config)
    settings["num_train_images"] = len(train_dataset) if hasattr(train_dataset, "__len__") else None
    return settings


def prepare_run(resume, args: DinoTrainingArguments, *, engine: str, model, multicrop_config: MultiCropConfig, train_dataset,
                world_size: int, total_batch_size: int, accelerator) -> tuple[Path | None, dict | None]:
    """What both engines do before training, so that a mistake stops the run before it starts: resolve the
    checkpoint to resume from, check the data (``check_training_data``), take the output directory (main
    process: ``checkpointing.guard_output_dir``) and check that the checkpoint can continue this run. Returns the
    checkpoint and its saved state, or ``(None, None)`` for a fresh start."""
    checkpoint = checkpointing.resolve_resume(resume, args.output_dir)
    check_training_data(train_dataset, args.per_device_train_batch_size, world_size, args.dataloader_drop_last)
    if accelerator.is_main_process:
        checkpointing.guard_output_dir(args.output_dir, checkpoint, bool(resume), args.overwrite_output_dir)
    if checkpoint is None:
        return None, None
    state = checkpointing.check_resume_compatible(
        checkpoint, method="dino", engine=engine, model_config=model.config, total_batch_size=total_batch_size,
        world_size=world_size, sharding=checkpointing.sharding_of(accelerator),
        settings=resume_settings(args, multicrop_config, train_dataset), allow_changed_settings=args.resume_with_changed_settings,
    )
    return checkpoint, state


@dataclass(frozen=True)
class DinoSchedules:
    """Every per-optimizer-step schedule of a DINO run, built once the run length is known."""

    learning_rate: WarmupCosineSchedule
    weight_decay: WarmupCosineSchedule
    teacher_momentum: WarmupCosineSchedule
    teacher_temperature: LinearWarmupConstantSchedule
    freeze_last_layer_steps: int
    peak_learning_rate: float

    @classmethod
    def build(cls, args: DinoTrainingArguments, model_config, total_steps: int, steps_per_epoch: int, total_batch_size: int):
        peak = scaled_learning_rate(args.learning_rate, total_batch_size) if args.scale_learning_rate else args.learning_rate
        warmup_steps = min(round(args.warmup_epochs * steps_per_epoch), total_steps)
        temperature_warmup = round(model_config.warmup_teacher_temperature_epochs * steps_per_epoch)
        return cls(
            learning_rate=WarmupCosineSchedule(peak, args.min_lr, total_steps, warmup_steps, args.warmup_start_lr),
            weight_decay=WarmupCosineSchedule(args.weight_decay, args.weight_decay_end, total_steps),
            teacher_momentum=WarmupCosineSchedule(args.teacher_momentum, args.teacher_momentum_end, total_steps),
            teacher_temperature=LinearWarmupConstantSchedule(
                model_config.warmup_teacher_temperature, model_config.teacher_temperature, temperature_warmup
            ),
            freeze_last_layer_steps=round(args.freeze_last_layer_epochs * steps_per_epoch),
            peak_learning_rate=peak,
        )


def apply_adam_settings(optimizer, args: DinoTrainingArguments) -> None:
    """Set the recipe's betas and eps on every param group: loading an optimizer state brings back the saved
    ones, and ``resume_with_changed_settings`` promises the new values (lr and weight decay are set every step)."""
    for group in optimizer.param_groups:
        group["betas"] = (args.adam_beta1, args.adam_beta2)
        group["eps"] = args.adam_epsilon


def parameter_groups(model: torch.nn.Module) -> list[dict]:
    """Trainable parameters split as in DINO: weights (ndim > 1) get the weight-decay schedule; biases and
    normalisation parameters (ndim <= 1) never get weight decay. The head's last layer comes in groups of its
    own (``last_layer``), after the others, so that its freeze can also be an lr of 0 (``DinoStep.begin_step``)."""
    last_layer = {id(parameter) for parameter in model.last_layer_parameters()}
    groups = {
        (False, True): {"apply_weight_decay": True},
        (False, False): {"weight_decay": 0.0, "apply_weight_decay": False},
        (True, True): {"apply_weight_decay": True, "last_layer": True},
        (True, False): {"weight_decay": 0.0, "apply_weight_decay": False, "last_layer": True},
    }
    members = {key: [] for key in groups}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decayed = not (parameter.ndim <= 1 or name.endswith(".bias"))
        members[(id(parameter) in last_layer, decayed)].append(parameter)
    return [{"params": members[key], **options} for key, options in groups.items() if members[key]]


class DinoTrainer(Trainer):
    """``Trainer`` for ``DinoForPretraining`` on batches from ``MultiCropCollator``.

    Args:
        model: a ``DinoForPretraining``.
        args: ``DinoTrainingArguments``.
        multicrop_config: the crop/augmentation settings; its photometric part runs batched on the
            training device inside ``compute_loss``.
        train_dataset: a dataset with the ``MultiCropTransform`` attached (``with_multicrop``); a
            ``MultiCropDataset`` is shuffled by ``EpochShuffleSampler`` so that a resume is exact.
        knn_evaluator: a ``KnnEvaluator`` run every ``knn_eval_steps`` optimizer steps (0: never during
            training) and at the end when ``knn_at_end``; it logs ``knn_top1``/``knn_top5``.
        Other keyword arguments go to ``transformers.Trainer`` (``callbacks``, ``processing_class``...).

    Checkpoints (``save_strategy``/``save_steps``, at the end, on SIGTERM/SIGINT, at ``max_time_seconds``, on
    early stopping) are committed atomically and rotated by ``save_total_limit`` (last K) and
    ``save_best_total_limit`` (best N by ``metric_for_best_model``); ``train(resume_from_checkpoint="auto")``
    continues from the latest one.
    """

    def __init__(
        self,
        model,
        args: DinoTrainingArguments,
        multicrop_config: MultiCropConfig | None = None,
        data_collator=None,
        knn_evaluator=None,
        knn_eval_steps: int = 0,
        knn_at_end: bool = True,
        **kwargs,
    ):
        super().__init__(model=model, args=args, data_collator=data_collator or MultiCropCollator(), **kwargs)
        check_distributed_setup(self.accelerator, engine="trainer")
        self.multicrop_config = multicrop_config or MultiCropConfig()
        self.dino_step = DinoStep(
            model, self.multicrop_config, args.seed, args.process_index, args.max_consecutive_nonfinite_steps,
            reduce=lambda tensor: self.accelerator.reduce(tensor, reduction="sum"),
        )
        self.schedules: DinoSchedules | None = None
        self.add_callback(DinoStepCallback(self))
        self.add_callback(EmaCallback(self))
        detector = CollapseDetector(out_dim=model.config.out_dim, embedding_dim=get_backbone_embed_dim(model.config.backbone_config))
        self.history_callback = HistoryCallback(args.output_dir, collapse_detector=detector)
        self.add_callback(self.history_callback)
        self.knn_callback = None
        if knn_evaluator is not None:
            self.knn_callback = KnnCallback(self, knn_evaluator, knn_eval_steps, knn_at_end)
            self.add_callback(self.knn_callback)
        # last: it decides on the metrics the callbacks above logged in the same step
        self.run_control = build_run_control(args, reduce_max=self._reduce_max if args.world_size > 1 else None)
        self.add_callback(RunControlCallback(self.run_control))
        self._staging_dir = None
        self._resume_checkpoint = None
        self._resume_state = None
        self.finished_before_start = False  # resumed at or past the last step: this session trains nothing

    def begin_session(self, state) -> None:
        """At the start of ``train`` (``DinoStepCallback.on_train_begin``): where a resumed run stands."""
        if self._resume_checkpoint is not None:
            self.finished_before_start = checkpointing.log_resume_position(
                self._resume_checkpoint, self._resume_state, state.global_step, state.max_steps
            )

    def _reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor.to(self.args.device), reduction="max")

    @property
    def last_knn_metrics(self) -> dict[str, float]:
        """The last k-NN result (empty without an evaluator or before the first evaluation)."""
        return self.knn_callback.last_metrics if self.knn_callback is not None else {}

    @property
    def knn_error(self) -> str | None:
        """The last k-NN evaluation that failed (logged; training went on), or None."""
        return self.knn_callback.last_error if self.knn_callback is not None else None

    @property
    def skipped_steps(self) -> int:
        return self.dino_step.skipped_steps

    @property
    def skipped_images(self) -> int:
        return self.dino_step.skipped_images

    # ----- data order ----------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, MultiCropDataset):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochShuffleSampler(len(dataset), seed=seed, epoch_holder=dataset)
        return super()._get_train_sampler(train_dataset)

    # ----- optimizer and schedules -------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = parameter_groups(self.model)
            self.optimizer = torch.optim.AdamW(
                groups, lr=self.args.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon
            )
        return self.optimizer

    def updates_per_epoch(self) -> int:
        batches = len(self.get_train_dataloader())
        return max(math.ceil(batches / self.args.gradient_accumulation_steps), 1)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            total_batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            self.schedules = DinoSchedules.build(
                self.args, self.model.config, num_training_steps, self.updates_per_epoch(), total_batch
            )
            # LambdaLR multiplies each group's initial lr; set it to 1 so the factor is the lr itself
            for group in optimizer.param_groups:
                group["lr"] = 1.0
                group["initial_lr"] = 1.0
            self.dino_step.schedules = self.schedules
            # A closure, not the schedule object: LambdaLR saves callable objects in its state and a resume would
            # load the old run's schedule into this one (its lr and length), whatever the new run says.
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.schedules.learning_rate(step))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ----- one micro-batch ---------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.dino_step.loss(model, inputs, self.state.global_step)
        return (loss, outputs) if return_outputs else loss

    # ----- checkpoints and resume ---------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint`` may also be ``"auto"`` (the latest checkpoint of
        ``output_dir``, or a fresh start when there is none) and defaults to ``args.resume_from_checkpoint``.
        A checkpoint of another method, engine, model configuration or total batch is refused before training."""
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        checkpoint, state = prepare_run(
            resume_from_checkpoint, self.args, engine="trainer", model=self.model, multicrop_config=self.multicrop_config,
            train_dataset=self.train_dataset, world_size=self.args.world_size, total_batch_size=self.total_batch_size,
            accelerator=self.accelerator,
        )
        self._resume_state = state
        if checkpoint is not None:
            self.dino_step.load_state_dict(state.get("method_state", {}))
            if self.run_control.early_stopping is not None:
                self.run_control.early_stopping.load_state_dict(state.get("control_state", {}).get("early_stopping", {}))
            if (checkpoint / "history.json").is_file():
                self.history_callback.history = History.load(checkpoint / "history.json")
            checkpointing.restore_tracker_run_ids(state.get("tracker_run_ids", {}))
        self._resume_checkpoint = checkpoint
        try:
            return super().train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None, **kwargs)
        except NonFiniteLossError as error:
            error.last_good_checkpoint = checkpointing.latest_checkpoint(self.args.output_dir)
            raise
        finally:
            # on_train_end does this after a normal end; a run that raised must not keep Ctrl-C (a notebook)
            self.run_control.finish()

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # The Trainer creates the Hub repository of push_to_hub in its constructor: say what to do, not a traceback
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:
            raise hub_repo_error(self.args, error) from error

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            apply_adam_settings(self.optimizer, self.args)

    def _run_epoch(self, *args, **kwargs):
        # A run resumed at (or past) its last step has nothing left to train; the Trainer would still run one
        # step of the epoch it resumes in before it looks at max_steps.
        if self.state.global_step >= self.state.max_steps:
            return None
        return super()._run_epoch(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Saved checkpoints carry the backbones' checkpoint key names, which transformers converts when it
        # loads with from_pretrained, not when the Trainer loads the raw state dict (the backbone would
        # silently stay as initialised). Load through from_pretrained, then copy in place, so the EMA and
        # the optimizer keep pointing at the same tensors. DeepSpeed and FSDP load their own formats.
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model if model is not None else self.model
        loaded = type(self.model).from_pretrained(resume_from_checkpoint, dtype=next(self.model.parameters()).dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)

    @property
    def total_batch_size(self) -> int:
        return self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size

    def _get_output_dir(self, trial) -> str:
        # while a checkpoint is saved, the Trainer writes it under the staging folder (see _save_checkpoint)
        return str(self._staging_dir) if self._staging_dir is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint (model, optimizer, scheduler, scaler, RNG states, trainer state) plus
        ``hf_ssl_state.json`` and ``history.json``, written under a staging folder by every process and
        then renamed to ``checkpoint-<step>`` by the main process: a kill during a save loses nothing."""
        step = self.state.global_step
        output_dir = self.args.output_dir
        if not self.dino_step.may_checkpoint(step):
            return
        staging_parent = checkpointing.staging_path(output_dir, step)
        if self.args.should_save:
            checkpointing.prepare_staging(output_dir, step)
        self.accelerator.wait_for_everyone()
        with checkpointing.saving_checkpoint(output_dir, step):
            self._staging_dir = staging_parent
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
            written = staging_parent / f"{checkpointing.CHECKPOINT_PREFIX}-{step}"
            if self.dino_step.full_precision_teacher is not None and self.args.should_save:
                # DeepSpeed bf16/fp16: its checkpoint holds the rounded teacher; the EMA's float32 copy goes beside it
                copies = self.dino_step.full_precision_teacher.state_dict()["teacher"]
                save_file({str(index): copy.contiguous() for index, copy in enumerate(copies)}, str(written / FULL_PRECISION_TEACHER_FILE))
            tracker_ids = checkpointing.tracker_run_ids()
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                self.history_callback.history.save(written / "history.json")
                checkpointing.write_state(written, self.checkpoint_record(step, tracker_ids))
                final = checkpointing.commit_checkpoint(written, checkpointing.checkpoint_path(output_dir, step))
                staging_parent.rmdir()
        if self.args.should_save:
            checkpointing.rotate_checkpoints(output_dir, checkpointing.retention_policy(self.args))
            logger.info("Saved checkpoint %s", final)
        self.accelerator.wait_for_everyone()

    def restore_full_precision_teacher(self) -> None:
        """After DeepSpeed loaded a checkpoint: the EMA's float32 teacher saved beside it (bf16/fp16 runs)."""
        checkpoint = getattr(self, "_resume_checkpoint", None)
        if self.dino_step.full_precision_teacher is None or checkpoint is None:
            return
        path = checkpoint / FULL_PRECISION_TEACHER_FILE
        if not path.is_file():
            logger.warning("%s has no %s: the EMA continues from the checkpoint's rounded teacher", checkpoint, FULL_PRECISION_TEACHER_FILE)
            return
        saved = load_file(path)
        self.dino_step.full_precision_teacher.load_state_dict({"teacher": [saved[str(index)] for index in range(len(saved))]})

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; after DeepSpeed bf16/fp16 training the model is saved in float32 from the
        optimizer's master weights and the EMA's float32 teacher (every process must call it). Checkpoints (an
        internal call with a folder) keep DeepSpeed's own save: their float32 teacher is saved beside it."""
        checkpoint_save = _internal_call and output_dir is not None
        if self.dino_step.full_precision_teacher is None or checkpoint_save:
            return super().save_model(output_dir, _internal_call)
        save_full_precision_model(
            self.model, self.dino_step.full_precision_teacher, output_dir or self.args.output_dir, self.is_world_process_zero()
        )
        self.accelerator.wait_for_everyone()

    def checkpoint_record(self, step: int, tracker_ids: dict[str, str]) -> dict:
        metric = self.args.metric_for_best_model
        metrics = {}
        if metric:
            value = self.history_callback.history.latest(metric)
            if value is not None:
                metrics[metric] = value
        control_state = {}
        if self.run_control.early_stopping is not None:
            control_state["early_stopping"] = self.run_control.early_stopping.state_dict()
        return vars(checkpointing.CheckpointRecord(
            method="dino", engine="trainer", step=step, epoch=float(self.state.epoch or 0.0),
            world_size=self.args.world_size, total_batch_size=self.total_batch_size, metrics=metrics,
            tracker_run_ids=tracker_ids, method_state=self.dino_step.state_dict(), control_state=control_state,
            sharding=checkpointing.sharding_of(self.accelerator), total_steps=self.state.max_steps,
            settings=resume_settings(self.args, self.multicrop_config, self.train_dataset),
        ))

    def best_checkpoint(self) -> str | None:
        """The kept checkpoint with the best ``metric_for_best_model`` (None without one)."""
        if not self.args.metric_for_best_model:
            return None
        ranked = checkpointing.ranked_by_metric(
            checkpointing.list_checkpoints(self.args.output_dir), self.args.metric_for_best_model,
            self.args.greater_is_better if self.args.greater_is_better is not None else True,
        )
        return str(ranked[0]) if ranked else None

    # ----- logging -----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.schedules is not None:
            logs.update(self.dino_step.log_metrics(max(self.state.global_step - 1, 0), self.args.world_size))
        super().log(logs, start_time)

    # ----- sharing -----------------------------------------------------------------------------
    def create_model_card(self, model_name: str | None = None, dataset: str | list[str] | None = None, tags=None, license: str | None = None, **kwargs) -> None:
        """Write ``<output_dir>/README.md`` from ``model_cards/dino.md`` (``push_to_hub`` uploads it)."""
        if self.is_world_process_zero():
            write_dino_model_card(
                self.model, self.args, self.multicrop_config, self.schedules, self.state.global_step,
                self.state.log_history, model_name=model_name, dataset=dataset, tags=tags, license=license,
            )
