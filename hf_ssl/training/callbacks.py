"""DINO's per-step logic (``hf_ssl.training.dino_step.DinoStep``) hooked into the transformers ``Trainer``.

The Trainer calls ``on_step_begin``, ``on_pre_optimizer_step`` and ``on_step_end`` once per optimizer
step, never per micro-batch, so schedules, the center update and the EMA count real updates under
gradient accumulation.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from hf_ssl.training.dino_step import is_deepspeed

logger = logging.getLogger(__name__)


class DinoStepCallback(TrainerCallback):
    """Weight decay at the start of each step; NaN/inf skip, center update and last-layer freeze between
    gradient clipping and ``optimizer.step()``."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # the Trainer has wrapped the model by now (DDP, FSDP, DeepSpeed): take the parameters it will update;
        # DeepSpeed steps the optimizer inside backward and may have cast the model to bf16/fp16
        accelerator = self.trainer.accelerator
        self.trainer.dino_step.bind(accelerator.unwrap_model(self.trainer.model), optimizer_steps_in_backward=is_deepspeed(accelerator))
        self.trainer.restore_full_precision_teacher()
        self.trainer.begin_session(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.dino_step.begin_step(self.trainer.optimizer, state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.dino_step.before_optimizer_step(self.trainer.optimizer, state.global_step)


class EmaCallback(TrainerCallback):
    """Updates the teacher as an exponential moving average of the student after every real optimizer
    step, with the momentum of that step's schedule."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        # global_step was already incremented: the update that just happened is step global_step - 1
        self.trainer.dino_step.after_optimizer_step(state.global_step - 1, self.trainer.accelerator.optimizer_step_was_skipped)


class RunControlCallback(TrainerCallback):
    """Saves a checkpoint and stops the Trainer on SIGTERM/SIGINT, at ``max_time_seconds`` and on early
    stopping (``hf_ssl.training.run_control.RunControl``; every process reaches the same decision)."""

    def __init__(self, run_control):
        self.run_control = run_control

    def on_train_begin(self, args, state, control, **kwargs):
        self.run_control.start()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.run_control.observe(logs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.run_control.check(args.device) is not None:
            logger.warning("step %d: %s; saving a checkpoint", state.global_step, self.run_control.describe_stop())
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.run_control.finish()
