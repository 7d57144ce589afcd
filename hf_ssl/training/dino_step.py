"""What DINO does around one optimizer step, shared by both engines (``DinoTrainer`` and the raw
Accelerate loop) so that neither holds a copy of it.

One optimizer step, in order::

    begin_step(optimizer, step)              learning rate and weight decay of this step
    loss(model, batch, step)  x micro-batches device augmentation, forward with this step's teacher
                                             temperature; center statistics are accumulated, not applied
    (backward, gradient clipping)
    before_optimizer_step(optimizer, step)   NaN/inf check agreed by all processes (skip = drop every
                                             gradient), one center update from the whole accumulated
                                             batch, last-layer gradients dropped during the freeze
    optimizer.step(); lr scheduler step
    after_optimizer_step(step)               EMA teacher update with this step's momentum

Under DeepSpeed the optimizer step happens inside ``backward`` (``bind(..., optimizer_steps_in_backward=True)``):
DeepSpeed itself skips a step whose gradients are not finite, the last layer's gradients are zeroed by tensor
hooks as they are produced, and the center update moves to ``after_optimizer_step``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

import numpy as np
import torch

from hf_ssl.data import DeviceAugmentation, MultiCropConfig, MultiCropDataset
from hf_ssl.evaluation.collapse import effective_rank, mean_l2_norm
from hf_ssl.models.dino.modeling_dino import build_backbone, check_input_sizes
from hf_ssl.training.checkpointing import sharding_of
from hf_ssl.training.config import ConfigError
from hf_ssl.training.ema import FullPrecisionTeacher, ema_update_, local_shards

logger = logging.getLogger(__name__)

LOGGED_OUTPUTS = ("teacher_entropy", "student_entropy", "embedding_std", "center_norm")


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or inf for ``count`` optimizer steps in a row, up to ``step``. The engines fill in
    ``last_good_checkpoint``: no checkpoint is written during such a streak, so the latest one predates it."""

    def __init__(self, step: int, count: int):
        super().__init__(step, count)
        self.step, self.count = step, count
        self.last_good_checkpoint = None

    def __str__(self) -> str:
        if self.last_good_checkpoint is not None:
            checkpoint = (
                f"The last checkpoint before the NaN/inf steps is {self.last_good_checkpoint}: continue from it with "
                "--resume auto and training.resume_with_changed_settings=true after the change. "
            )
        else:
            checkpoint = "No checkpoint was saved before it. "
        return (
            f"the loss was NaN or inf for {self.count} optimizer steps in a row (up to step {self.step}): training stopped. "
            + checkpoint
            + "Try: a lower training.learning_rate or a longer training.warmup_epochs; bf16 instead of fp16 (fp16 "
            "overflows in the DINO head); a smaller training.max_grad_norm; a higher model.teacher_temperature. "
            "Raise training.max_consecutive_nonfinite_steps to tolerate more."
        )


class DinoStep:
    """DINO's per-step logic around a ``DinoForPretraining``.

    Args:
        model: the unwrapped ``DinoForPretraining`` (its teacher, student and loss are reached by name).
        multicrop_config: the photometric part runs batched on the training device in ``loss``.
        seed, process_index: the device augmentation of micro-batch ``i`` of optimizer step ``t`` draws from a
            generator seeded by ``(seed, process_index, t, i)``: every process draws its own stream, and a
            resumed run draws exactly what an uninterrupted one would.
        max_consecutive_nonfinite_steps: stop after this many NaN/inf steps in a row.
        reduce: ``fn(tensor) -> tensor`` summing over processes (``accelerator.reduce(t, "sum")``).
    """

    def __init__(self, model, multicrop_config: MultiCropConfig, seed: int, process_index: int, max_consecutive_nonfinite_steps: int, reduce):
        self.model = model
        sizes = {"augmentation.global_crop_size": multicrop_config.global_crop_size}
        if multicrop_config.local_crops_number:
            sizes["augmentation.local_crop_size"] = multicrop_config.local_crop_size
        check_input_sizes(model.config.backbone_config, sizes, native=("augmentation.global_crop_size",))
        self.device_augmentation = DeviceAugmentation(multicrop_config)
        self.seed = seed
        self.process_index = process_index
        self.augmentation_generator: torch.Generator | None = None
        self.micro_batch_index = 0
        self.max_consecutive_nonfinite_steps = max_consecutive_nonfinite_steps
        self.reduce = reduce
        self.schedules = None  # DinoSchedules, set once the run length is known
        self.current_step = 0
        self._hooks = []
        self.bind(model)
        self.step_had_nonfinite_loss = False
        self.step_images = 0  # readable images this process fed into the current optimizer step
        self.step_skipped = False
        self.consecutive_nonfinite_steps = 0
        self.skipped_steps = 0
        self.skipped_images = 0
        self._window = defaultdict(float)
        self._window_count = 0
        self._window_images = 0
        self._window_start = time.perf_counter()
        self._last_teacher_embeddings: torch.Tensor | None = None

    def bind(self, model, optimizer_steps_in_backward: bool = False) -> None:
        """Collect the EMA pairs and the last-layer parameters from ``model`` as the engine runs it. Call it
        again after accelerate's ``prepare``: FSDP2 replaces parameters with sharded ``DTensor`` ones, and an
        EMA over the old objects would leave the teacher unchanged without any error; DeepSpeed bf16/fp16 casts
        the model (the EMA then runs on float32 copies of the teacher, the loss buffers go back to float32).

        ``optimizer_steps_in_backward``: the engine steps the optimizer inside ``backward`` (DeepSpeed), so
        nothing can act between the gradients and the update; see the module docstring.
        """
        self.optimizer_steps_in_backward = optimizer_steps_in_backward
        teacher, student = local_shards(*model.teacher_student_parameter_pairs())
        self.ema_parameter_pairs = (teacher, student)
        self.full_precision_teacher = FullPrecisionTeacher(teacher) if FullPrecisionTeacher.needed(teacher) else None
        self.last_layer_parameters = model.last_layer_parameters()
        model.loss.float()  # the center and its pending sums stay float32 whatever the engine did to the model
        self.input_dtype = next((p.dtype for p in model.student.parameters() if p.is_floating_point()), torch.float32)
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if optimizer_steps_in_backward:
            self._hooks = [p.register_hook(self._zero_while_frozen) for p in self.last_layer_parameters if p.requires_grad]

    def _zero_while_frozen(self, gradient: torch.Tensor) -> torch.Tensor | None:
        if self.schedules is not None and self.current_step < self.schedules.freeze_last_layer_steps:
            return torch.zeros_like(gradient)
        return None

    # ----- before the micro-batches --------------------------------------------------------------
    def begin_step(self, optimizer, step: int) -> None:
        """Learning rate of this step on every group, weight decay on the regularised ones (see
        ``parameter_groups``): both are functions of the step, so a resume needs no scheduler state.

        The last-layer groups get lr 0 while the last layer is frozen, and their Adam moments start afresh
        at the first step after the freeze, as when DINO drops their gradients (then AdamW has no state for
        them yet). This matters where the gradients cannot be dropped (DeepSpeed: they are zeroed instead,
        and ZeRO keeps one step count per flat group).
        """
        self.current_step = step
        self.micro_batch_index = 0
        learning_rate, weight_decay = self.schedules.learning_rate(step), self.schedules.weight_decay(step)
        frozen = step < self.schedules.freeze_last_layer_steps
        for group in optimizer.param_groups:
            group["lr"] = 0.0 if frozen and group.get("last_layer", False) else learning_rate
            if group.get("apply_weight_decay", False):
                group["weight_decay"] = weight_decay
        if step == self.schedules.freeze_last_layer_steps > 0:
            restart_last_layer_moments(optimizer)

    # ----- one micro-batch -----------------------------------------------------------------------
    def loss(self, model, batch: dict, step: int):
        """Loss of one micro-batch from ``MultiCropCollator`` (uint8 crops already on the device).

        Returns ``(loss, outputs)``; ``outputs`` is None for a batch whose images were all unreadable
        (its zero loss still touches every trainable parameter, so distributed ranks stay in step).
        """
        skipped = batch.get("num_skipped")
        if skipped is not None:
            self.skipped_images += int(skipped.sum())
        global_crops, local_crops = batch["global_crops"], batch.get("local_crops")
        if global_crops.shape[1] == 0:
            return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad), None
        self._window_images += global_crops.shape[1]
        self.step_images += global_crops.shape[1]
        global_crops, local_crops = self.augment(global_crops, local_crops, step)
        if self.input_dtype != global_crops.dtype:  # a model cast to bf16/fp16 by the engine (DeepSpeed)
            global_crops = global_crops.to(self.input_dtype)
            local_crops = local_crops.to(self.input_dtype) if local_crops is not None else None
        outputs = model(
            global_crops=global_crops,
            local_crops=local_crops,
            teacher_temperature=self.schedules.teacher_temperature(step) if self.schedules else None,
            update_center=False,
        )
        if not torch.isfinite(outputs.loss.detach()):
            # keep the graph (DDP expects every rank to run backward); before_optimizer_step drops the gradients
            self.step_had_nonfinite_loss = True
        else:
            for name in LOGGED_OUTPUTS:
                value = getattr(outputs, name, None)
                if value is not None:
                    self._window[name] += value.detach().float()
            self._window_count += 1
            self._last_teacher_embeddings = outputs.teacher_embeddings  # measured only when logging
        return outputs.loss, outputs

    def augment(self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, step: int):
        """Photometric augmentation on the training device, from a generator seeded by (seed, process,
        step, micro-batch): a pure function of where training is, so a resume needs no generator state."""
        if self.augmentation_generator is None or self.augmentation_generator.device != global_crops.device:
            self.augmentation_generator = torch.Generator(device=global_crops.device)
        seed_sequence = np.random.SeedSequence((self.seed, self.process_index, step, self.micro_batch_index))
        self.augmentation_generator.manual_seed(int(seed_sequence.generate_state(1, np.uint64)[0] >> 1))
        self.micro_batch_index += 1
        return self.device_augmentation(global_crops, local_crops, generator=self.augmentation_generator)

    # ----- after backward and clipping -----------------------------------------------------------
    def before_optimizer_step(self, optimizer, step: int) -> bool:
        """Returns True when the step must be skipped (a NaN/inf loss on any process); then every gradient
        is dropped, so AdamW leaves parameters and moments as they were. Does nothing when the optimizer
        steps inside backward (DeepSpeed): ``after_optimizer_step`` does this work then."""
        if self.optimizer_steps_in_backward:
            return False
        if self._settle_step(step):
            optimizer.zero_grad(set_to_none=True)
            return True
        if step < self.schedules.freeze_last_layer_steps:
            for parameter in self.last_layer_parameters:
                parameter.grad = None
        return False

    def may_checkpoint(self, step: int) -> bool:
        """False (with a warning) while the loss is NaN/inf: the weights are those that gave it, and saving them
        would let checkpoint rotation delete the good ones. The engines write no checkpoint until a finite step."""
        if self.consecutive_nonfinite_steps == 0:
            return True
        logger.warning("Step %d: no checkpoint while the loss is NaN/inf; the latest one is kept as it is.", step)
        return False

    def _settle_step(self, step: int, optimizer_step_was_skipped: bool = False) -> bool:
        """Whether this step is skipped: a NaN/inf loss on any process, or no readable image on any process
        (an all-unreadable batch gives a zero loss, and AdamW would still move the weights by momentum and weight
        decay), both agreed by one reduction and counted; or a skip decided elsewhere (DeepSpeed's overflow
        check). A skipped step drops its center statistics; a kept one applies them as one center update."""
        flags = torch.tensor([float(self.step_had_nonfinite_loss), float(self.step_images)], device=self.model.loss.center.device)
        self.step_had_nonfinite_loss, self.step_images = False, 0
        nonfinite_processes, images = self.reduce(flags).tolist()
        nonfinite, empty = nonfinite_processes > 0, images == 0
        self.step_skipped = nonfinite or empty or optimizer_step_was_skipped
        if self.step_skipped:
            self.model.loss.pending_center_statistics.zero_()
            if nonfinite:
                self._count_nonfinite_step(step)
            elif empty:
                self.skipped_steps += 1
                logger.warning("Step %d had no readable image on any process: optimizer step skipped (%d skipped in total).", step, self.skipped_steps)
            return True
        self.consecutive_nonfinite_steps = 0
        self.model.loss.apply_pending_center_update()
        return False

    def _count_nonfinite_step(self, step: int) -> None:
        self.skipped_steps += 1
        self.consecutive_nonfinite_steps += 1
        logger.warning(
            "Non-finite loss at step %d: optimizer step skipped (%d in a row, %d in total).",
            step, self.consecutive_nonfinite_steps, self.skipped_steps,
        )
        if self.consecutive_nonfinite_steps >= self.max_consecutive_nonfinite_steps:
            raise NonFiniteLossError(step, self.consecutive_nonfinite_steps)

    # ----- after the optimizer step --------------------------------------------------------------
    def after_optimizer_step(self, step: int, optimizer_step_was_skipped: bool = False) -> None:
        """EMA teacher update with the momentum of ``step`` (the update that just happened), unless the step
        was skipped here or by the fp16 gradient scaler (the student did not change).

        When the optimizer stepped inside backward (DeepSpeed), this is also where a NaN/inf loss on any
        process is counted (DeepSpeed skipped that step: its gradients were not finite) and where the center
        takes the step's statistics, or drops them if the step was skipped.
        """
        if self.optimizer_steps_in_backward:
            self._settle_step(step, optimizer_step_was_skipped)
        if self.step_skipped or optimizer_step_was_skipped:
            return
        teacher, student = self.ema_parameter_pairs
        momentum = self.schedules.teacher_momentum(step)
        if self.full_precision_teacher is not None:
            self.full_precision_teacher.update_(student, momentum)
        else:
            ema_update_(teacher, student, momentum)

    # ----- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Counters that a resume restores (everything else is a function of the step or in the model)."""
        return {
            "skipped_steps": self.skipped_steps,
            "skipped_images": self.skipped_images,
            "consecutive_nonfinite_steps": self.consecutive_nonfinite_steps,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name in ("skipped_steps", "skipped_images", "consecutive_nonfinite_steps"):
            setattr(self, name, int(state.get(name, 0)))

    # ----- logging -------------------------------------------------------------------------------
    def log_metrics(self, step: int, world_size: int) -> dict[str, float]:
        """Schedule values of ``step``, means of the model's collapse signals since the last call,
        throughput and skip counters."""
        logs = {
            "learning_rate": self.schedules.learning_rate(step),
            "weight_decay": self.schedules.weight_decay(step),
            "teacher_momentum": self.schedules.teacher_momentum(step),
            "teacher_temperature": self.schedules.teacher_temperature(step),
        }
        if self._window_count:
            for name, total in self._window.items():
                logs[name] = round(float(total) / self._window_count, 6)
            if "teacher_entropy" in logs:
                logs["teacher_entropy_ratio"] = round(logs["teacher_entropy"] / math.log(self.model.config.out_dim), 6)
        embeddings = self._last_teacher_embeddings
        if embeddings is not None and embeddings.shape[0] >= 2:
            # of the last micro-batch's teacher CLS embeddings (an SVD per log, not per step)
            logs["effective_rank"] = round(float(effective_rank(embeddings)), 4)
            logs["mean_l2_norm"] = round(float(mean_l2_norm(embeddings)), 6)
        self._last_teacher_embeddings = None
        now = time.perf_counter()
        logs["images_per_second"] = round(self._window_images * world_size / max(now - self._window_start, 1e-9), 2)
        if torch.cuda.is_available():
            logs["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        logs["skipped_steps"] = self.skipped_steps
        logs["skipped_images"] = self.skipped_images
        self._window.clear()
        self._window_count = 0
        self._window_images, self._window_start = 0, now
        return logs


def restart_last_layer_moments(optimizer) -> None:
    """Zero the Adam state (step count and moments) of the ``last_layer`` parameter groups of ``optimizer``
    or of the optimizer it wraps (accelerate's ``AcceleratedOptimizer``, DeepSpeed's ZeRO optimizer)."""
    inner = optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    for group in inner.param_groups:
        if not group.get("last_layer", False):
            continue
        for parameter in group["params"]:
            state = inner.state.get(parameter)
            if not state:
                continue
            for key, value in state.items():
                if torch.is_tensor(value):
                    value.zero_()
                elif key == "step":
                    state[key] = 0


FULL_PRECISION_TEACHER_FILE = "teacher_float32.safetensors"


def full_precision_state_dict(model, full_precision_teacher: FullPrecisionTeacher) -> dict[str, torch.Tensor]:
    """The model's state in float32 when DeepSpeed holds it in bf16/fp16: the trained student parameters from
    the optimizer's float32 master copies (a collective: every process must call it), the teacher from the
    EMA's float32 copies, everything else cast."""
    from deepspeed.utils import safe_get_full_fp32_param

    teacher_copies = {id(parameter): copy for parameter, copy in zip(full_precision_teacher.parameters, full_precision_teacher.copies)}
    state = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            value = safe_get_full_fp32_param(parameter)
        else:
            value = teacher_copies.get(id(parameter), parameter.detach())
        state[name] = value.detach().float().cpu()
    persistent = model.state_dict()
    for name, buffer in model.named_buffers():
        if name in persistent:
            state[name] = buffer.detach().float().cpu() if buffer.is_floating_point() else buffer.detach().cpu()
    return state


def save_full_precision_model(model, full_precision_teacher: FullPrecisionTeacher, output_dir, is_main_process: bool) -> None:
    """``save_pretrained`` of a float32 copy of ``model`` built from ``full_precision_state_dict`` (every process
    must call it; the main process writes)."""
    state_dict = full_precision_state_dict(model, full_precision_teacher)
    if is_main_process:
        copy = type(model)(model.config)
        copy.load_state_dict(state_dict)
        copy.save_pretrained(output_dir)


def check_training_data(train_dataset, per_device_batch_size: int, world_size: int, drop_last: bool) -> None:
    """Stop before training, saying what to change, when the data cannot give one real step: no image, fewer
    images than one batch while incomplete batches are dropped, or (a ``MultiCropDataset``) not one readable
    image among a sample spread over the dataset. Streaming datasets (no length) are not checked."""
    if not hasattr(train_dataset, "__len__"):
        return
    count, batch = len(train_dataset), per_device_batch_size * world_size
    if count == 0:
        raise ConfigError("the training split has no images: check data.dataset, data.data_dir and data.train_split")
    if drop_last and count < batch:
        raise ConfigError(
            f"the training split has {count} images, fewer than one batch of {batch} (per_device_train_batch_size "
            f"{per_device_batch_size} x {world_size} processes), and training.dataloader_drop_last=true drops an "
            "incomplete batch: not one step would run. Lower training.per_device_train_batch_size, or set "
            "training.dataloader_drop_last=false"
        )
    if isinstance(train_dataset, MultiCropDataset):
        readable, checked, first_error = train_dataset.probe_readable_images()
        if readable == 0:
            raise ConfigError(
                f"none of the {checked} training images checked could be read (first: {first_error}). Check "
                "data.dataset / data.data_dir: training would skip every image"
            )
        if readable < checked:
            logger.warning(
                "%d of %d training images checked cannot be read (first: %s): such images are skipped and counted "
                "(skipped_images in the logs).", checked - readable, checked, first_error,
            )


def is_deepspeed(accelerator) -> bool:
    return sharding_of(accelerator) == "deepspeed"


def check_distributed_setup(accelerator, engine: str) -> None:
    """Refuse, before any training, the setups DINO's step cannot run correctly."""
    if not is_deepspeed(accelerator):
        return
    stage = getattr(accelerator.state.deepspeed_plugin, "zero_stage", None)
    if stage == 3:
        raise ValueError(
            "DeepSpeed ZeRO-3 partitions the teacher and the student outside autograd, and DINO's EMA update "
            "does not support that: use ZeRO-2 (accelerate_configs/deepspeed_zero2.yaml) or FSDP "
            "(accelerate_configs/fsdp_full_shard.yaml), which also shards the parameters."
        )


def teacher_backbone_for_evaluation(accelerator, wrapped_model):
    """The whole teacher backbone on the main process (None on the others), for k-NN evaluation.

    Under FSDP the weights are sharded: every process must call this, the full state is gathered (a
    collective) and loaded into an unsharded copy. Otherwise the teacher backbone itself is returned.
    """
    model = accelerator.unwrap_model(wrapped_model)
    if sharding_of(accelerator) != "fsdp":
        if not accelerator.is_main_process:
            return None
        backbone = model.teacher.backbone
        if next(backbone.parameters()).dtype == torch.float32:
            return backbone
        # cast to bf16/fp16 by the engine (DeepSpeed): evaluate a float32 copy, as the exported backbone will be
        copy = build_backbone(model.config.teacher_backbone_config())
        copy.load_state_dict({name: tensor.float() for name, tensor in backbone.state_dict().items()})
        return copy.to(accelerator.device).eval()
    state = accelerator.get_state_dict(wrapped_model)
    if not accelerator.is_main_process:
        return None
    prefix = "teacher.backbone."
    weights = {}
    for name, tensor in state.items():
        name = name.replace("_fsdp_wrapped_module.", "")
        if name.startswith(prefix):
            weights[name[len(prefix):]] = tensor
    backbone = build_backbone(model.config.teacher_backbone_config())
    backbone.load_state_dict(weights, strict=True)
    return backbone.to(accelerator.device).eval()
