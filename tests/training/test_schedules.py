import math

import pytest

from hf_ssl.training.optim.schedules import (
    LinearWarmupConstantSchedule,
    WarmupCosineSchedule,
    cosine_value,
    scaled_learning_rate,
)


def test_warmup_cosine_values_at_key_steps():
    # warmup 0 -> 1.0 over 4 steps, then cosine 1.0 -> 0.0 over the 5 remaining steps (indices 4..8)
    schedule = WarmupCosineSchedule(
        base_value=1.0, final_value=0.0, total_steps=9, warmup_steps=4, warmup_start_value=0.0
    )
    assert [schedule(step) for step in range(4)] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(6) == pytest.approx(0.5)  # halfway through the cosine: (1 + cos(pi/2)) / 2
    assert schedule(5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule(8) == pytest.approx(0.0)
    assert schedule(100) == pytest.approx(0.0)


def test_dino_weight_decay_and_momentum_schedules():
    weight_decay = WarmupCosineSchedule(0.04, 0.4, total_steps=101)
    assert weight_decay(0) == pytest.approx(0.04)
    assert weight_decay(50) == pytest.approx(0.22)
    assert weight_decay(100) == pytest.approx(0.4)
    momentum = WarmupCosineSchedule(0.996, 1.0, total_steps=11)
    assert momentum(0) == pytest.approx(0.996)
    assert momentum(5) == pytest.approx(0.998)
    assert momentum(10) == pytest.approx(1.0)
    values = [momentum(step) for step in range(11)]
    assert values == sorted(values)


def test_warmup_start_value_and_no_warmup():
    schedule = WarmupCosineSchedule(1e-3, 1e-6, total_steps=10, warmup_steps=2, warmup_start_value=1e-4)
    assert schedule(0) == pytest.approx(1e-4)
    assert schedule(1) == pytest.approx(5.5e-4)
    assert schedule(2) == pytest.approx(1e-3)
    assert WarmupCosineSchedule(2.0, 1.0, total_steps=1)(0) == pytest.approx(1.0)


def test_teacher_temperature_warmup_then_constant():
    schedule = LinearWarmupConstantSchedule(0.04, 0.07, warmup_steps=30)
    assert schedule(0) == pytest.approx(0.04)
    assert schedule(15) == pytest.approx(0.055)
    assert schedule(30) == pytest.approx(0.07)
    assert schedule(1000) == pytest.approx(0.07)
    assert LinearWarmupConstantSchedule(0.04, 0.07, warmup_steps=0)(0) == pytest.approx(0.07)


def test_scaled_learning_rate_and_cosine_bounds():
    assert scaled_learning_rate(5e-4, 1024) == pytest.approx(2e-3)
    assert cosine_value(1.0, 0.0, -1.0) == pytest.approx(1.0)
    assert cosine_value(1.0, 0.0, 2.0) == pytest.approx(0.0)


@pytest.mark.parametrize("total, warmup", [(0, 0), (5, 6), (5, -1)])
def test_invalid_lengths_are_rejected(total, warmup):
    with pytest.raises(ValueError, match="steps"):
        WarmupCosineSchedule(1.0, 0.0, total_steps=total, warmup_steps=warmup)
