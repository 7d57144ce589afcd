"""The I-JEPA regression loss between predicted and target patch representations.

Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture", CVPR 2023
(arXiv:2301.08243), Eq. (1); facebookresearch/ijepa `src/train.py` (`loss_fn`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_ijepa import LOSS_TYPES


class IJepaLoss(nn.Module):
    r"""Distance between the predictor's outputs and the target encoder's representations of the target patches,
    averaged over every element.

    - `"smooth_l1"` (the official code): `F.smooth_l1_loss(predictions, targets)`, beta 1, mean reduction:
      `0.5 x^2` where `|x| < 1`, `|x| - 0.5` elsewhere, for `x = prediction - target`.
    - `"mse"`: `F.mse_loss`, mean reduction: the paper's squared L2 distance summed over the patches of each target
      block and averaged over blocks, divided by the constant K * D.

    The mean over all elements gives every target patch the same weight, whatever its block, as the official code.
    Computed in float32, also under autocast or for bf16 / fp16 inputs.

    Args:
        loss_type: `"smooth_l1"` or `"mse"`.
    """

    def __init__(self, loss_type: str = "smooth_l1"):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}")
        self.loss_type = loss_type

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Args:
            predictions: (N, K, D), the predictor's output for the K patches of each of N target blocks
                (N = num_targets * B, block-major).
            targets: (N, K, D), the target representations of the same patches, in the same order (no gradient
                is needed; the loss does not detach them).

        Returns:
            The scalar loss (float32).
        """
        if predictions.ndim != 3 or predictions.shape != targets.shape:
            raise ValueError(
                "predictions and targets must both be (num_blocks, tokens_per_block, hidden_size) with the same "
                f"shape, got {tuple(predictions.shape)} and {tuple(targets.shape)}"
            )
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            predictions, targets = predictions.float(), targets.float()
            if self.loss_type == "smooth_l1":
                return F.smooth_l1_loss(predictions, targets, beta=1.0)
            return F.mse_loss(predictions, targets)

    def extra_repr(self) -> str:
        return f"loss_type={self.loss_type!r}"
