"""The pieces that give DINO's step its DeepSpeed form, checked without DeepSpeed: the float32 teacher of a
bf16 model, the restart of the last layer's Adam moments, and the setups refused before training."""

from types import SimpleNamespace

import pytest
import torch

from hf_ssl.training.engines.base import check_distributed_setup
from hf_ssl.training.methods.base import restart_moments
from hf_ssl.training.optim.ema import FullPrecisionTeacher, ema_update_


def test_float32_teacher_follows_the_student_where_a_bf16_ema_stands_still():
    torch.manual_seed(0)
    teacher32 = [torch.randn(64, 8), torch.randn(8)]
    student32 = [t + 0.05 * torch.randn_like(t) for t in teacher32]
    teacher = [torch.nn.Parameter(t.bfloat16(), requires_grad=False) for t in teacher32]
    student = [s.bfloat16() for s in student32]
    assert FullPrecisionTeacher.needed(teacher) and not FullPrecisionTeacher.needed(teacher32)
    shadow = FullPrecisionTeacher(teacher)
    naive = [t.detach().clone() for t in teacher]
    expected = [t.double() for t in teacher]  # the exact EMA from the same (rounded) start
    for _ in range(20):
        shadow.update_(student, 0.996)
        ema_update_(naive, student, 0.996)
        expected = [0.996 * e + 0.004 * s.double() for e, s in zip(expected, student)]
    for copy, exact in zip(shadow.copies, expected):
        torch.testing.assert_close(copy.double(), exact, rtol=0, atol=1e-6)
    for parameter, copy in zip(teacher, shadow.copies):
        assert parameter.dtype == torch.bfloat16 and torch.equal(parameter.data, copy.bfloat16())
    moved = sum(float((c - t.float()).norm()) for c, t in zip(shadow.copies, naive))
    assert moved > 0  # the naive bf16 EMA lost updates the float32 one kept
    unchanged = sum(int((n == t0).sum()) for n, t0 in zip(naive, [t.bfloat16() for t in teacher32]))
    assert unchanged > 0.5 * sum(t.numel() for t in teacher32)  # most bf16 entries never moved

    restored = FullPrecisionTeacher([torch.nn.Parameter(t.bfloat16(), requires_grad=False) for t in teacher32])
    restored.load_state_dict(shadow.state_dict())
    for first, second in zip(restored.copies, shadow.copies):
        assert torch.equal(first, second)
    with pytest.raises(ValueError, match="does not match"):
        restored.load_state_dict({"teacher": shadow.copies[:1]})


def test_last_layer_moments_restart_and_other_groups_keep_theirs():
    body, last = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([{"params": [body]}, {"params": [last], "last_layer": True}], lr=0.1)
    (body.sum() + last.sum()).backward()
    optimizer.step()
    restart_moments(SimpleNamespace(optimizer=optimizer), "last_layer")  # as wrapped by accelerate
    assert float(optimizer.state[last]["step"]) == 0 and not optimizer.state[last]["exp_avg"].any()
    assert not optimizer.state[last]["exp_avg_sq"].any()
    assert float(optimizer.state[body]["step"]) == 1 and optimizer.state[body]["exp_avg"].any()


def deepspeed_accelerator(stage):
    return SimpleNamespace(
        distributed_type="DEEPSPEED", state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage))
    )


def test_deepspeed_zero3_is_refused_before_training():
    check_distributed_setup(deepspeed_accelerator(2), engine="trainer")
    check_distributed_setup(deepspeed_accelerator(2), engine="accelerate")
    with pytest.raises(ValueError, match="ZeRO-3.*deepspeed_zero2.yaml.*fsdp_full_shard.yaml"):
        check_distributed_setup(deepspeed_accelerator(3), engine="accelerate")


def test_a_step_the_gradient_scaler_skipped_leaves_the_teacher_alone():
    from hf_ssl import DinoForPreTraining
    from hf_ssl.training.methods.dino import DinoMethod
    from tests.helpers import tiny_dino_config, tiny_multicrop_config

    model = DinoForPreTraining(tiny_dino_config())
    with torch.no_grad():
        for parameter in model.student.parameters():
            parameter.add_(0.1)  # the student moved away from the teacher
    step = DinoMethod(
        model, tiny_multicrop_config(), seed=0, process_index=0, max_consecutive_nonfinite_steps=3, reduce=lambda t: t
    )
    step.schedules = SimpleNamespace(teacher_momentum=lambda _: 0.9)
    before = [p.detach().clone() for p in model.teacher.parameters()]
    step.after_optimizer_step(0, optimizer_step_was_skipped=True)  # fp16 overflow: the student did not change
    assert all(torch.equal(p, b) for p, b in zip(model.teacher.parameters(), before))
    step.after_optimizer_step(0)
    assert any(not torch.equal(p, b) for p, b in zip(model.teacher.parameters(), before))
