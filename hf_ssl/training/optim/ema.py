"""Exponential moving average of the student into the teacher."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def ema_update_(
    teacher_params: Sequence[torch.Tensor], student_params: Sequence[torch.Tensor], momentum: float
) -> None:
    """In place: ``teacher <- momentum * teacher + (1 - momentum) * student`` for every pair.

    Uses fused ``torch._foreach_*`` kernels (one launch per op for the whole list instead of one per
    tensor). Both lists must be aligned by parameter name (``DinoForPreTraining.teacher_student_parameter_pairs``).
    """
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"EMA needs as many teacher ({len(teacher_params)}) as student ({len(student_params)}) tensors"
        )
    if not teacher_params:
        return
    teacher = [t.data if isinstance(t, torch.nn.Parameter) else t for t in teacher_params]
    student = [s.detach() for s in student_params]
    if momentum == 1.0:
        return
    # lerp_(teacher, student, w) = teacher + w * (student - teacher) = m * teacher + (1 - m) * student
    torch._foreach_lerp_(teacher, student, 1.0 - momentum)


def local_shards(
    teacher_params: Sequence[torch.Tensor], student_params: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The part of each (teacher, student) pair this process holds, for ``ema_update_`` under sharding.

    - unsharded parameters (one process, DDP, DeepSpeed ZeRO-2): as they are;
    - FSDP2 ``DTensor`` parameters: their local shards (``to_local()`` shares storage, so the update lands
      in the parameter); teacher and student are sharded alike, parameter by parameter;
    - FSDP1 with ``use_orig_params=True``: the views into the flat parameters, which line up only when
      teacher and student are wrapped alike (wrap ``DinoNetwork`` as well as the transformer layers).

    Pairs whose local parts are both empty (this process holds nothing of them) are left out. DeepSpeed
    ZeRO-3 partitions parameters outside autograd's view and is refused.
    """
    teacher_local, student_local = [], []
    for index, (teacher, student) in enumerate(zip(teacher_params, student_params, strict=True)):
        if hasattr(teacher, "ds_tensor") or hasattr(student, "ds_tensor"):
            raise ValueError(
                "DeepSpeed ZeRO-3 partitions the teacher and the student outside autograd, and the EMA update does "
                "not support it: shard with FSDP instead (accelerate_configs/fsdp_full_shard.yaml)"
            )
        teacher, student = _local(teacher), _local(student)
        if teacher.shape != student.shape:
            raise ValueError(
                f"teacher and student parameter {index} are sharded differently on this process "
                f"({tuple(teacher.shape)} vs {tuple(student.shape)}): with FSDP1, wrap the DinoNetwork class too "
                "(fsdp_transformer_layer_cls_to_wrap: ViTLayer,DinoNetwork) or use fsdp_version: 2"
            )
        if teacher.numel() == 0:
            continue
        teacher_local.append(teacher)
        student_local.append(student)
    return teacher_local, student_local


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class FullPrecisionTeacher:
    """float32 copies of a teacher held in lower precision, for the EMA.

    DeepSpeed's bf16/fp16 modes cast the whole module, teacher included. With 8 bits of mantissa an update
    ``teacher += (1 - m) * (student - teacher)`` with ``1 - m`` around 0.004 mostly rounds to no change, and
    the teacher freezes without any error. Here the EMA runs on float32 copies and each result is written
    back, rounded, into the parameters the forward pass uses. The copies are part of the training state:
    ``state_dict`` / ``load_state_dict`` (accelerate's ``register_for_checkpointing``).
    """

    def __init__(self, teacher_params: Sequence[torch.Tensor]):
        self.parameters = list(teacher_params)
        self.params = [t.data if isinstance(t, torch.nn.Parameter) else t for t in teacher_params]
        self.copies = [t.detach().float().clone() for t in self.params]

    @staticmethod
    def needed(teacher_params: Sequence[torch.Tensor]) -> bool:
        return any(t.is_floating_point() and t.dtype != torch.float32 for t in teacher_params)

    @torch.no_grad()
    def update_(self, student_params: Sequence[torch.Tensor], momentum: float) -> None:
        ema_update_(self.copies, [s.detach().float() for s in student_params], momentum)
        torch._foreach_copy_(self.params, self.copies)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"teacher": [copy.cpu() for copy in self.copies]}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        saved = state["teacher"]
        if len(saved) != len(self.copies) or any(s.shape != c.shape for s, c in zip(saved, self.copies)):
            raise ValueError("the saved float32 teacher does not match this model's teacher parameters")
        for copy, value in zip(self.copies, saved):
            copy.copy_(value)
        torch._foreach_copy_(self.params, self.copies)
