"""The per-level distances of H-JEPA between pooled predictions and pooled targets.

H-JEPA is hf_ssl's own definition (see `hf_ssl.models.hjepa.modeling_hjepa`). The regression distances are I-JEPA's
(Assran et al., 2023, arXiv:2301.08243; `hf_ssl.models.ijepa.IJepaLoss`); the contrastive one is InfoNCE
(van den Oord et al., 2018, arXiv:1807.03748) with the target of the same window as the positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_hjepa import LOSS_TYPES


def contrastive_distance(predictions: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""InfoNCE of each prediction against every target.

    Both sides are L2-normalised; `logits[i, k] = <p_i, t_k> / temperature`; the loss is the cross-entropy of row i
    with class i, averaged over the rows: `mean_i [log sum_k exp(logits[i, k]) - logits[i, i]]`. Target i is the
    positive of prediction i, every other target a negative (a target equal to the positive, as where two target
    blocks overlap, is still a negative). Memory grows as M^2.

    Args:
        predictions: (M, D) float.
        targets: (M, D) float, row i the positive of prediction i.
        temperature: > 0.

    Returns:
        The scalar loss, in the dtype of the inputs.
    """
    predictions = F.normalize(predictions, dim=-1)
    targets = F.normalize(targets, dim=-1)
    logits = predictions @ targets.T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


class HJepaLoss(nn.Module):
    r"""The distance of one level between its pooled predictions and pooled targets.

    - `"smooth_l1"`: `F.smooth_l1_loss`, beta 1, mean over every element (I-JEPA's official loss).
    - `"mse"`: `F.mse_loss`, mean over every element.
    - `"multiscale"`: the `"mse"` distance; what makes it multi-scale is that the levels pool over different window
      sizes (`HJepaConfig` refuses it otherwise), each level's distance then weighted in the total.
    - `"contrastive"`: `contrastive_distance` over the N * M pooled vectors of the level in the micro-batch (no
      gathering across processes), temperature `contrastive_temperature`.

    Computed in float32, also under autocast or for bf16 / fp16 inputs.

    Args:
        loss_type: one of `LOSS_TYPES`.
        contrastive_temperature: > 0, used by `"contrastive"` only.
    """

    def __init__(self, loss_type: str = "smooth_l1", contrastive_temperature: float = 0.1):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}")
        if not contrastive_temperature > 0:
            raise ValueError(f"`contrastive_temperature` must be > 0, got {contrastive_temperature!r}")
        self.loss_type = loss_type
        self.contrastive_temperature = float(contrastive_temperature)

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Args:
            predictions: (N, M, D), the pooled predictions of the M windows of each of N target blocks
                (N = num_targets * B, block-major).
            targets: (N, M, D), the pooled targets of the same windows, in the same order (the loss does not detach
                them).

        Returns:
            The scalar loss of the level (float32).
        """
        if predictions.ndim != 3 or predictions.shape != targets.shape:
            raise ValueError(
                "predictions and targets must both be (num_blocks, windows_per_block, hidden_size) with the same "
                f"shape, got {tuple(predictions.shape)} and {tuple(targets.shape)}"
            )
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            predictions, targets = predictions.float(), targets.float()
            if self.loss_type == "smooth_l1":
                return F.smooth_l1_loss(predictions, targets, beta=1.0)
            if self.loss_type in ("mse", "multiscale"):
                return F.mse_loss(predictions, targets)
            return contrastive_distance(predictions.flatten(0, 1), targets.flatten(0, 1), self.contrastive_temperature)

    def extra_repr(self) -> str:
        if self.loss_type == "contrastive":
            return f"loss_type={self.loss_type!r}, contrastive_temperature={self.contrastive_temperature}"
        return f"loss_type={self.loss_type!r}"
