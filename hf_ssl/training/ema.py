"""Exponential moving average of the student into the teacher."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def ema_update_(teacher_params: Sequence[torch.Tensor], student_params: Sequence[torch.Tensor], momentum: float) -> None:
    """In place: ``teacher <- momentum * teacher + (1 - momentum) * student`` for every pair.

    Uses fused ``torch._foreach_*`` kernels (one launch per op for the whole list instead of one per
    tensor). Both lists must be aligned by parameter name (``DinoForPretraining.teacher_student_parameter_pairs``).
    """
    if len(teacher_params) != len(student_params):
        raise ValueError(f"EMA needs as many teacher ({len(teacher_params)}) as student ({len(student_params)}) tensors")
    if not teacher_params:
        return
    teacher = [t.data if isinstance(t, torch.nn.Parameter) else t for t in teacher_params]
    student = [s.detach() for s in student_params]
    if momentum == 1.0:
        return
    # lerp_(teacher, student, w) = teacher + w * (student - teacher) = m * teacher + (1 - m) * student
    torch._foreach_lerp_(teacher, student, 1.0 - momentum)
