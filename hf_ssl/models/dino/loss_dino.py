"""The DINO self-distillation loss with its teacher center.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294),
Eq. (1)-(4) and Algorithm 1.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class DinoLoss(nn.Module):
    r"""Cross-entropy between the centred, sharpened teacher and the student, over all crop pairs v != i.

    For teacher crop i and student crop v of the same image:
    `P_t = softmax((t_i - center) / teacher_temperature)` (no gradient),
    `log P_s = log_softmax(s_v / student_temperature)`, and the loss is `-sum_k P_t log P_s`, averaged over
    the batch and over every (teacher crop i, student crop v) pair with v != i. The student's first
    `num_global_crops` crops must be the teacher's crops, in the same order.

    The loss owns the teacher center `center`, a persistent buffer of shape (1, out_dim): it is saved with the
    model, which a correct resume needs. In training mode the forward pass updates it after computing the loss:
    `center <- m * center + (1 - m) * mean(teacher_logits)`, the mean taken over the global batch (all processes).

    Everything is computed in float32, also under autocast: softmax over 65536 prototypes in fp16 overflows.

    Args:
        out_dim: K, the number of prototypes (head output size).
        student_temperature: student softmax temperature, > 0.
        center_momentum: m, in [0, 1).
    """

    def __init__(self, out_dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"`out_dim` must be >= 1, got {out_dim}")
        if student_temperature <= 0:
            raise ValueError(f"`student_temperature` must be > 0, got {student_temperature}")
        if not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"`center_momentum` must be in [0, 1), got {center_momentum}")
        self.out_dim = out_dim
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim), persistent=True)
        # (sum of teacher logits, row count) of micro-batches whose center update is deferred to the optimizer
        # step (gradient accumulation); not saved: a checkpoint is taken between optimizer steps
        self.register_buffer("pending_center_statistics", torch.zeros(out_dim + 1), persistent=False)

    @property
    def max_entropy(self) -> float:
        """ln(out_dim): the entropy of the uniform distribution, where the loss sits when the model collapses."""
        return math.log(self.out_dim)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        num_global_crops: int,
        teacher_temperature: float | torch.Tensor,
        update_center: bool = True,
    ) -> torch.Tensor:
        """
        Args:
            student_logits: (num_crops * B, K), crop-major (all images of crop 0, then crop 1, ...); the first
                `num_global_crops` crops are the global ones.
            teacher_logits: (num_global_crops * B, K), crop-major, same images and order as the student's first crops.
            num_global_crops: G, the number of crops the teacher saw.
            teacher_temperature: teacher softmax temperature, > 0.
            update_center: in training mode, update the center now (True), or add this batch to the pending
                statistics that `apply_pending_center_update` turns into one update (gradient accumulation: one
                center update per optimizer step, from the whole accumulated batch, as with one large batch).

        Returns:
            The scalar loss (float32).
        """
        batch_size, num_student_crops = self._check_shapes(student_logits, teacher_logits, num_global_crops)
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            teacher_probs = self._teacher_log_probs(teacher_logits, teacher_temperature).exp().detach()
            student_log_probs = F.log_softmax(student_logits.float() / self.student_temperature, dim=-1)
            teacher_probs = teacher_probs.view(num_global_crops, batch_size, self.out_dim)
            student_log_probs = student_log_probs.view(num_student_crops, batch_size, self.out_dim)
            # cross_entropy[i, v] = batch mean of -sum_k P_t[i] log P_s[v], for all G x V pairs in one matmul
            cross_entropy = -torch.einsum("ibk,vbk->iv", teacher_probs, student_log_probs) / batch_size
            same_crop = torch.eye(num_global_crops, num_student_crops, dtype=torch.bool, device=cross_entropy.device)
            loss = cross_entropy.masked_select(~same_crop).mean()
        if self.training:
            if update_center:
                self.update_center(teacher_logits)
            else:
                self.accumulate_center_statistics(teacher_logits)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """`center <- m * center + (1 - m) * mean of teacher_logits (N, K)` over the global batch.

        Under `torch.distributed` with more than one process, the sum and the row count are all-reduced (one
        collective), so every process gets the same center even with unequal per-process batches.
        """
        self._apply_center_update(_sum_and_count(teacher_logits))

    @torch.no_grad()
    def accumulate_center_statistics(self, teacher_logits: torch.Tensor) -> None:
        """Add a micro-batch's teacher logits (N, K) to the pending center statistics (no collective)."""
        self.pending_center_statistics += _sum_and_count(teacher_logits)

    @torch.no_grad()
    def apply_pending_center_update(self) -> None:
        """One center update from all micro-batches accumulated since the last call (all processes must call
        it together); the center is unchanged when nothing was accumulated on any process."""
        self._apply_center_update(self.pending_center_statistics.clone())
        self.pending_center_statistics.zero_()

    def _apply_center_update(self, sum_and_count: torch.Tensor) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sum_and_count)
        count = sum_and_count[-1]
        batch_mean = sum_and_count[:-1] / count.clamp(min=1.0)
        new_center = self.center.float() * self.center_momentum + batch_mean * (1.0 - self.center_momentum)
        # torch.where instead of an `if` on count: no host-device synchronisation
        self.center.copy_(torch.where(count > 0, new_center, self.center.float()))

    @torch.no_grad()
    def teacher_entropy(self, teacher_logits: torch.Tensor, teacher_temperature: float | torch.Tensor) -> torch.Tensor:
        """Mean entropy (nats) of the centred, sharpened teacher distribution over (N, K) logits.

        A collapse signal: ~ln(out_dim) (`max_entropy`) when the teacher is uniform, ~0 when it is one-hot.
        """
        with torch.autocast(device_type=teacher_logits.device.type, enabled=False):
            return _mean_entropy(self._teacher_log_probs(teacher_logits, teacher_temperature))

    @torch.no_grad()
    def student_entropy(self, student_logits: torch.Tensor) -> torch.Tensor:
        """Mean entropy (nats) of the student distribution softmax(s / student_temperature) over (N, K) logits."""
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            return _mean_entropy(F.log_softmax(student_logits.float() / self.student_temperature, dim=-1))

    def _teacher_log_probs(self, teacher_logits: torch.Tensor, teacher_temperature) -> torch.Tensor:
        return F.log_softmax((teacher_logits.float() - self.center.float()) / teacher_temperature, dim=-1)

    def _check_shapes(self, student_logits, teacher_logits, num_global_crops: int) -> tuple[int, int]:
        """Returns (batch size B, number of student crops V) or raises a ValueError saying what is wrong."""
        if student_logits.ndim != 2 or teacher_logits.ndim != 2:
            raise ValueError(
                "student_logits and teacher_logits must be 2-D (crops * batch, out_dim), got shapes "
                f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
            )
        if student_logits.shape[1] != self.out_dim or teacher_logits.shape[1] != self.out_dim:
            raise ValueError(
                f"logits must have out_dim={self.out_dim} columns, got {student_logits.shape[1]} (student) "
                f"and {teacher_logits.shape[1]} (teacher)"
            )
        if num_global_crops < 1 or teacher_logits.shape[0] % num_global_crops != 0:
            raise ValueError(
                f"teacher_logits has {teacher_logits.shape[0]} rows, not a multiple of "
                f"num_global_crops={num_global_crops}"
            )
        batch_size = teacher_logits.shape[0] // num_global_crops
        if batch_size == 0 or student_logits.shape[0] % batch_size != 0:
            raise ValueError(
                f"student_logits has {student_logits.shape[0]} rows, not a multiple of the batch size {batch_size}"
            )
        num_student_crops = student_logits.shape[0] // batch_size
        # Pairs with v == i are excluded, so the student needs the global crops plus at least one more crop.
        if num_student_crops < max(num_global_crops, 2):
            raise ValueError(
                f"the student must see the {num_global_crops} global crop(s) and at least 2 crops in all, "
                f"got {num_student_crops} student crops"
            )
        return batch_size, num_student_crops


def _sum_and_count(teacher_logits: torch.Tensor) -> torch.Tensor:
    """(K + 1,) float32: the column sums of (N, K) logits, then N."""
    logits = teacher_logits.detach().float()
    return torch.cat([logits.sum(dim=0), logits.new_tensor([logits.shape[0]])])


def _mean_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()
