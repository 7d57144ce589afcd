"""DinoLoss against hand-computed values, and the center update (local and across processes)."""

import math
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_ssl import DinoLoss
from tests.models.dino_center_worker import update_center_on_rank


def reference_dino_loss(student, teacher, center, num_global_crops, student_temperature, teacher_temperature):
    """Plain numpy, one (teacher crop i, student crop v != i) pair at a time, as in the official code."""

    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    batch_size = teacher.shape[0] // num_global_crops
    student_crops = np.split(np.log(softmax(student / student_temperature)), student.shape[0] // batch_size)
    teacher_crops = np.split(softmax((teacher - center) / teacher_temperature), num_global_crops)
    total, num_terms = 0.0, 0
    for i, teacher_probs in enumerate(teacher_crops):
        for v, student_log_probs in enumerate(student_crops):
            if v == i:
                continue
            total += np.mean(np.sum(-teacher_probs * student_log_probs, axis=-1))
            num_terms += 1
    return total / num_terms


def test_loss_equals_hand_computed_two_crop_case():
    # K=2, B=1, temperatures 1, center 0. Teacher crop 0 -> P=[1/2, 1/2]; teacher crop 1 -> P=[3/4, 1/4].
    # Student crop 0 -> log Q = [-ln 2, -ln 2]; student crop 1 -> log Q = [ln 3/4, ln 1/4].
    # Pairs (i=0, v=1): -(1/2 ln 3/4 + 1/2 ln 1/4) = 1/2 ln(16/3);  (i=1, v=0): ln 2.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    loss_fn = DinoLoss(out_dim=2, student_temperature=1.0).eval()
    loss = loss_fn(logits, logits.clone(), num_global_crops=2, teacher_temperature=1.0)
    expected = (0.5 * math.log(16 / 3) + math.log(2)) / 2  # 0.76507
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # With the v == i pairs (ln 2 and the entropy of [3/4, 1/4]) the mean would be 0.6964: they must be excluded.
    with_same_crop_pairs = (
        0.5 * math.log(16 / 3) + 2 * math.log(2) - 0.75 * math.log(0.75) - 0.25 * math.log(0.25)
    ) / 4
    assert abs(loss.item() - with_same_crop_pairs) > 0.05


def test_loss_matches_pairwise_reference_with_local_crops_and_center():
    # B=2, K=3, 2 global + 1 local crop, non-trivial temperatures and center.
    rng = np.random.default_rng(0)
    student = rng.normal(size=(3 * 2, 3)).astype(np.float32)
    teacher = rng.normal(size=(2 * 2, 3)).astype(np.float32)
    center = np.array([[0.3, -0.2, 0.1]], dtype=np.float32)
    loss_fn = DinoLoss(out_dim=3, student_temperature=0.1, center_momentum=0.9).eval()
    loss_fn.center.copy_(torch.from_numpy(center))
    loss = loss_fn(torch.from_numpy(student), torch.from_numpy(teacher), num_global_crops=2, teacher_temperature=0.04)
    expected = reference_dino_loss(student, teacher, center, 2, 0.1, 0.04)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_is_float32_and_only_student_gets_gradient():
    student = torch.randn(6, 5, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(4, 5, dtype=torch.bfloat16, requires_grad=True)
    loss = DinoLoss(out_dim=5).eval()(student, teacher, num_global_crops=2, teacher_temperature=0.04)
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_center_update_formula_with_hand_values():
    loss_fn = DinoLoss(out_dim=3, center_momentum=0.9)
    loss_fn.center.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    loss_fn.update_center(torch.tensor([[1.0, 0.0, 0.0], [3.0, 4.0, 2.0]]))  # batch mean [2, 2, 1]
    # 0.9 * [1, 2, 3] + 0.1 * [2, 2, 1]
    torch.testing.assert_close(loss_fn.center, torch.tensor([[1.1, 2.0, 2.8]]))


def test_forward_updates_center_in_training_mode_only():
    student, teacher = torch.randn(6, 4), torch.randn(4, 4)
    loss_fn = DinoLoss(out_dim=4, center_momentum=0.5)

    loss_fn.eval()
    loss_fn(student, teacher, num_global_crops=2, teacher_temperature=0.04)
    assert torch.equal(loss_fn.center, torch.zeros(1, 4))

    loss_fn.train()
    loss_fn(student, teacher, num_global_crops=2, teacher_temperature=0.04)
    torch.testing.assert_close(loss_fn.center, 0.5 * teacher.mean(dim=0, keepdim=True))


def test_center_is_a_persistent_buffer():
    loss_fn = DinoLoss(out_dim=7)
    assert "center" in loss_fn.state_dict()
    assert loss_fn.state_dict()["center"].shape == (1, 7)


def test_teacher_entropy_of_uniform_teacher_is_log_out_dim():
    loss_fn = DinoLoss(out_dim=8)
    assert loss_fn.max_entropy == pytest.approx(math.log(8))
    assert loss_fn.teacher_entropy(torch.zeros(4, 8), 0.04).item() == pytest.approx(math.log(8), abs=1e-6)
    one_hot_like = torch.tensor([[10.0] + [0.0] * 7])
    assert loss_fn.teacher_entropy(one_hot_like, 0.04).item() < 1e-6


@pytest.mark.parametrize(
    "student_rows, teacher_rows, num_global_crops, match",
    [
        (6, 3, 2, "multiple of num_global_crops"),
        (5, 4, 2, "multiple of the batch size"),
        (2, 2, 1, "at least 2 crops"),
    ],
)
def test_loss_rejects_inconsistent_shapes(student_rows, teacher_rows, num_global_crops, match):
    with pytest.raises(ValueError, match=match):
        DinoLoss(out_dim=3)(torch.randn(student_rows, 3), torch.randn(teacher_rows, 3), num_global_crops, 0.04)


def test_center_all_reduces_sum_and_count_when_distributed(monkeypatch):
    # Fake a second process holding 3 rows of twos: the all-reduce must combine sums and row counts.
    other_rank_sum_and_count = torch.tensor([6.0, 6.0, 3.0])

    def fake_all_reduce(tensor):
        tensor.add_(other_rank_sum_and_count)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    loss_fn = DinoLoss(out_dim=2, center_momentum=0.5)
    loss_fn.update_center(torch.ones(1, 2))  # this process: 1 row of ones; global mean (1 + 6) / 4 = 1.75
    torch.testing.assert_close(loss_fn.center, torch.full((1, 2), 0.5 * 1.75))


@pytest.mark.slow
def test_center_uses_the_global_batch_mean_across_processes():
    # Rank 0 holds 1 row of ones, rank 1 holds 3 rows of twos: the global mean is (1 + 6) / 4 = 1.75, not the
    # mean of per-rank means (1.5).
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "center")
        mp.spawn(update_center_on_rank, args=(2, init_file, [1, 3], result_file), nprocs=2, join=True)
        centers = [torch.load(f"{result_file}.{rank}") for rank in range(2)]
    for center in centers:
        torch.testing.assert_close(center, torch.full((1, 2), 0.5 * 1.75))


def test_deferred_center_update_equals_one_update_of_the_whole_batch():
    teacher = torch.tensor([[1.0, 0.0, 0.0], [3.0, 4.0, 2.0], [5.0, 2.0, -1.0], [-1.0, 2.0, 3.0]])
    student = torch.randn(8, 3)
    whole = DinoLoss(out_dim=3, center_momentum=0.9).train()
    whole(student, teacher, num_global_crops=2, teacher_temperature=0.5)
    deferred = DinoLoss(out_dim=3, center_momentum=0.9).train()
    for image in (0, 1):
        # a micro-batch of one image: its rows of the crop-major (crops * batch) layout, batch size 2
        deferred(
            student[[image, 2 + image, 4 + image, 6 + image]],
            teacher[[image, 2 + image]],
            num_global_crops=2,
            teacher_temperature=0.5,
            update_center=False,
        )
    assert torch.equal(deferred.center, torch.zeros(1, 3))  # nothing applied yet
    deferred.apply_pending_center_update()
    torch.testing.assert_close(deferred.center, whole.center)
    torch.testing.assert_close(whole.center, 0.1 * teacher.mean(dim=0, keepdim=True))
    deferred.apply_pending_center_update()  # nothing pending: the center stays
    torch.testing.assert_close(deferred.center, whole.center)
    assert "pending_center_statistics" not in deferred.state_dict()
