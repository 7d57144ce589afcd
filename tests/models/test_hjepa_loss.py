"""H-JEPA's window pooling and per-level distances against hand-computed values."""

import math

import pytest
import torch

from hf_ssl import HJepaLoss
from hf_ssl.models.hjepa import contrastive_distance, pool_windows

# a 3 x 5 block, channel 0 the patch index k (row-major), channel 1 its square
#   0  1  2  3  4
#   5  6  7  8  9
#  10 11 12 13 14
BLOCK = torch.stack([torch.arange(15.0), torch.arange(15.0) ** 2], dim=-1)[None]  # (1, 15, 2)


def test_pool_2_on_a_3x5_block_averages_what_each_window_has():
    pooled = pool_windows(torch.cat([BLOCK, -BLOCK]), (3, 5), 2)  # two blocks: each is pooled on its own
    # 2 x 3 windows: {0,1,5,6} {2,3,7,8} {4,9} / {10,11} {12,13} {14}
    expected = torch.tensor(
        [
            [3.0, (0 + 1 + 25 + 36) / 4],
            [5.0, (4 + 9 + 49 + 64) / 4],
            [6.5, (16 + 81) / 2],
            [10.5, (100 + 121) / 2],
            [12.5, (144 + 169) / 2],
            [14.0, 196.0],
        ]
    )
    assert pooled.shape == (2, 6, 2)
    torch.testing.assert_close(pooled[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled[1], -expected, rtol=0, atol=1e-5)


def test_pool_larger_than_the_block_covers_what_is_left():
    # pool 4: one row of two windows, columns 0-3 of all 3 rows, then column 4
    torch.testing.assert_close(pool_windows(BLOCK, (3, 5), 4)[0, :, 0], torch.tensor([78 / 12, 9.0]))
    # pool 8 > both sides: one window, the whole block
    torch.testing.assert_close(pool_windows(BLOCK, (3, 5), 8)[0, :, 0], torch.tensor([7.0]))
    assert pool_windows(BLOCK, (3, 5), 1) is BLOCK


def test_pooling_a_5x3_block_reads_it_row_major():
    # the same 15 indices as a 5 x 3 block: rows {0,1,2} {3,4,5} ...; pool 2 -> 3 x 2 windows
    pooled = pool_windows(BLOCK, (5, 3), 2)[0, :, 0]
    torch.testing.assert_close(pooled, torch.tensor([2.0, 3.5, 8.0, 9.5, 12.5, 14.0]))


# --- distances -----------------------------------------------------------------------------------------------------


def test_contrastive_distance_on_three_vectors_by_hand():
    # normalised: p = (1, 0), (0, 1), (1, 1)/sqrt 2; t = (1, 0), (0, 1), (-1, 0); temperature 0.5
    predictions = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])
    root = math.sqrt(2)
    row_losses = [
        math.log(math.exp(2) + 1 + math.exp(-2)) - 2,  # logits (2, 0, -2), positive 0
        math.log(1 + math.exp(2) + 1) - 2,  # logits (0, 2, 0), positive 1
        math.log(2 * math.exp(root) + math.exp(-root)) + root,  # logits (r, r, -r), positive 2
    ]
    loss = contrastive_distance(predictions, targets, temperature=0.5)
    assert loss.item() == pytest.approx(sum(row_losses) / 3, rel=1e-6)
    # the module flattens (N, M, D) blocks of windows into the N * M rows
    module = HJepaLoss("contrastive", contrastive_temperature=0.5)
    for shape in ((1, 3, 2), (3, 1, 2)):
        module_loss = module(predictions.reshape(shape), targets.reshape(shape))
        assert module_loss.item() == pytest.approx(sum(row_losses) / 3, rel=1e-6)


def test_contrastive_gradient_reaches_the_predictions_only_through_their_direction():
    predictions = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])
    contrastive_distance(predictions, targets, 0.5).backward()
    # the loss depends on each prediction's direction only: its gradient is orthogonal to it
    torch.testing.assert_close((predictions.grad * predictions.detach()).sum(-1), torch.zeros(3), rtol=0, atol=1e-6)
    assert predictions.grad.abs().sum() > 0


# differences prediction - target: 0, 0.5, -0.5, 2, -3, 1 over (N=2 blocks, M=1 window, D=3)
PREDICTIONS = torch.tensor([[[1.0, 0.5, -0.5]], [[2.0, -1.0, 4.0]]])
TARGETS = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 2.0, 3.0]]])


def test_regression_distances_by_hand_and_multiscale_is_mse():
    mse = (0.0 + 0.25 + 0.25 + 4.0 + 9.0 + 1.0) / 6
    smooth_l1 = (0.0 + 0.125 + 0.125 + 1.5 + 2.5 + 0.5) / 6
    assert HJepaLoss("mse")(PREDICTIONS, TARGETS).item() == pytest.approx(mse, abs=1e-7)
    assert HJepaLoss("multiscale")(PREDICTIONS, TARGETS).item() == pytest.approx(mse, abs=1e-7)
    assert HJepaLoss("smooth_l1")(PREDICTIONS, TARGETS).item() == pytest.approx(smooth_l1, abs=1e-7)
    loss = HJepaLoss("contrastive")(PREDICTIONS.bfloat16(), TARGETS.bfloat16())
    assert loss.dtype == torch.float32


def test_loss_errors():
    with pytest.raises(ValueError, match="`loss_type`"):
        HJepaLoss("l1")
    with pytest.raises(ValueError, match="`contrastive_temperature`"):
        HJepaLoss("contrastive", contrastive_temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        HJepaLoss()(PREDICTIONS, TARGETS[:1])
