import pytest
import torch

from hf_ssl.training.optim.ema import ema_update_


def test_ema_matches_formula_for_every_tensor():
    generator = torch.Generator().manual_seed(0)
    teacher = [
        torch.nn.Parameter(torch.randn(4, 3, generator=generator), requires_grad=False),
        torch.randn(5, generator=generator),
    ]
    student = [torch.nn.Parameter(torch.randn(4, 3, generator=generator)), torch.randn(5, generator=generator)]
    expected = [0.9 * t.detach() + 0.1 * s.detach() for t, s in zip(teacher, student)]
    ema_update_(teacher, student, momentum=0.9)
    for value, target in zip(teacher, expected):
        torch.testing.assert_close(value.detach(), target)


def test_momentum_one_leaves_teacher_and_zero_copies_student():
    teacher, student = [torch.zeros(3)], [torch.ones(3)]
    ema_update_(teacher, student, momentum=1.0)
    assert torch.equal(teacher[0], torch.zeros(3))
    ema_update_(teacher, student, momentum=0.0)
    assert torch.equal(teacher[0], torch.ones(3))


def test_ema_does_not_touch_student_or_build_graph():
    student = [torch.nn.Parameter(torch.ones(2))]
    teacher = [torch.nn.Parameter(torch.zeros(2), requires_grad=False)]
    ema_update_(teacher, student, momentum=0.5)
    assert torch.equal(student[0].detach(), torch.ones(2))
    assert teacher[0].grad_fn is None


def test_mismatched_lists_fail():
    with pytest.raises(ValueError, match="as many"):
        ema_update_([torch.zeros(1)], [], momentum=0.5)
