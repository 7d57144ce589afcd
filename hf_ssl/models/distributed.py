"""Collectives with gradients, for losses that compare every sample with the whole global batch (SimCLR, VICReg).

``torch.distributed.all_gather`` returns tensors without a gradient path: a loss over gathered samples would then
train each process only through its own samples' terms. ``all_gather_with_grad`` sends back, to each process, the
sum over processes of the gradients with respect to its own rows, so that with DistributedDataParallel (which
averages gradients) W processes of batch B train exactly as one process of batch W * B.

Processes may hold different numbers of rows (a batch whose unreadable images were dropped): the row counts are
gathered first (one small collective, which waits for the device), rows are padded to the largest count for the
gather and trimmed after it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of every process concatenated along dim 0, in rank order, with a gradient-correct backward.

    Args:
        tensor: (N_r, ...) on this process; every process must call this together, with the same trailing shape
            and dtype (N_r may differ, and may be 0).

    Returns:
        (sum_r N_r, ...). ``tensor`` itself when ``torch.distributed`` is not initialised or has one process.
    """
    return all_gather_with_grad_and_offset(tensor)[0]


def all_gather_with_grad_and_offset(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``all_gather_with_grad(tensor)`` and where this process's rows start in it (``sum of N_r`` over lower ranks).

    The rows ``offset : offset + tensor.shape[0]`` of the result are this process's ``tensor``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    local_count = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    counts = [torch.empty_like(local_count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, local_count)
    row_counts = torch.cat(counts).tolist()
    gathered = _AllGatherWithGrad.apply(tensor, row_counts)
    return gathered, sum(row_counts[: dist.get_rank()])


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all-gather (padded to the largest row count). Backward: each process's gradient with respect to
    the whole gathered tensor is summed over processes (all-reduce) and this process keeps its own rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, row_counts: list[int]) -> torch.Tensor:
        ctx.row_counts, ctx.rank = row_counts, dist.get_rank()
        max_rows = max(row_counts)
        local = tensor.contiguous()
        if local.shape[0] < max_rows:  # the gather needs the same shape everywhere
            local = torch.cat([local, local.new_zeros((max_rows - local.shape[0], *local.shape[1:]))])
        padded = [torch.empty_like(local) for _ in row_counts]
        dist.all_gather(padded, local)
        return torch.cat([rows[:count] for rows, count in zip(padded, row_counts)])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # every process holds the same (sum_r N_r, ...) gradient shape, so a plain all-reduce lines up
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.row_counts[: ctx.rank])
        return grad[start : start + ctx.row_counts[ctx.rank]], None
