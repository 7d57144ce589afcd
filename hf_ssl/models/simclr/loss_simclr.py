"""The NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020
(arXiv:2002.05709), Eq. (1) and Algorithm 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_with_grad_and_offset


class NTXentOutput(NamedTuple):
    """`NTXentLoss.forward_with_statistics`: the loss and detached monitors, all float32 scalars."""

    loss: torch.Tensor
    # mean cosine similarity of the two projections of each image (-> 1 as the views align)
    positive_similarity: torch.Tensor
    # mean cosine similarity between projections of different images, over all global negatives of the local rows
    negative_similarity: torch.Tensor
    # fraction of local rows whose positive has the highest logit among all global candidates
    accuracy: torch.Tensor


class NTXentLoss(nn.Module):
    r"""NT-Xent over the two views of each image, with negatives from the global batch.

    Projections are L2-normalised and compared by cosine similarity, `s(i, j) = z_i . z_j / temperature`.
    Each of the 2B local rows `i` (view a then view b of every local image) is a (2N - 1)-way classification over
    every other row of the global batch (all processes, N images in all): its target is the other view of the same
    image, every other view is a negative, and `i` itself is masked out of the softmax:

        `loss_i = -log( exp(s(i, pos(i))) / sum_{j != i} exp(s(i, j)) )`

    The loss is the mean of `loss_i` over the local rows. The normalised projections are gathered with
    `all_gather_with_grad`, so the negatives of other processes send gradients back to where they were computed:
    with DistributedDataParallel averaging gradients, W processes of batch B give the same gradients, and on
    average the same loss, as one process of batch W * B. Every process must call the loss (and backward through
    it) at every step, as for any collective.

    Everything is computed in float32, also under autocast or for bf16 / fp16 inputs: logits scaled by
    1 / temperature lose most of their precision in half precision.

    Args:
        temperature: softmax temperature, > 0 (SimCLR: 0.1 on ImageNet, 0.5 on CIFAR-10).
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, projections_a: torch.Tensor, projections_b: torch.Tensor) -> torch.Tensor:
        """
        Args:
            projections_a: (B, P), the projections of the first view of each image.
            projections_b: (B, P), the projections of the second view, row i the same image as row i of a.

        Returns:
            The scalar loss (float32).
        """
        return self.forward_with_statistics(projections_a, projections_b).loss

    def forward_with_statistics(self, projections_a: torch.Tensor, projections_b: torch.Tensor) -> NTXentOutput:
        """The loss (as `forward`) and, computed from the same similarities, detached monitors (`NTXentOutput`)."""
        self._check_shapes(projections_a, projections_b)
        batch_size = projections_a.shape[0]
        with torch.autocast(device_type=projections_a.device.type, enabled=False):
            local = F.normalize(torch.cat([projections_a, projections_b]).float(), dim=-1)  # (2B, P), view-major
            candidates, offset = all_gather_with_grad_and_offset(local)  # (2N, P), this process's rows at offset
            similarity = local @ candidates.T  # (2B, 2N) cosine similarities
            rows = torch.arange(2 * batch_size, device=local.device)
            columns = torch.arange(candidates.shape[0], device=local.device)
            is_self = columns[None, :] == (offset + rows)[:, None]
            positive_index = offset + (rows + batch_size) % (2 * batch_size)
            logits = (similarity / self.temperature).masked_fill(is_self, float("-inf"))
            if batch_size == 0:
                # a process without images still takes part in the gather's backward
                loss = similarity.sum() * 0.0
            else:
                loss = F.cross_entropy(logits, positive_index)

            with torch.no_grad():
                # a process without images, or a global batch of one image (no negatives: its loss is exactly 0),
                # reports 0 for what it cannot measure instead of the NaN of an empty mean
                is_positive = columns[None, :] == positive_index[:, None]
                positives = similarity.masked_select(is_positive)
                negatives = similarity.masked_select(~(is_self | is_positive))
                zero = similarity.new_zeros(())
                positive_similarity = positives.mean() if positives.numel() else zero
                negative_similarity = negatives.mean() if negatives.numel() else zero
                accuracy = (logits.argmax(dim=1) == positive_index).float().mean() if batch_size else zero
        return NTXentOutput(loss, positive_similarity, negative_similarity, accuracy)

    @staticmethod
    def _check_shapes(projections_a: torch.Tensor, projections_b: torch.Tensor) -> None:
        if projections_a.ndim != 2 or projections_a.shape != projections_b.shape:
            raise ValueError(
                "projections_a and projections_b must both be (batch, projection_dim) with the same shape, got "
                f"{tuple(projections_a.shape)} and {tuple(projections_b.shape)}"
            )
