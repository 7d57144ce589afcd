"""A method's per-step logic (``hf_ssl.training.methods.PretrainingMethod``) hooked into the transformers ``Trainer``.

The Trainer calls ``on_step_begin``, ``on_pre_optimizer_step`` and ``on_step_end`` once per optimizer
step, never per micro-batch, so schedules, statistics such as DINO's center and the EMA count real updates
under gradient accumulation.
"""

from __future__ import annotations

from transformers import TrainerCallback

from hf_ssl.training.engines.base import is_deepspeed


class MethodStepCallback(TrainerCallback):
    """The method's ``begin_step`` at the start of each step (lr, weight decay); its NaN/inf skip and
    ``before_optimizer_step`` work (DINO: center update, last-layer freeze) between gradient clipping and
    ``optimizer.step()``."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # the Trainer has wrapped the model by now (DDP, FSDP, DeepSpeed): take the parameters it will update;
        # DeepSpeed steps the optimizer inside backward and may have cast the model to bf16/fp16
        accelerator = self.trainer.accelerator
        self.trainer.method.bind(
            accelerator.unwrap_model(self.trainer.model), optimizer_steps_in_backward=is_deepspeed(accelerator)
        )
        self.trainer.restore_full_precision_teacher()
        self.trainer.begin_session(state.global_step, state.max_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.method.begin_step(self.trainer.optimizer, state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.method.before_optimizer_step(self.trainer.optimizer, state.global_step)


class EmaCallback(TrainerCallback):
    """The method's ``after_optimizer_step`` after every real optimizer step: the EMA teacher update of EMA
    methods, with the momentum of that step's schedule."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        # global_step was already incremented: the update that just happened is step global_step - 1
        self.trainer.method.after_optimizer_step(
            state.global_step - 1, self.trainer.accelerator.optimizer_step_was_skipped
        )
