"""NTXentLoss against hand-computed values and its invariances; all_gather_with_grad, alone and across processes."""

import math

import pytest
import torch
import torch.multiprocessing as mp

from hf_ssl import NTXentLoss
from hf_ssl.models.distributed import all_gather_with_grad, all_gather_with_grad_and_offset
from tests.helpers import free_port
from tests.models import simclr_gather_worker as worker


def test_loss_equals_hand_computed_two_image_case():
    # Unit directions a0=(1,0), a1=(0,1), b0=(0.6,0.8), b1=(0,1), given at other lengths: the loss normalises.
    # Cosines: a0.a1=0, a0.b0=0.6, a0.b1=0, a1.b0=0.8, a1.b1=1, b0.b1=0.8. Temperature 0.5 doubles them.
    projections_a = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    projections_b = torch.tensor([[0.6, 0.8], [0.0, 2.0]])
    e = math.exp
    # row: -log(exp(positive) / sum over every other row); self excluded
    row_a0 = -math.log(e(1.2) / (e(0.0) + e(1.2) + e(0.0)))  # positive b0; negatives a1, b1
    row_a1 = -math.log(e(2.0) / (e(0.0) + e(1.6) + e(2.0)))  # positive b1; negatives a0, b0
    row_b0 = -math.log(e(1.2) / (e(1.2) + e(1.6) + e(1.6)))  # positive a0; negatives a1, b1
    row_b1 = -math.log(e(2.0) / (e(0.0) + e(2.0) + e(1.6)))  # positive a1; negatives a0, b0
    expected = (row_a0 + row_a1 + row_b0 + row_b1) / 4

    output = NTXentLoss(temperature=0.5).forward_with_statistics(projections_a, projections_b)
    assert output.loss.item() == pytest.approx(expected, rel=1e-6)
    # the self-similarity exp(2) in every denominator would give a clearly different value
    with_self = (
        sum(
            -math.log(e(p) / (d + e(2.0)))
            for p, d in (
                (1.2, e(0.0) + e(1.2) + e(0.0)),
                (2.0, e(0.0) + e(1.6) + e(2.0)),
                (1.2, e(1.2) + e(1.6) + e(1.6)),
                (2.0, e(0.0) + e(2.0) + e(1.6)),
            )
        )
        / 4
    )
    assert abs(output.loss.item() - with_self) > 0.1
    assert output.positive_similarity.item() == pytest.approx((0.6 + 1.0 + 0.6 + 1.0) / 4, rel=1e-6)
    assert output.negative_similarity.item() == pytest.approx((0 + 0 + 0 + 0.8 + 0.8 + 0.8 + 0 + 0.8) / 8, rel=1e-6)
    assert output.accuracy.item() == pytest.approx(0.75)  # row b0: its negatives a1, b1 (0.8) beat a0 (0.6)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_orthonormal_aligned_projections_give_the_closed_form_loss(temperature):
    # a = b = B orthonormal rows: positive cosine 1, the 2B - 2 negatives cosine 0, so every row's loss is
    # log(1 + (2B - 2) exp(-1 / t)): counting the self-similarity (2B - 1 terms) or missing a negative would not.
    batch_size = 3
    projections = torch.eye(4)[:batch_size] * 2.0
    loss = NTXentLoss(temperature)(projections, projections.clone())
    expected = math.log(1 + (2 * batch_size - 2) * math.exp(-1 / temperature))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_well_separated_aligned_projections_reach_the_minimum_ln_1():
    # the only way to 0: the positive takes all of the softmax, which a low temperature allows for orthogonal rows
    projections = torch.eye(5)
    output = NTXentLoss(temperature=0.05).forward_with_statistics(projections, projections.clone())
    assert 0 <= output.loss.item() < 1e-6
    assert output.accuracy.item() == 1.0 and output.positive_similarity.item() == pytest.approx(1.0)


def test_collapsed_projections_give_log_of_the_number_of_candidates():
    # every projection equal: the softmax is uniform over the 2B - 1 other rows
    batch_size = 4
    projections = torch.ones(batch_size, 3)
    output = NTXentLoss(temperature=0.1).forward_with_statistics(projections, projections.clone())
    assert output.loss.item() == pytest.approx(math.log(2 * batch_size - 1), rel=1e-6)
    assert output.positive_similarity.item() == pytest.approx(output.negative_similarity.item())


def test_pairing_is_row_by_row_and_symmetric():
    generator = torch.Generator().manual_seed(0)
    projections_a = torch.randn(6, 8, generator=generator)
    projections_b = projections_a + 0.1 * torch.randn(6, 8, generator=generator)
    loss_fn = NTXentLoss(temperature=0.2)
    loss = loss_fn(projections_a, projections_b)
    # the two views play the same role, and which image comes first does not matter
    torch.testing.assert_close(loss_fn(projections_b, projections_a), loss, rtol=1e-6, atol=0)
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(
        loss_fn(projections_a[permutation], projections_b[permutation]), loss, rtol=1e-6, atol=0
    )
    # pairing a's image i with b's image i + 1 breaks the positives: the loss must rise well above
    shifted = loss_fn(projections_a, projections_b.roll(1, dims=0))
    assert shifted.item() > loss.item() + 1.0


def test_gradients_reach_both_views():
    projections_a = torch.randn(4, 5, requires_grad=True)
    projections_b = torch.randn(4, 5, requires_grad=True)
    NTXentLoss()(projections_a, projections_b).backward()
    assert projections_a.grad.abs().sum() > 0 and projections_b.grad.abs().sum() > 0
    assert torch.isfinite(projections_a.grad).all() and torch.isfinite(projections_b.grad).all()


def test_loss_is_float32_for_bf16_inputs_and_under_autocast():
    generator = torch.Generator().manual_seed(0)
    projections_a = torch.randn(4, 16, generator=generator).bfloat16().requires_grad_(True)
    projections_b = torch.randn(4, 16, generator=generator).bfloat16()
    loss_fn = NTXentLoss(temperature=0.1)
    loss = loss_fn(projections_a, projections_b)
    assert loss.dtype == torch.float32
    # the bf16 values themselves, compared in float32
    torch.testing.assert_close(loss, loss_fn(projections_a.float(), projections_b.float()), rtol=1e-6, atol=0)
    loss.backward()
    assert projections_a.grad.dtype == torch.bfloat16 and projections_a.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = loss_fn.forward_with_statistics(projections_a.float(), projections_b.float())
    assert all(value.dtype == torch.float32 for value in output)
    torch.testing.assert_close(output.loss, loss.detach(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "shape_a, shape_b, match",
    [((4, 3), (3, 3), "same shape"), ((4,), (4,), "same shape")],
)
def test_loss_rejects_bad_shapes(shape_a, shape_b, match):
    with pytest.raises(ValueError, match=match):
        NTXentLoss()(torch.randn(shape_a), torch.randn(shape_b))


def test_degenerate_batches_give_a_zero_loss_not_a_crash():
    # one image: its only candidate is its positive, so the cross-entropy is exactly 0; nothing to compare is 0
    projections = torch.randn(1, 3, requires_grad=True)
    output = NTXentLoss().forward_with_statistics(projections, torch.randn(1, 3))
    assert output.loss.item() == 0.0 and output.negative_similarity.item() == 0.0
    assert all(torch.isfinite(value) for value in output)
    # no image at all (a process whose images were all unreadable): zero, and backward still runs
    empty = torch.zeros(0, 3, requires_grad=True)
    output = NTXentLoss().forward_with_statistics(empty, empty)
    assert output.loss.item() == 0.0 and all(torch.isfinite(value) for value in output)
    output.loss.backward()
    assert empty.grad is not None and empty.grad.shape == (0, 3)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="`temperature`"):
        NTXentLoss(temperature=0.0)


def test_a_process_without_images_gets_a_zero_loss_that_still_backpropagates(monkeypatch):
    # Its peers hold 3 images: it must still take part in the gather's backward (a collective), not return NaN.
    from hf_ssl.models.simclr import loss_simclr

    peer_rows = torch.randn(6, 4, requires_grad=True)

    def gather_with_peers(local):
        return torch.cat([local, peer_rows]), 0

    monkeypatch.setattr(loss_simclr, "all_gather_with_grad_and_offset", gather_with_peers)
    loss = NTXentLoss()(torch.zeros(0, 4), torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert peer_rows.grad is not None  # the backward reached the gathered tensor


def test_gather_is_the_identity_without_distributed():
    tensor = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(tensor) is tensor
    gathered, offset = all_gather_with_grad_and_offset(tensor)
    assert gathered is tensor and offset == 0


# ---------------------------------------------------------------------------------------------------------------------
# Two processes (gloo)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """What each of 2 gloo processes saved (see `simclr_gather_worker.run_rank`)."""
    result_file = str(tmp_path_factory.mktemp("simclr_gather") / "result")
    mp.spawn(worker.run_rank, args=(2, free_port(), result_file), nprocs=2, join=True)
    return [torch.load(f"{result_file}.{rank}") for rank in range(2)]


def one_process_reference():
    linear, inputs_a, inputs_b = worker.make_problem(8)
    return worker.loss_and_gradients(NTXentLoss(worker.TEMPERATURE), linear, inputs_a, inputs_b)


@pytest.mark.slow
def test_two_processes_of_batch_b_train_as_one_process_of_batch_2b(two_process_results):
    loss, gradients = one_process_reference()
    for results in two_process_results:
        distributed = results["with_grad"]
        torch.testing.assert_close(distributed["mean_loss"], loss, rtol=1e-6, atol=1e-6)
        for name, gradient in gradients.items():
            torch.testing.assert_close(distributed["gradients"][name], gradient, rtol=1e-6, atol=1e-6, msg=name)
    # each process's own loss uses its own images as queries: the two differ, only their mean is the global loss
    local_losses = [results["with_grad"]["local_loss"] for results in two_process_results]
    assert abs(local_losses[0] - local_losses[1]) > 1e-3


@pytest.mark.slow
def test_a_gather_without_gradient_would_not_match(two_process_results):
    # the same run with the other processes' rows as constants: same losses, wrong gradients (this is what
    # the test above must catch)
    loss, gradients = one_process_reference()
    without_grad = two_process_results[0]["without_grad"]
    torch.testing.assert_close(without_grad["mean_loss"], loss, rtol=1e-6, atol=1e-6)
    differences = [
        (without_grad["gradients"][name] - gradient).abs().max().item() for name, gradient in gradients.items()
    ]
    assert max(differences) > 1e-3


@pytest.mark.slow
def test_uneven_gather_concatenates_in_rank_order_and_sums_gradients(two_process_results):
    expected_gathered = torch.cat([worker.uneven_inputs(rank) for rank in range(2)])
    summed_weights = worker.uneven_weights(0) + worker.uneven_weights(1)
    for rank, results in enumerate(two_process_results):
        uneven = results["uneven"]
        start = sum(worker.UNEVEN_ROWS[:rank])
        torch.testing.assert_close(uneven["gathered"], expected_gathered, rtol=0, atol=0)
        assert uneven["offset"] == start
        # d(sum over processes of their losses) / d(this process's rows)
        own_rows = slice(start, start + worker.UNEVEN_ROWS[rank])
        torch.testing.assert_close(uneven["grad"], summed_weights[own_rows], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Two processes (gloo) holding unequal shares of the images, one of them none
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(worker.SHARES))
def shares_run(request, tmp_path_factory):
    """(shares, what each of 2 gloo processes saved) for one entry of `worker.SHARES` (see `run_shares_rank`). One
    launch per entry: a run that crashes (an offset past the gathered rows) then fails its own entry only."""
    shares = worker.SHARES[request.param]
    result_file = str(tmp_path_factory.mktemp("simclr_shares") / "result")
    mp.spawn(worker.run_shares_rank, args=(2, free_port(), result_file, shares), nprocs=2, join=True)
    return shares, [torch.load(f"{result_file}.{rank}") for rank in range(2)]


def hand_computed_rank_losses(projections_a, projections_b, shares):
    """Each rank's NT-Xent loss, written out: the mean over its rows (its images' two views) of
    -log(exp(s(i, positive)) / sum_{j != i} exp(s(i, j))), j over the rows of every rank; 0 for a rank without
    images."""
    normalized_a = projections_a / projections_a.norm(dim=1, keepdim=True)
    normalized_b = projections_b / projections_b.norm(dim=1, keepdim=True)
    rows = torch.cat([normalized_a, normalized_b])  # row i: view a of image i; row N + i: view b of image i
    num_images = len(normalized_a)
    logits = rows @ rows.T / worker.TEMPERATURE
    losses = []
    for rank, count in enumerate(shares):
        start = sum(shares[:rank])
        row_losses = []
        for image in range(start, start + count):
            for row, positive in ((image, num_images + image), (num_images + image, image)):
                others = torch.cat([logits[row, :row], logits[row, row + 1 :]])
                row_losses.append(torch.logsumexp(others, dim=0) - logits[row, positive])
        losses.append(torch.stack(row_losses).mean() if row_losses else torch.tensor(0.0))
    return losses


@pytest.mark.slow
def test_each_process_loss_over_unequal_shares_is_its_rows_mean_over_the_global_batch(shares_run):
    shares, results = shares_run
    expected = hand_computed_rank_losses(*worker.share_projections(shares), shares)
    for rank in range(2):
        torch.testing.assert_close(
            results[rank]["loss"], expected[rank], rtol=1e-6, atol=1e-6, msg=lambda message: f"rank {rank}: {message}"
        )


@pytest.mark.slow
def test_unequal_shares_train_as_one_process_over_the_concatenated_batch(shares_run):
    # each process's loss weighted by its share of the images: the sum is the one-process loss, and each process's
    # projections get exactly the one-process gradient of their rows
    shares, results = shares_run
    projections_a, projections_b = (tensor.requires_grad_(True) for tensor in worker.share_projections(shares))
    loss = NTXentLoss(worker.TEMPERATURE)(projections_a, projections_b)
    loss.backward()
    weighted = sum(results[rank]["loss"] * count / sum(shares) for rank, count in enumerate(shares))
    torch.testing.assert_close(weighted, loss.detach(), rtol=1e-6, atol=1e-6)
    for rank in range(2):
        own = slice(sum(shares[:rank]), sum(shares[: rank + 1]))
        torch.testing.assert_close(results[rank]["grad_a"], projections_a.grad[own], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(results[rank]["grad_b"], projections_b.grad[own], rtol=1e-5, atol=1e-7)
