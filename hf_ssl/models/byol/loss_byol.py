"""The BYOL loss: the normalised mean squared error between the online prediction of one view and the target
projection of the other, symmetrised over the two views.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020
(arXiv:2006.07733), Eq. (2) and the symmetrisation that follows it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalized_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Row by row ``|| p / ||p|| - t / ||t|| ||^2 = 2 - 2 cos(p, t)``, in [0, 4].

    Args:
        predictions, targets: (B, P).

    Returns:
        (B,) float32.
    """
    cosine = (F.normalize(predictions.float(), dim=-1) * F.normalize(targets.float(), dim=-1)).sum(dim=-1)
    return 2.0 - 2.0 * cosine


class ByolLoss(nn.Module):
    r"""Symmetrised BYOL loss over the two views of each image:

        `loss = mean_i [ (2 - 2 cos(q_a(i), z'_b(i))) + (2 - 2 cos(q_b(i), z'_a(i))) ] / 2`

    where `q_v` is the online network's prediction of view v and `z'_v` the target network's projection of view v.
    The targets are detached here: the target network learns only through the EMA. The mean is over this
    process's images (no collective: with DistributedDataParallel averaging gradients, W processes of batch B train
    as one of batch W * B, BatchNorm statistics aside).

    Computed in float32, also under autocast or for bf16 / fp16 inputs.
    """

    def forward(
        self,
        predictions_a: torch.Tensor,
        predictions_b: torch.Tensor,
        targets_a: torch.Tensor,
        targets_b: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            predictions_a, predictions_b: (B, P), the online predictions of the first and second view of each image.
            targets_a, targets_b: (B, P), the target projections of the same views, row i the same image.

        Returns:
            The scalar loss (float32), in [0, 4].
        """
        shapes = {tuple(tensor.shape) for tensor in (predictions_a, predictions_b, targets_a, targets_b)}
        if len(shapes) != 1 or predictions_a.ndim != 2:
            raise ValueError(
                "predictions and targets must all be (batch, projection_dim) with the same shape, got "
                f"{[tuple(tensor.shape) for tensor in (predictions_a, predictions_b, targets_a, targets_b)]}"
            )
        with torch.autocast(device_type=predictions_a.device.type, enabled=False):
            a_to_b = normalized_mse(predictions_a, targets_b.detach())
            b_to_a = normalized_mse(predictions_b, targets_a.detach())
            return (a_to_b.mean() + b_to_a.mean()) / 2
