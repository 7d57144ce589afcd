"""Per-iteration schedules used by the self-supervised recipes.

Every schedule is a pure function of the optimizer step (``step`` counts real optimizer updates,
never micro-batches), so that any value can be recomputed exactly after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_value(start: float, end: float, progress: float) -> float:
    """Half-cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Linear warmup from ``warmup_start_value`` to ``base_value`` over ``warmup_steps``, then a cosine
    from ``base_value`` to ``final_value`` over the remaining ``total_steps - warmup_steps`` steps.

    The shape of DINO's ``cosine_scheduler``, with exact end points: step ``warmup_steps`` is exactly
    ``base_value`` and the last step (``total_steps - 1``) exactly ``final_value``; later steps stay there.
    """

    base_value: float
    final_value: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start_value: float = 0.0

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_value + (self.base_value - self.warmup_start_value) * step / self.warmup_steps
        cosine_steps = self.total_steps - self.warmup_steps
        if cosine_steps <= 1:
            return self.final_value
        return cosine_value(self.base_value, self.final_value, (step - self.warmup_steps) / (cosine_steps - 1))


@dataclass(frozen=True)
class LinearWarmupConstantSchedule:
    """Linear from ``start_value`` to ``end_value`` over ``warmup_steps``, then constant.

    DINO's teacher temperature: 0.04 -> 0.07 over the first 30 epochs, 0.07 afterwards.
    """

    start_value: float
    end_value: float
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.end_value
        return self.start_value + (self.end_value - self.start_value) * step / self.warmup_steps


def scaled_learning_rate(base_learning_rate: float, total_batch_size: int, reference_batch_size: int = 256) -> float:
    """The linear scaling rule of DINO/MAE: ``lr = base_lr * total_batch / 256``."""
    return base_learning_rate * total_batch_size / reference_batch_size
