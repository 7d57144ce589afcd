"""Behaviour that belongs to a moment of a training step, as ``transformers.TrainerCallback``s.

Order inside one optimizer step (the Trainer calls them in this order):

    on_step_begin        -> ScheduleCallback sets this step's weight decay
    (forward/backward of every micro-batch, gradients clipped)
    on_pre_optimizer_step -> NonFiniteLossCallback drops every gradient of a step that saw NaN/inf,
                            LastLayerFreezeCallback drops the head's last-layer gradients early on
    optimizer.step()
    on_step_end          -> EmaCallback moves the teacher towards the student

``on_step_begin``/``on_pre_optimizer_step``/``on_step_end`` run once per optimizer step, never per
micro-batch, so schedules and the EMA count real updates under gradient accumulation.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from hf_ssl.training.ema import ema_update_

logger = logging.getLogger(__name__)


class ScheduleCallback(TrainerCallback):
    """Sets the weight decay of the regularised parameter groups from a per-step schedule.

    Parameter groups built by ``DinoTrainer.create_optimizer`` carry ``apply_weight_decay``; biases
    and other 1-D parameters sit in a group that stays at weight decay 0.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        schedules = self.trainer.schedules
        weight_decay = schedules.weight_decay(state.global_step)
        for group in self.trainer.optimizer.param_groups:
            if group.get("apply_weight_decay", False):
                group["weight_decay"] = weight_decay


class NonFiniteLossCallback(TrainerCallback):
    """Skips optimizer steps whose loss was NaN or inf and stops after too many in a row.

    The trainer marks a step as non-finite in ``compute_loss``; the flag is all-reduced so every
    process skips the same steps. Skipping = removing every gradient, so AdamW leaves parameters and
    moments untouched (it ignores parameters whose ``grad`` is None).
    """

    def __init__(self, trainer, max_consecutive: int):
        self.trainer = trainer
        self.max_consecutive = max_consecutive
        self.consecutive = 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        nonfinite = torch.tensor(float(trainer.step_had_nonfinite_loss), device=trainer.args.device)
        nonfinite = trainer.accelerator.reduce(nonfinite, reduction="sum")
        trainer.step_had_nonfinite_loss = False
        trainer.step_skipped = bool(nonfinite.item() > 0)
        if not trainer.step_skipped:
            self.consecutive = 0
            return
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.skipped_steps += 1
        self.consecutive += 1
        logger.warning(
            "Non-finite loss at step %d: optimizer step skipped (%d in a row, %d in total).",
            state.global_step, self.consecutive, trainer.skipped_steps,
        )
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"The loss was NaN or inf for {self.consecutive} optimizer steps in a row (step {state.global_step}). "
                "Training stopped. Try: a lower training.learning_rate or a longer training.warmup_epochs; "
                "bf16 instead of fp16 (fp16 overflows in the DINO head); a smaller training.max_grad_norm; "
                "a higher model.teacher_temperature. Raise training.max_consecutive_nonfinite_steps to tolerate more."
            )


class LastLayerFreezeCallback(TrainerCallback):
    """Drops the gradients of the DINO head's last layer during the first ``freeze_steps`` updates
    (DINO: one epoch), which stabilises the start of training."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step >= self.trainer.schedules.freeze_last_layer_steps:
            return
        for parameter in self.trainer.last_layer_parameters:
            parameter.grad = None


class EmaCallback(TrainerCallback):
    """Updates the teacher as an exponential moving average of the student after every real
    optimizer step, with the momentum of that step's schedule."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        # a step skipped for a NaN loss, or by the fp16 gradient scaler on overflow, left the student as it was
        if trainer.step_skipped or trainer.accelerator.optimizer_step_was_skipped:
            return
        # global_step was already incremented: the update that just happened is step global_step - 1
        momentum = trainer.schedules.teacher_momentum(state.global_step - 1)
        teacher, student = trainer.ema_parameter_pairs
        ema_update_(teacher, student, momentum)
