"""VicRegLoss against hand-computed values and its invariances, alone and across processes (2 gloo processes of any
split of the batch give the loss and gradients of 1 process holding every image)."""

import math

import pytest
import torch
import torch.multiprocessing as mp

from hf_ssl import VicRegLoss
from hf_ssl.models.vicreg import covariance_term, off_diagonal, variance_term
from tests.helpers import free_port
from tests.models import vicreg_gather_worker as worker

# 3 images, D = 2; both views already centred (column means 0)
VIEW_A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
VIEW_B = torch.tensor([[0.5, 0.0], [0.0, 0.0], [-0.5, 0.0]])


def test_terms_equal_hand_computed_three_image_case():
    # invariance: squared differences (0.5, 0), (0, 1), (-0.5, -1) -> 0.25 + 1 + 1.25 = 2.5 over 3 x 2 entries
    invariance = 2.5 / 6
    # variance, unbiased (N - 1 = 2): view a: (1 + 0 + 1) / 2 = 1 in both dims -> std sqrt(1.0001) > 1 -> hinge 0;
    # view b: dim 0 (0.25 + 0 + 0.25) / 2 = 0.25 -> std sqrt(0.2501); dim 1 all zero -> std sqrt(1e-4) = 0.01
    variance_b = ((1 - math.sqrt(0.2501)) + (1 - 0.01)) / 2
    variance = (0.0 + variance_b) / 2
    # covariance: view a: C01 = (1*0 + 0*1 + (-1)(-1)) / 2 = 0.5, twice off the diagonal -> 2 * 0.25 / D = 0.25;
    # view b: dim 1 is constant -> 0
    covariance = 0.25
    expected = 25 * invariance + 25 * variance + 1 * covariance  # 19.9785...

    output = VicRegLoss().forward_with_statistics(VIEW_A, VIEW_B)
    assert output.invariance.item() == pytest.approx(invariance, rel=1e-6)
    assert output.variance.item() == pytest.approx(variance, rel=1e-6)
    assert output.covariance.item() == pytest.approx(covariance, rel=1e-6)
    assert output.loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(19.978541729, rel=1e-9)
    # statistics divided by N instead of N - 1 would give a clearly different loss: stds sqrt(2/3) in view a and
    # sqrt(1/6) in view b's dim 0, C01 = 1/3 in view a
    biased_a = 1 - math.sqrt(2 / 3 + 1e-4)
    biased_b = ((1 - math.sqrt(0.5 / 3 + 1e-4)) + (1 - 0.01)) / 2
    biased = 25 * invariance + 25 * (biased_a + biased_b) / 2 + 2 * (1 / 3) ** 2 / 2
    assert abs(biased - output.loss.item()) > 1.0


def test_weights_and_epsilon_are_applied():
    output = VicRegLoss(
        invariance_weight=2.0, variance_weight=3.0, covariance_weight=5.0, variance_epsilon=0.01
    ).forward_with_statistics(VIEW_A, VIEW_B)
    # view b: std sqrt(0.26) in dim 0, sqrt(0.01) = 0.1 in dim 1; view a: sqrt(1.01) > 1 -> 0
    variance = (((1 - math.sqrt(0.26)) + (1 - 0.1)) / 2) / 2
    assert output.variance.item() == pytest.approx(variance, rel=1e-6)
    assert output.loss.item() == pytest.approx(2.0 * 2.5 / 6 + 3.0 * variance + 5.0 * 0.25, rel=1e-6)


def test_statistics_are_centred_on_the_batch_mean():
    # a shift of every embedding changes neither the variance nor the covariance: C01 = 0.5 -> 0.25, whatever the mean
    shifted = VIEW_A + torch.tensor([10.0, -3.0])
    assert covariance_term(shifted).item() == pytest.approx(0.25, rel=1e-5)
    assert variance_term(shifted, 1e-4).item() == pytest.approx(variance_term(VIEW_A, 1e-4).item(), abs=1e-6)
    # the same shift of both views leaves the whole loss unchanged
    torch.testing.assert_close(
        VicRegLoss()(shifted, VIEW_B + torch.tensor([10.0, -3.0])), VicRegLoss()(VIEW_A, VIEW_B)
    )


def test_off_diagonal_takes_every_entry_but_the_diagonal():
    matrix = torch.arange(16.0).view(4, 4)
    expected = sorted(value for index, value in enumerate(matrix.flatten().tolist()) if index % 5 != 0)
    assert sorted(off_diagonal(matrix).flatten().tolist()) == expected and off_diagonal(matrix).numel() == 12
    assert off_diagonal(torch.ones(1, 1)).numel() == 0


def test_collapsed_and_well_spread_embeddings():
    # every image the same embedding: variance hinge 1 - sqrt(eps) in every dim, no covariance, no invariance
    collapsed = torch.ones(5, 3)
    output = VicRegLoss().forward_with_statistics(collapsed, collapsed.clone())
    assert output.variance.item() == pytest.approx(1 - 0.01, rel=1e-6)
    assert output.invariance.item() == 0.0 and output.covariance.item() == 0.0
    # identical views with std >= 1 and uncorrelated dims: the minimum 0
    spread = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert VicRegLoss()(spread, spread.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_pairing_is_row_by_row_and_gradients_reach_both_views():
    generator = torch.Generator().manual_seed(0)
    view_a = torch.randn(6, 4, generator=generator).requires_grad_(True)
    view_b = (view_a.detach() + 0.1 * torch.randn(6, 4, generator=generator)).requires_grad_(True)
    loss_fn = VicRegLoss()
    loss = loss_fn(view_a, view_b)
    torch.testing.assert_close(loss_fn(view_b, view_a), loss)  # the views play the same role
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(loss_fn(view_a[permutation], view_b[permutation]), loss)
    assert loss_fn(view_a, view_b.roll(1, dims=0)).item() > loss.item() + 1.0  # mismatched images do not agree
    loss.backward()
    assert view_a.grad.abs().sum() > 0 and view_b.grad.abs().sum() > 0


def test_loss_is_float32_for_bf16_inputs_and_under_autocast():
    generator = torch.Generator().manual_seed(0)
    view_a = torch.randn(6, 8, generator=generator).bfloat16()
    view_b = torch.randn(6, 8, generator=generator).bfloat16()
    loss = VicRegLoss()(view_a, view_b)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, VicRegLoss()(view_a.float(), view_b.float()), rtol=1e-6, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = VicRegLoss().forward_with_statistics(view_a.float(), view_b.float())
    assert all(value.dtype == torch.float32 for value in output)


def test_degenerate_batches_and_bad_arguments():
    # fewer than 2 images have no variance: a zero loss that still backpropagates (a process without images)
    for rows in (0, 1):
        embeddings = torch.randn(rows, 3, requires_grad=True)
        output = VicRegLoss().forward_with_statistics(embeddings, embeddings)
        assert all(value.item() == 0.0 for value in output)
        output.loss.backward()
        assert embeddings.grad is not None
    with pytest.raises(ValueError, match="same shape"):
        VicRegLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="`variance_epsilon`"):
        VicRegLoss(variance_epsilon=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Two processes (gloo)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """What each of 2 gloo processes saved (see `vicreg_gather_worker.run_rank`)."""
    result_file = str(tmp_path_factory.mktemp("vicreg_gather") / "result")
    mp.spawn(worker.run_rank, args=(2, free_port(), result_file), nprocs=2, join=True)
    return [torch.load(f"{result_file}.{rank}") for rank in range(2)]


def one_process_reference():
    linear, inputs_a, inputs_b = worker.make_problem()
    return worker.loss_and_gradients(VicRegLoss(), linear, inputs_a, inputs_b)


@pytest.mark.slow
@pytest.mark.parametrize("split", sorted(worker.SPLITS))
def test_two_processes_train_as_one_process_holding_every_image(two_process_results, split):
    # every rank computes the global loss; averaged as DDP does, the gradients are those of one process, whether
    # the ranks hold 4 + 4, 3 + 5 or 0 + 8 of the 8 images
    loss, gradients = one_process_reference()
    for results in two_process_results:
        torch.testing.assert_close(results[split]["loss"], loss, rtol=1e-6, atol=1e-6)
        for name, gradient in gradients.items():
            torch.testing.assert_close(
                results[split]["gradients"][name], gradient, rtol=1e-5, atol=1e-6, msg=f"{split}: {name}"
            )


@pytest.mark.slow
def test_a_gather_without_gradients_to_the_other_processes_would_not_match(two_process_results):
    # the same loss, but each rank's rows then get only its own copy of the gradient: what the test above catches
    loss, gradients = one_process_reference()
    without = two_process_results[0]["without_peer_gradients"]
    torch.testing.assert_close(without["loss"], loss, rtol=1e-6, atol=1e-6)
    assert (
        max((without["gradients"][name] - gradient).abs().max().item() for name, gradient in gradients.items()) > 1e-3
    )
