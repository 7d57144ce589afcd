"""IJepaLoss against hand-computed values."""

import pytest
import torch

from hf_ssl import IJepaLoss

# differences prediction - target: 0, 0.5, -0.5, 2, -3, 1 over (N=2 blocks, K=1 patch, D=3 features)
PREDICTIONS = torch.tensor([[[1.0, 0.5, -0.5]], [[2.0, -1.0, 4.0]]])
TARGETS = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 2.0, 3.0]]])


def test_smooth_l1_is_half_square_below_one_and_linear_above():
    # 0.5 x^2 for |x| < 1, |x| - 0.5 otherwise: 0, 0.125, 0.125, 1.5, 2.5, 0.5; mean over the 6 elements
    expected = (0.0 + 0.125 + 0.125 + 1.5 + 2.5 + 0.5) / 6
    loss = IJepaLoss("smooth_l1")(PREDICTIONS, TARGETS)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_mse_is_the_mean_squared_difference():
    expected = (0.0 + 0.25 + 0.25 + 4.0 + 9.0 + 1.0) / 6
    assert IJepaLoss("mse")(PREDICTIONS, TARGETS).item() == pytest.approx(expected, abs=1e-7)


def test_default_is_smooth_l1_and_identical_inputs_give_zero():
    assert IJepaLoss().loss_type == "smooth_l1"
    assert IJepaLoss()(PREDICTIONS, PREDICTIONS.clone()).item() == 0.0


def test_half_precision_inputs_are_computed_in_float32():
    loss = IJepaLoss("mse")(PREDICTIONS.bfloat16(), TARGETS.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(
        (0.25 + 0.25 + 4.0 + 9.0 + 1.0) / 6, abs=1e-6
    )  # these values are exact in bf16


def test_gradient_flows_to_the_predictions():
    predictions = PREDICTIONS.clone().requires_grad_(True)
    IJepaLoss("smooth_l1")(predictions, TARGETS).backward()
    # d/dx of the smooth L1: x for |x| < 1, sign(x) otherwise; / 6 for the mean
    expected = torch.tensor([[[0.0, 0.5, -0.5]], [[1.0, -1.0, 1.0]]]) / 6
    torch.testing.assert_close(predictions.grad, expected)


def test_shape_and_loss_type_errors():
    with pytest.raises(ValueError, match="same shape"):
        IJepaLoss()(PREDICTIONS, TARGETS[:1])
    with pytest.raises(ValueError, match="num_blocks, tokens_per_block, hidden_size"):
        IJepaLoss()(PREDICTIONS.flatten(0, 1), TARGETS.flatten(0, 1))
    with pytest.raises(ValueError, match="`loss_type`"):
        IJepaLoss("l1")
