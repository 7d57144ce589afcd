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
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

import numpy as np
import torch

from hf_ssl.data import DeviceAugmentation, MultiCropConfig
from hf_ssl.models.dino.modeling_dino import build_backbone
from hf_ssl.training.ema import ema_update_, local_shards

logger = logging.getLogger(__name__)

LOGGED_OUTPUTS = ("teacher_entropy", "student_entropy", "embedding_std", "center_norm")


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
        self.device_augmentation = DeviceAugmentation(multicrop_config)
        self.seed = seed
        self.process_index = process_index
        self.augmentation_generator: torch.Generator | None = None
        self.micro_batch_index = 0
        self.max_consecutive_nonfinite_steps = max_consecutive_nonfinite_steps
        self.reduce = reduce
        self.schedules = None  # DinoSchedules, set once the run length is known
        self.bind(model)
        self.step_had_nonfinite_loss = False
        self.step_skipped = False
        self.consecutive_nonfinite_steps = 0
        self.skipped_steps = 0
        self.skipped_images = 0
        self._window = defaultdict(float)
        self._window_count = 0
        self._window_images = 0
        self._window_start = time.perf_counter()

    def bind(self, model) -> None:
        """Collect the EMA pairs and the last-layer parameters from ``model`` as the engine runs it. Call it
        again after accelerate's ``prepare``: FSDP2 replaces parameters with sharded ``DTensor`` ones, and an
        EMA over the old objects would leave the teacher unchanged without any error."""
        self.ema_parameter_pairs = local_shards(*model.teacher_student_parameter_pairs())
        self.last_layer_parameters = model.last_layer_parameters()

    # ----- before the micro-batches --------------------------------------------------------------
    def begin_step(self, optimizer, step: int) -> None:
        """Learning rate of this step on every group, weight decay on the regularised ones (see
        ``parameter_groups``): both are functions of the step, so a resume needs no scheduler state."""
        self.micro_batch_index = 0
        learning_rate, weight_decay = self.schedules.learning_rate(step), self.schedules.weight_decay(step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
            if group.get("apply_weight_decay", False):
                group["weight_decay"] = weight_decay

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
        global_crops, local_crops = self.augment(global_crops, local_crops, step)
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
        is dropped, so AdamW leaves parameters and moments as they were."""
        nonfinite = torch.tensor(float(self.step_had_nonfinite_loss), device=self.model.loss.center.device)
        self.step_had_nonfinite_loss = False
        self.step_skipped = bool(self.reduce(nonfinite).item() > 0)
        if self.step_skipped:
            self.model.loss.pending_center_statistics.zero_()
            optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite_step(step)
            return True
        self.consecutive_nonfinite_steps = 0
        self.model.loss.apply_pending_center_update()
        if step < self.schedules.freeze_last_layer_steps:
            for parameter in self.last_layer_parameters:
                parameter.grad = None
        return False

    def _count_nonfinite_step(self, step: int) -> None:
        self.skipped_steps += 1
        self.consecutive_nonfinite_steps += 1
        logger.warning(
            "Non-finite loss at step %d: optimizer step skipped (%d in a row, %d in total).",
            step, self.consecutive_nonfinite_steps, self.skipped_steps,
        )
        if self.consecutive_nonfinite_steps >= self.max_consecutive_nonfinite_steps:
            raise RuntimeError(
                f"The loss was NaN or inf for {self.consecutive_nonfinite_steps} optimizer steps in a row (step {step}). "
                "Training stopped. Try: a lower training.learning_rate or a longer training.warmup_epochs; "
                "bf16 instead of fp16 (fp16 overflows in the DINO head); a smaller training.max_grad_norm; "
                "a higher model.teacher_temperature. Raise training.max_consecutive_nonfinite_steps to tolerate more."
            )

    # ----- after the optimizer step --------------------------------------------------------------
    def after_optimizer_step(self, step: int, optimizer_step_was_skipped: bool = False) -> None:
        """EMA teacher update with the momentum of ``step`` (the update that just happened), unless the step
        was skipped here or by the fp16 gradient scaler (the student did not change)."""
        if self.step_skipped or optimizer_step_was_skipped:
            return
        teacher, student = self.ema_parameter_pairs
        ema_update_(teacher, student, self.schedules.teacher_momentum(step))

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


def check_distributed_type(distributed_type) -> None:
    """Refuse the setups DINO's step cannot run correctly, before any training."""
    if str(getattr(distributed_type, "value", distributed_type)).upper() == "DEEPSPEED":
        raise ValueError(
            "DeepSpeed is not supported by hf_ssl's DINO step yet: DeepSpeed takes the optimizer step inside "
            "backward, before the NaN guard and the last-layer freeze can act on the gradients. Shard with FSDP "
            "(accelerate_configs/fsdp_full_shard.yaml or fsdp_shard_grad_op.yaml) or use DDP (multi_gpu.yaml)."
        )


def teacher_backbone_for_evaluation(accelerator, wrapped_model):
    """The whole teacher backbone on the main process (None on the others), for k-NN evaluation.

    Under FSDP the weights are sharded: every process must call this, the full state is gathered (a
    collective) and loaded into an unsharded copy. Otherwise the teacher backbone itself is returned.
    """
    model = accelerator.unwrap_model(wrapped_model)
    if str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)).upper() != "FSDP":
        return model.teacher.backbone if accelerator.is_main_process else None
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
