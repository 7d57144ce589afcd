"""The errors a user meets, in one small module that every layer of hf_ssl may import (it imports nothing of
hf_ssl): a recipe to fix, a run whose loss or weights went non-finite, images whose band layout is a setting."""

from __future__ import annotations


class ConfigError(ValueError):
    """A recipe file or override that cannot be turned into a valid configuration."""


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or inf for ``count`` optimizer steps in a row, up to ``step``. The engines fill in
    ``last_good_checkpoint``: no checkpoint is written during such a streak, so the latest one predates it.
    ``advice`` is the method's list of things to try."""

    warmup_key = "training.warmup_epochs"  # the recipe key of the warmup's length (fine-tuning: training.warmup_ratio)

    def __init__(self, step: int, count: int, advice: str = ""):
        super().__init__(step, count)
        self.step, self.count, self.advice = step, count, advice
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
            f"the loss was NaN or inf for {self.count} optimizer steps in a row (up to step {self.step}): training "
            "stopped. "
            + checkpoint
            + f"Try: a lower training.learning_rate or a longer {self.warmup_key}; bf16 instead of fp16; a smaller "
            "training.max_grad_norm"
            + (f"; {self.advice}" if self.advice else "")
            + ". Raise training.max_consecutive_nonfinite_steps to tolerate more."
        )


class NonFiniteWeightsError(RuntimeError):
    """The model holds NaN / inf weights: nothing is saved."""


class BandLayoutError(ValueError):
    """An array whose band axis its shape does not tell (``(N, H, N)`` with N bands): the layout is a setting
    (``data.channels_last``) that holds for the whole dataset, so the pipelines that skip unreadable images raise
    it instead of skipping the image."""
