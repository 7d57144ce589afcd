"""The VICReg loss: invariance, variance and covariance terms over the expanded embeddings of two views.

Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning",
ICLR 2022 (arXiv:2105.04906), Eqs. (1)-(6); the weights and epsilon of the official code (facebookresearch/vicreg).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_with_grad


class VicRegOutput(NamedTuple):
    """`VicRegLoss.forward_with_statistics`: the weighted loss and its three terms (unweighted, detached), all
    float32 scalars."""

    loss: torch.Tensor
    # mean squared difference between the embeddings of the two views of each image (-> 0 as the views agree)
    invariance: torch.Tensor
    # mean hinge max(0, 1 - std) over the dimensions, averaged over the two views (1: every dimension collapsed)
    variance: torch.Tensor
    # sum of the squared off-diagonal covariances / D, for each view, summed (0: decorrelated dimensions)
    covariance: torch.Tensor


def variance_term(embeddings: torch.Tensor, epsilon: float) -> torch.Tensor:
    """`mean_j max(0, 1 - sqrt(Var(z_j) + epsilon))` with the unbiased variance over the N rows.

    Args:
        embeddings: (N, D), N >= 2.

    Returns:
        A scalar in [0, 1].
    """
    std = torch.sqrt(embeddings.var(dim=0) + epsilon)
    return F.relu(1.0 - std).mean()


def covariance_term(embeddings: torch.Tensor) -> torch.Tensor:
    """`sum_{i != j} C_ij^2 / D` where C is the (D, D) covariance matrix of the N rows (centred, divided by N - 1).

    Args:
        embeddings: (N, D), N >= 2.

    Returns:
        A scalar >= 0.
    """
    num_rows, dim = embeddings.shape
    centred = embeddings - embeddings.mean(dim=0)
    covariance = centred.T @ centred / (num_rows - 1)
    return off_diagonal(covariance).pow(2).sum() / dim


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The D * (D - 1) off-diagonal entries of a (D, D) matrix, as a (D - 1, D) view (no copy of a D x D matrix).

    Flattened row by row, the diagonal entries sit every D + 1 elements, starting at 0. Dropping the last element
    (the last diagonal entry) leaves (D - 1) * (D + 1) elements; as rows of D + 1, each row starts with a diagonal
    entry followed by D off-diagonal ones.
    """
    dim = matrix.shape[0]
    return matrix.flatten()[:-1].view(dim - 1, dim + 1)[:, 1:]


class VicRegLoss(nn.Module):
    r"""VICReg over the expanded embeddings of the two views of each image, with every statistic over the global
    batch (all processes, N images in all):

        `loss = invariance_weight * MSE(Z_a, Z_b)
               + variance_weight * (v(Z_a) + v(Z_b)) / 2
               + covariance_weight * (c(Z_a) + c(Z_b))`

    with `v` = `variance_term` and `c` = `covariance_term` over the N rows (centred on the global mean, divided by
    N - 1). The embeddings of every process are gathered once, with `all_gather_with_grad`, so that every process
    computes the same global loss and gradients flow back to the rows where they were computed: with
    DistributedDataParallel averaging gradients, W processes of any batch sizes give exactly the loss and gradients
    of one process holding all of their images. The official code gathers as well, but takes the invariance over
    the local rows only, which is exact only when every process holds as many images. Every process must call the
    loss (and backward through it) at every step, as for any collective.

    A global batch of fewer than 2 images has no variance: the loss is then a zero that still backpropagates
    through the gather. Everything is computed in float32, also under autocast or for bf16 / fp16 inputs.

    Args:
        invariance_weight, variance_weight, covariance_weight: the weights of the three terms (official: 25, 25, 1).
        variance_epsilon: added to the variance before its square root (official: 1e-4).
    """

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        variance_epsilon: float = 1e-4,
    ):
        super().__init__()
        if not variance_epsilon > 0:
            raise ValueError(f"`variance_epsilon` must be > 0, got {variance_epsilon}")
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.variance_epsilon = variance_epsilon

    def forward(self, embeddings_a: torch.Tensor, embeddings_b: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings_a: (B, D), the expanded embeddings of the first view of each image.
            embeddings_b: (B, D), those of the second view, row i the same image as row i of a.

        Returns:
            The scalar loss (float32), the same on every process.
        """
        return self.forward_with_statistics(embeddings_a, embeddings_b).loss

    def forward_with_statistics(self, embeddings_a: torch.Tensor, embeddings_b: torch.Tensor) -> VicRegOutput:
        """The loss (as `forward`) and its three unweighted terms, detached (`VicRegOutput`)."""
        if embeddings_a.ndim != 2 or embeddings_a.shape != embeddings_b.shape:
            raise ValueError(
                "embeddings_a and embeddings_b must both be (batch, dim) with the same shape, got "
                f"{tuple(embeddings_a.shape)} and {tuple(embeddings_b.shape)}"
            )
        dim = embeddings_a.shape[1]
        with torch.autocast(device_type=embeddings_a.device.type, enabled=False):
            # both views in one gather: one collective forward and one backward, in the same order everywhere
            gathered = all_gather_with_grad(torch.cat([embeddings_a, embeddings_b], dim=1).float())  # (N, 2D)
            if gathered.shape[0] < 2:
                zero = gathered.sum() * 0.0
                return VicRegOutput(zero, zero.detach(), zero.detach(), zero.detach())
            global_a, global_b = gathered[:, :dim], gathered[:, dim:]
            invariance = F.mse_loss(global_a, global_b)
            epsilon = self.variance_epsilon
            variance = (variance_term(global_a, epsilon) + variance_term(global_b, epsilon)) / 2
            covariance = covariance_term(global_a) + covariance_term(global_b)
            loss = (
                self.invariance_weight * invariance
                + self.variance_weight * variance
                + self.covariance_weight * covariance
            )
        return VicRegOutput(loss, invariance.detach(), variance.detach(), covariance.detach())
