"""ByolLoss and normalized_mse against hand-computed values and their invariances."""

import math

import pytest
import torch

from hf_ssl import ByolLoss
from hf_ssl.models.byol import normalized_mse


def test_normalized_mse_is_two_minus_twice_the_cosine():
    predictions = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, -5.0], [-2.0, 2.0]])
    # cosines 0.6 (3-4-5 triangle), -1 (opposite), 0 (orthogonal)
    torch.testing.assert_close(normalized_mse(predictions, targets), torch.tensor([0.8, 4.0, 2.0]))


def test_loss_equals_hand_computed_two_image_case():
    predictions_a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    predictions_b = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    targets_a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    targets_b = torch.tensor([[1.0, 0.0], [0.0, -5.0]])
    # view a predicts view b's targets: cos((3,4),(1,0)) = 0.6 -> 0.8; cos((1,0),(0,-5)) = 0 -> 2
    a_to_b = (0.8 + 2.0) / 2
    # view b predicts view a's targets: cos((0,1),(1,0)) = 0 -> 2; cos((1,1),(0,3)) = 1/sqrt(2) -> 2 - sqrt(2)
    b_to_a = (2.0 + (2.0 - math.sqrt(2.0))) / 2
    expected = (a_to_b + b_to_a) / 2  # 1.3464...

    loss = ByolLoss()(predictions_a, predictions_b, targets_a, targets_b)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # each view predicting its own target would give (1.4 + (2 + 2 + sqrt(2)) / 2) / 2 = 2.05...
    same_view = ByolLoss()(predictions_a, predictions_b, targets_b, targets_a)
    assert same_view.item() == pytest.approx((1.4 + (4.0 + math.sqrt(2.0)) / 2) / 2, rel=1e-6)
    assert abs(same_view.item() - expected) > 0.5


def test_loss_is_scale_invariant_and_bounded():
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, 8, generator=generator) for _ in range(4)]
    loss = ByolLoss()(*tensors)
    scaled = ByolLoss()(tensors[0] * 10, tensors[1] * 0.1, tensors[2] * 3, tensors[3])
    torch.testing.assert_close(scaled, loss)
    assert 0.0 <= loss.item() <= 4.0
    # predictions equal to the other view's targets: the minimum 0
    assert ByolLoss()(tensors[3], tensors[2], tensors[2], tensors[3]).item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_the_predictions_only():
    predictions_a, predictions_b = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    targets_a, targets_b = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    ByolLoss()(predictions_a, predictions_b, targets_a, targets_b).backward()
    assert predictions_a.grad.abs().sum() > 0 and predictions_b.grad.abs().sum() > 0
    assert targets_a.grad is None and targets_b.grad is None


def test_loss_is_float32_for_bf16_inputs_and_rejects_bad_shapes():
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, 16, generator=generator).bfloat16() for _ in range(4)]
    loss = ByolLoss()(*tensors)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ByolLoss()(*[tensor.float() for tensor in tensors]), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="same shape"):
        ByolLoss()(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), torch.randn(3, 3))
