import math

import pytest
import torch

from hf_ssl.evaluation.collapse import CollapseDetector, collapse_metrics, effective_rank, embedding_std, mean_l2_norm
from hf_ssl.training.methods.dino import DINO_COLLAPSE_ADVICE

LN_65536 = math.log(65536)


# ----- metrics ---------------------------------------------------------------------------------
def test_effective_rank_of_rank_one_data_is_one():
    generator = torch.Generator().manual_seed(0)
    coefficients = torch.randn(256, 1, generator=generator)
    direction = torch.randn(1, 32, generator=generator)
    offset = torch.randn(1, 32, generator=generator)  # shared by every row: centring removes it
    rank = effective_rank(coefficients @ direction + offset)
    assert rank.item() == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_of_isotropic_gaussian_is_the_dimension():
    embeddings = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))
    rank = effective_rank(embeddings).item()
    assert 7.9 < rank <= 8.0


def test_effective_rank_matches_hand_computation():
    # Centred rows (+-a, 0), (0, +-b) with a = 3/sqrt(2), b = 1/sqrt(2): the columns are orthogonal with
    # norms sqrt(2 a^2) = 3 and sqrt(2 b^2) = 1, so the singular values are exactly (3, 1).
    a, b = 3 / math.sqrt(2), 1 / math.sqrt(2)
    centred = torch.tensor([[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]], dtype=torch.float64)
    embeddings = centred + torch.tensor([5.0, -2.0], dtype=torch.float64)  # an offset centring must remove
    torch.testing.assert_close(torch.linalg.svdvals(centred), torch.tensor([3.0, 1.0], dtype=torch.float64))
    # p = (3/4, 1/4); H = -(3/4 ln 3/4 + 1/4 ln 1/4) = ln 4 - (3/4) ln 3; exp(H) = 4 / 3^(3/4) = 1.7548...
    expected = 4 / 3**0.75
    assert effective_rank(embeddings).item() == pytest.approx(expected, rel=1e-6)
    # diag(3, 1) itself centres to the rows +-(1.5, -0.5): one direction, effective rank 1
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))).item() == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_of_constant_embeddings_is_zero_not_nan():
    # 0.1 is not exact in binary: centring leaves rounding noise that must not count as rank
    constant = torch.full((1000, 64), 0.1)
    assert effective_rank(constant).item() == 0.0
    assert effective_rank(torch.zeros(16, 8)).item() == 0.0
    assert effective_rank(torch.randn(1, 8)).item() == 0.0
    assert math.isnan(effective_rank(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])).item())


def test_embedding_std_constant_and_gaussian():
    assert embedding_std(torch.full((128, 64), 0.3)).item() == pytest.approx(0.0, abs=1e-7)
    gaussian = torch.randn(8192, 64, generator=torch.Generator().manual_seed(0))
    # each coordinate of a uniform unit vector in D dims has variance 1/D: std 1/sqrt(64) = 1/8
    assert embedding_std(gaussian).item() == pytest.approx(1 / 8, rel=0.02)
    # scale does not matter: the embeddings are normalised first
    assert embedding_std(gaussian * 100).item() == pytest.approx(embedding_std(gaussian).item(), rel=1e-5)


def test_collapse_metrics_names_values_and_bad_shapes():
    embeddings = torch.tensor([[3.0, 4.0], [0.0, 2.0], [6.0, 8.0]])
    metrics = collapse_metrics(embeddings, prefix="teacher_")
    assert set(metrics) == {"teacher_embedding_std", "teacher_effective_rank", "teacher_mean_l2_norm"}
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["teacher_mean_l2_norm"] == pytest.approx((5 + 2 + 10) / 3)
    assert mean_l2_norm(embeddings).item() == pytest.approx((5 + 2 + 10) / 3)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        effective_rank(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        embedding_std(torch.randn(1, 4))


# ----- detector --------------------------------------------------------------------------------
def feed(detector, logs_by_step):
    """Feeds (step, logs) pairs; returns the (step, message) of every warning."""
    warnings = []
    for step, logs in logs_by_step:
        message = detector.update(logs, step=step)
        if message is not None:
            warnings.append((step, message))
    return warnings


def uniform_collapse_logs(start, stop):
    return [
        (step, {"loss": LN_65536, "teacher_entropy_ratio": 0.99, "learning_rate": 1e-4, "epoch": step / 100})
        for step in range(start, stop, 10)
    ]


def test_uniform_collapse_fires_once_with_the_numbers_and_temperature_advice():
    detector = CollapseDetector(patience=100, out_dim=65536, method_advice=DINO_COLLAPSE_ADVICE)
    logs = uniform_collapse_logs(10, 400)
    logs.insert(5, (50, {"knn_top1": 10.0}))  # a k-NN log without the signals does not break the streak
    warnings = feed(detector, logs)
    assert len(warnings) == 1
    step, message = warnings[0]
    assert step == 110  # first symptom at step 10, patience 100
    assert "Uniform collapse" in message
    assert "0.990" in message and f"{LN_65536:.4f}" in message
    assert "lower teacher temperature" in message and "warmup" in message
    assert "augmentations" in message


def test_uniform_collapse_from_entropy_and_out_dim():
    detector = CollapseDetector(patience=20, out_dim=65536)
    logs = [(step, {"teacher_entropy": 0.99 * LN_65536}) for step in range(0, 100, 10)]
    warnings = feed(detector, logs)
    assert [step for step, _ in warnings] == [20]
    assert "0.990 x ln(out_dim)" in warnings[0][1]


def test_healthy_runs_do_not_fire():
    detector = CollapseDetector(patience=50, embedding_dim=384)
    # loss going down from ln(out_dim), sharpening teacher, spread embeddings
    healthy = [
        (
            step,
            {
                "loss": LN_65536 - 0.01 * step,
                "teacher_entropy_ratio": 0.9 - step / 10000,
                "embedding_std": 0.03,
                "effective_rank": 40.0,
            },
        )
        for step in range(10, 2000, 10)
    ]
    assert feed(detector, healthy) == []
    # a loss still within 1% of ln(out_dim) but going down steadily is the start of a healthy run
    slow_start = [(step, {"loss": LN_65536 - 0.0004 * step, "out_dim": 65536}) for step in range(0, 250, 10)]
    assert feed(CollapseDetector(patience=100), slow_start) == []


def test_warns_once_per_episode():
    detector = CollapseDetector(patience=100, out_dim=65536)
    recovery = [(step, {"loss": 6.0, "teacher_entropy_ratio": 0.5}) for step in range(400, 450, 10)]
    logs = uniform_collapse_logs(10, 400) + recovery + uniform_collapse_logs(450, 800)
    warnings = feed(detector, logs)
    assert [step for step, _ in warnings] == [110, 550]


def test_constant_collapse_message_and_generic_advice():
    detector = CollapseDetector(patience=30, embedding_dim=384)
    logs = [(step, {"loss": 2.0, "embedding_std": 1e-5, "effective_rank": 1.01}) for step in range(0, 100, 10)]
    warnings = feed(detector, logs)
    assert [step for step, _ in warnings] == [30]
    message = warnings[0][1]
    assert "Constant collapse" in message and "embedding_std 1.00e-05" in message and "effective_rank 1.010" in message
    assert "0.1/sqrt(384)" in message and "augmentations" in message
    assert "teacher temperature" not in message  # no method advice: generic advice only
    # the threshold is 0.1/sqrt(D) = 0.0051 for D=384: 0.01 is fine, 0.004 is collapse
    assert feed(CollapseDetector(patience=0, embedding_dim=384), [(1, {"embedding_std": 0.01})]) == []
    assert len(feed(CollapseDetector(patience=0, embedding_dim=384), [(1, {"embedding_std": 0.004})])) == 1


def test_dino_trainer_logs_give_the_loss_check_its_ln_out_dim():
    # the DINO method logs teacher_entropy and teacher_entropy_ratio but not out_dim: ln(out_dim) = their quotient
    entropy = 0.99 * LN_65536
    logs = [
        (step, {"loss": LN_65536, "teacher_entropy": entropy, "teacher_entropy_ratio": 0.99})
        for step in range(0, 60, 10)
    ]
    warnings = feed(CollapseDetector(patience=50), logs)
    assert [step for step, _ in warnings] == [50]
    assert "teacher entropy is 0.990" in warnings[0][1] and f"ln(out_dim) = {LN_65536:.4f}" in warnings[0][1]
