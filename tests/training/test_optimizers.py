import math

import pytest
import torch

from hf_ssl.training.optim.optimizers import LARS, OPTIMIZERS, apply_optimizer_settings, build_optimizer

LR, MOMENTUM, WEIGHT_DECAY, ETA, EPS = 0.1, 0.9, 0.01, 0.001, 1e-8


def norm(values):
    return math.sqrt(sum(v * v for v in values))


def tiny_parameters():
    """A 2x2 weight and a bias of 2 values, in float64 so the comparisons with Python floats are tight."""
    weight = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    bias = torch.nn.Parameter(torch.tensor([0.5, -0.5], dtype=torch.float64))
    return weight, bias


def engine_groups(weight, bias, weight_decay=WEIGHT_DECAY):
    """The groups ``decay_parameter_groups`` makes: the weight decayed, the bias without weight decay."""
    return [
        {"params": [weight], "apply_weight_decay": True, "weight_decay": weight_decay},
        {"params": [bias], "apply_weight_decay": False, "weight_decay": 0.0},
    ]


def step_with(optimizer, gradients):
    for parameter, gradient in gradients.items():
        parameter.grad = torch.tensor(gradient, dtype=parameter.dtype).reshape(parameter.shape)
    optimizer.step()


def lars_reference_step(w, g, mu, lr, wd):
    """One LARS step on flat Python lists (the formula of the LARS docstring); returns (w, mu)."""
    u = [gi + wd * wi for gi, wi in zip(g, w)]
    w_norm, u_norm = norm(w), norm(u)
    q = ETA * w_norm / (u_norm + EPS) if w_norm > 0 and u_norm > 0 else 1.0
    mu = [MOMENTUM * mi + q * ui for mi, ui in zip(mu, u)]
    return [wi - lr * mi for wi, mi in zip(w, mu)], mu


def test_lars_two_steps_match_a_hand_computed_update():
    weight, bias = tiny_parameters()
    optimizer = LARS(engine_groups(weight, bias), lr=LR, momentum=MOMENTUM, trust_coefficient=ETA, eps=EPS)
    g1_w, g1_b = [0.1, -0.2, 0.3, 0.4], [0.1, 0.2]
    g2_w, g2_b = [-0.3, 0.1, 0.2, 0.0], [-0.1, 0.3]

    step_with(optimizer, {weight: g1_w, bias: g1_b})
    # weight, step 1: u = g + 0.01 w, ||w|| = sqrt(30), ||u|| = sqrt(0.11^2 + 0.18^2 + 0.33^2 + 0.44^2) = sqrt(0.347)
    u1 = [0.11, -0.18, 0.33, 0.44]
    q1 = 0.001 * math.sqrt(30.0) / (math.sqrt(0.347) + EPS)
    mu1 = [q1 * u for u in u1]
    w1 = [w - 0.1 * m for w, m in zip([1.0, 2.0, 3.0, 4.0], mu1)]
    assert weight.flatten().tolist() == pytest.approx(w1, rel=0, abs=1e-14)
    assert q1 == pytest.approx(0.0092981, abs=1e-7)  # 0.001 * 5.47723 / 0.58907: far from 1
    # bias, step 1: plain momentum SGD, mu = g, b = b - 0.1 g
    assert bias.tolist() == pytest.approx([0.49, -0.52], rel=0, abs=1e-14)

    step_with(optimizer, {weight: g2_w, bias: g2_b})
    # weight, step 2: the trust ratio of the new weights and update, on top of 0.9 x the buffer
    u2 = [g + 0.01 * w for g, w in zip(g2_w, w1)]
    q2 = 0.001 * norm(w1) / (norm(u2) + EPS)
    mu2 = [0.9 * m + q2 * u for m, u in zip(mu1, u2)]
    w2 = [w - 0.1 * m for w, m in zip(w1, mu2)]
    assert weight.flatten().tolist() == pytest.approx(w2, rel=0, abs=1e-14)
    assert optimizer.state[weight]["momentum_buffer"].flatten().tolist() == pytest.approx(mu2, rel=0, abs=1e-14)
    # bias, step 2: mu = 0.9 * [0.1, 0.2] + [-0.1, 0.3] = [-0.01, 0.48]; b = [0.49, -0.52] - 0.1 mu
    assert optimizer.state[bias]["momentum_buffer"].tolist() == pytest.approx([-0.01, 0.48], rel=0, abs=1e-14)
    assert bias.tolist() == pytest.approx([0.491, -0.568], rel=0, abs=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_excluded_groups_get_plain_sgd_with_momentum(nesterov):
    torch.manual_seed(0)
    bias = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    norm_weight = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))  # an explicit lars_adaptation False
    lars = LARS(
        [
            # a weight decay on the group must be ignored too: excluded parameters get none
            {"params": [bias], "apply_weight_decay": False, "weight_decay": 0.5},
            {"params": [norm_weight], "apply_weight_decay": True, "lars_adaptation": False, "weight_decay": 0.5},
        ],
        lr=LR,
        momentum=MOMENTUM,
        trust_coefficient=ETA,
        nesterov=nesterov,
    )
    bias_copy, norm_copy = (torch.nn.Parameter(p.detach().clone()) for p in (bias, norm_weight))
    sgd = torch.optim.SGD([bias_copy, norm_copy], lr=LR, momentum=MOMENTUM, nesterov=nesterov, weight_decay=0.0)
    for _ in range(3):
        gradients = [torch.randn_like(bias), torch.randn_like(norm_weight)]
        for parameter, copy, gradient in zip((bias, norm_weight), (bias_copy, norm_copy), gradients):
            parameter.grad, copy.grad = gradient.clone(), gradient.clone()
        lars.step()
        sgd.step()
    torch.testing.assert_close(bias, bias_copy, rtol=0, atol=1e-14)
    torch.testing.assert_close(norm_weight, norm_copy, rtol=0, atol=1e-14)


def test_adaptation_defaults_follow_apply_weight_decay_and_an_explicit_flag_wins():
    assert LARS.adapted({}) is True
    assert LARS.adapted({"apply_weight_decay": True}) is True
    assert LARS.adapted({"apply_weight_decay": False}) is False
    assert LARS.adapted({"apply_weight_decay": False, "lars_adaptation": True}) is True


def test_zero_weight_gets_trust_ratio_one():
    weight = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    optimizer = LARS(
        [{"params": [weight], "apply_weight_decay": True, "weight_decay": WEIGHT_DECAY}], lr=LR, trust_coefficient=ETA
    )
    step_with(optimizer, {weight: [0.1, -0.2, 0.3, 0.4]})
    # ||w|| = 0: the update is the gradient itself (weight decay of a zero weight is zero), not eta * 0 = 0
    assert weight.flatten().tolist() == pytest.approx([-0.01, 0.02, -0.03, -0.04], rel=0, abs=1e-15)
    assert weight.abs().sum() > 0  # a zero-initialised weight learns


def test_lr_and_weight_decay_set_on_the_group_between_steps_are_used():
    weight, bias = tiny_parameters()
    optimizer = LARS(engine_groups(weight, bias), lr=LR, momentum=MOMENTUM, trust_coefficient=ETA, eps=EPS)
    g1, g2 = [0.1, -0.2, 0.3, 0.4], [-0.3, 0.1, 0.2, 0.0]
    step_with(optimizer, {weight: g1, bias: [0.1, 0.2]})
    # what the engine's begin_step does: a new lr on every group, a new weight decay on the decayed ones
    for group in optimizer.param_groups:
        group["lr"] = 0.05
        if group["apply_weight_decay"]:
            group["weight_decay"] = 0.2
    step_with(optimizer, {weight: g2, bias: [-0.1, 0.3]})

    w1, mu1 = lars_reference_step([1.0, 2.0, 3.0, 4.0], g1, [0.0] * 4, lr=0.1, wd=0.01)
    w2, _ = lars_reference_step(w1, g2, mu1, lr=0.05, wd=0.2)
    assert weight.flatten().tolist() == pytest.approx(w2, rel=0, abs=1e-14)
    # the first step's lr and weight decay would give another weight: the test tells the two apart
    w2_unchanged, _ = lars_reference_step(w1, g2, mu1, lr=0.1, wd=0.01)
    assert max(abs(a - b) for a, b in zip(w2, w2_unchanged)) > 1e-4
    # bias: b1 = [0.49, -0.52], mu2 = [-0.01, 0.48], b2 = b1 - 0.05 mu2
    assert bias.tolist() == pytest.approx([0.4905, -0.544], rel=0, abs=1e-14)


def test_nesterov_lars_matches_the_formula():
    weight = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    optimizer = LARS(
        [{"params": [weight], "weight_decay": WEIGHT_DECAY}],
        lr=LR,
        momentum=MOMENTUM,
        trust_coefficient=ETA,
        eps=EPS,
        nesterov=True,
    )
    step_with(optimizer, {weight: [0.1, -0.2, 0.3, 0.4]})
    u = [0.11, -0.18, 0.33, 0.44]
    q = 0.001 * math.sqrt(30.0) / (math.sqrt(0.347) + EPS)
    # mu = q u; the step is q u + 0.9 mu = 1.9 q u
    assert weight.flatten().tolist() == pytest.approx(
        [w - 0.1 * 1.9 * q * ui for w, ui in zip([1.0, 2.0, 3.0, 4.0], u)], rel=0, abs=1e-14
    )


def test_closure_is_evaluated_with_gradients_and_its_loss_returned():
    weight = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    optimizer = LARS([weight], lr=LR)

    def closure():
        optimizer.zero_grad()
        loss = (weight**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == pytest.approx(30.0)
    assert not torch.equal(weight.detach(), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    gradients = [[torch.randn(2, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)] for _ in range(4)]

    def run(parameters, optimizer, steps):
        for step_gradients in steps:
            for parameter, gradient in zip(parameters, step_gradients):
                parameter.grad = gradient.clone()
            optimizer.step()

    weight, bias = tiny_parameters()
    uninterrupted = LARS(engine_groups(weight, bias), lr=LR, momentum=MOMENTUM, trust_coefficient=ETA)
    run((weight, bias), uninterrupted, gradients)

    first_weight, first_bias = tiny_parameters()
    first = LARS(engine_groups(first_weight, first_bias), lr=LR, momentum=MOMENTUM, trust_coefficient=ETA)
    run((first_weight, first_bias), first, gradients[:2])
    saved = first.state_dict()
    assert {"momentum_buffer"} == set(saved["state"][0]) == set(saved["state"][1])

    resumed_weight = torch.nn.Parameter(first_weight.detach().clone())
    resumed_bias = torch.nn.Parameter(first_bias.detach().clone())
    # a fresh optimizer built with other hyper-parameters: loading brings back the saved ones and the buffers
    resumed = LARS(engine_groups(resumed_weight, resumed_bias), lr=1.0, momentum=0.5, trust_coefficient=0.02)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["momentum"] == MOMENTUM and resumed.param_groups[0]["trust_coefficient"] == ETA
    run((resumed_weight, resumed_bias), resumed, gradients[2:])

    assert torch.equal(resumed_weight, weight) and torch.equal(resumed_bias, bias)
    assert torch.equal(
        resumed.state[resumed_weight]["momentum_buffer"], uninterrupted.state[weight]["momentum_buffer"]
    )


def test_lars_rejects_bad_arguments():
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="momentum"):
        LARS([weight], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS([weight], lr=0.1, trust_coefficient=0.0)
    with pytest.raises(ValueError, match="lr"):
        LARS([weight], lr=-0.1)


# ----- build_optimizer and apply_optimizer_settings ------------------------------------------------


def model_groups():
    """A Linear + LayerNorm split as ``decay_parameter_groups`` does: weights without a weight_decay key (the
    engine sets it every step), biases and norms with weight_decay 0.0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decayed = [p for name, p in model.named_parameters() if p.ndim > 1]
    not_decayed = [p for name, p in model.named_parameters() if p.ndim <= 1]
    return model, [
        {"params": decayed, "apply_weight_decay": True},
        {"params": not_decayed, "weight_decay": 0.0, "apply_weight_decay": False},
    ]


def optimizer_step(model, optimizer):
    optimizer.zero_grad()
    model(torch.linspace(-1.0, 1.0, 6).reshape(2, 3)).pow(2).sum().backward()
    optimizer.step()


@pytest.mark.parametrize(
    "name, expected_class, expected_settings",
    [
        ("adamw", torch.optim.AdamW, {"betas": (0.8, 0.95), "eps": 1e-6}),
        ("sgd", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
        ("lars", LARS, {"momentum": 0.8, "nesterov": True, "trust_coefficient": 0.02, "eps": 1e-6}),
    ],
)
def test_build_optimizer_class_and_group_settings(name, expected_class, expected_settings):
    _, groups = model_groups()
    optimizer = build_optimizer(
        name,
        groups,
        learning_rate=0.3,
        betas=(0.8, 0.95),
        eps=1e-6,
        momentum=0.8,
        nesterov=True,
        trust_coefficient=0.02,
    )
    assert type(optimizer) is expected_class
    assert len(optimizer.param_groups) == 2
    for group in optimizer.param_groups:
        assert group["lr"] == 0.3
        for key, value in expected_settings.items():
            assert group[key] == value, (name, key)
    # the groups' own weight decay is kept: the excluded group's 0.0 is not overridden by a global value
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    assert optimizer.param_groups[0]["apply_weight_decay"] and not optimizer.param_groups[1]["apply_weight_decay"]
    if name == "lars":
        assert LARS.adapted(optimizer.param_groups[0]) and not LARS.adapted(optimizer.param_groups[1])


def test_build_adamw_is_exactly_torch_adamw():
    model, groups = model_groups()
    reference_model, reference_groups = model_groups()
    built = build_optimizer("adamw", groups, learning_rate=1e-3, betas=(0.9, 0.95), eps=1e-7)
    reference = torch.optim.AdamW(reference_groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-7)
    assert built.defaults == reference.defaults
    assert [{k: v for k, v in g.items() if k != "params"} for g in built.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in reference.param_groups
    ]
    for step in range(3):
        for optimizer in (built, reference):
            optimizer.param_groups[0]["weight_decay"] = 0.04 + 0.01 * step  # the engine's per-step weight decay
        optimizer_step(model, built)
        optimizer_step(reference_model, reference)
    for parameter, reference_parameter in zip(model.parameters(), reference_model.parameters()):
        assert torch.equal(parameter, reference_parameter)


def test_build_optimizer_rejects_an_unknown_name():
    _, groups = model_groups()
    with pytest.raises(ValueError, match="'adam'") as error:
        build_optimizer("adam", groups, learning_rate=0.1)
    for name in OPTIMIZERS:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="must be one of"):
        apply_optimizer_settings(torch.optim.SGD(groups, lr=0.1), "adam")


class Wrapper:
    """An optimizer wrapper (accelerate's, DeepSpeed's) holding the real optimizer under ``.optimizer``, whose
    ``param_groups`` are copies: only following ``.optimizer`` reaches the groups that the step reads."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return [dict(group) for group in self.optimizer.param_groups]


def test_apply_optimizer_settings_after_load_state_dict():
    model, groups = model_groups()
    old = build_optimizer("lars", groups, learning_rate=0.1, momentum=0.9, trust_coefficient=0.001, eps=1e-8)
    optimizer_step(model, old)
    saved = old.state_dict()

    _, new_groups = model_groups()
    resumed = build_optimizer(
        "lars", new_groups, learning_rate=0.1, momentum=0.5, trust_coefficient=0.02, eps=1e-6, nesterov=True
    )
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["momentum"] == 0.9  # loading brought the saved value back
    for group in resumed.param_groups:
        group["lr"], group["weight_decay"] = 0.123, 0.0  # set by the engine: must be left alone
    apply_optimizer_settings(
        Wrapper(Wrapper(resumed)), "lars", momentum=0.5, trust_coefficient=0.02, eps=1e-6, nesterov=True
    )
    for group in resumed.param_groups:
        assert (group["momentum"], group["trust_coefficient"], group["eps"], group["nesterov"]) == (
            0.5,
            0.02,
            1e-6,
            True,
        )
        assert (group["lr"], group["weight_decay"]) == (0.123, 0.0)
    assert resumed.state_dict()["state"][0]["momentum_buffer"].abs().sum() > 0  # the loaded buffers are kept

    model, groups = model_groups()
    adamw = build_optimizer("adamw", groups, learning_rate=1e-3, betas=(0.9, 0.999), eps=1e-8)
    optimizer_step(model, adamw)
    saved = adamw.state_dict()
    _, new_groups = model_groups()
    resumed_adamw = build_optimizer("adamw", new_groups, learning_rate=1e-3, betas=(0.8, 0.95), eps=1e-6)
    resumed_adamw.load_state_dict(saved)
    assert tuple(resumed_adamw.param_groups[0]["betas"]) == (0.9, 0.999)
    apply_optimizer_settings(Wrapper(resumed_adamw), "adamw", betas=(0.8, 0.95), eps=1e-6)
    for group in resumed_adamw.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
        assert "momentum" not in group  # only adamw's settings are written on an AdamW

    _, sgd_groups = model_groups()
    sgd = build_optimizer("sgd", sgd_groups, learning_rate=0.1, momentum=0.9)
    apply_optimizer_settings(sgd, "sgd", momentum=0.7, nesterov=True, betas=(0.1, 0.2))
    assert all(g["momentum"] == 0.7 and g["nesterov"] and "betas" not in g for g in sgd.param_groups)
