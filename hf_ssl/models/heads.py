"""The MLP of every method's own head, built in one place: SimCLR's projection head, BYOL's projector and
predictor, VICReg's expander and the MLP in front of DINO's bottleneck are all Linear -> [BatchNorm] ->
activation ... -> Linear, and differ only in widths, BatchNorm, biases and activation (as lightly builds its heads
from one `ProjectionHead`).

Checkpoints load by parameter name and seeded runs replay by creation order, so the layout is fixed: the layers
are created in the order they run and numbered as they run in one `nn.Sequential`. With BatchNorm and ReLU, a
3-width MLP is `0` Linear, `1` BatchNorm1d, `2` ReLU, `3` Linear; without BatchNorm, `0` Linear, `1` ReLU,
`2` Linear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def build_mlp(
    widths: Sequence[int],
    *,
    batch_norm: bool = True,
    activation: Callable[[], nn.Module] = nn.ReLU,
    hidden_bias: bool | None = None,
    output_bias: bool = True,
) -> nn.Sequential:
    """A linear layer from each width to the next; each but the last followed by BatchNorm1d (with `batch_norm`)
    and then the activation. The last layer has neither.

    Args:
        widths: `[in_dim, *hidden_dims, out_dim]`, at least two sizes: `len(widths) - 1` linear layers.
        batch_norm: a BatchNorm1d after each hidden linear layer.
        activation: makes the module after each hidden layer (and its BatchNorm): `nn.ReLU`, `nn.GELU`...
        hidden_bias: whether the hidden linear layers have a bias. `None`: only without `batch_norm`, whose shift
            would cancel a bias.
        output_bias: whether the last linear layer has a bias.

    Returns:
        The `nn.Sequential`, (N, widths[0]) -> (N, widths[-1]). Linear layers have PyTorch's default init, drawn
        from the global generator in layer order.
    """
    if len(widths) < 2:
        raise ValueError(f"an MLP needs at least an input and an output width, got widths={list(widths)}")
    if hidden_bias is None:
        hidden_bias = not batch_norm
    layers: list[nn.Module] = []
    last = len(widths) - 2
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(width_in, width_out, bias=output_bias if index == last else hidden_bias))
        if index < last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(width_out))
            layers.append(activation())
    return nn.Sequential(*layers)


class MlpHead(nn.Module):
    """`build_mlp(widths, **options)` as a module of its own, under `mlp.` (so a head's tensors are
    `<head>.mlp.<layer index>.*`). Input (N, widths[0]) -> output (N, widths[-1])."""

    def __init__(self, widths: Sequence[int], **options):
        super().__init__()
        self.mlp = build_mlp(widths, **options)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.mlp(inputs)
