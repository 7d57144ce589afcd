"""The optimizers a recipe can choose (``training.optimizer``): AdamW, SGD with momentum, and LARS.

The engines build them over the method's parameter groups (``PretrainingMethod.parameter_groups``), whose
``apply_weight_decay`` flag marks the weights (biases and normalisation parameters have it False and a weight
decay of 0). Each step the method sets ``group["lr"]`` and, on the flagged groups, ``group["weight_decay"]`` from
schedules that are functions of the step, so every optimizer here reads both from the group at each step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

OPTIMIZERS = ("adamw", "sgd", "lars")


class LARS(torch.optim.Optimizer):
    r"""Layer-wise adaptive rate scaling (You et al., 2017, "Large Batch Training of Convolutional Networks",
    arXiv:1708.03888): SGD with momentum whose update of each parameter tensor is rescaled by a trust ratio, as
    SimCLR, BYOL and VICReg train at large batch.

    For each parameter tensor ``w`` with gradient ``g``, in a group with lr ``lr`` and weight decay ``wd`` read from
    the group at this step::

        u  = g + wd * w                                          (weight decay added to the gradient)
        q  = trust_coefficient * ||w|| / (||u|| + eps)            if ||w|| > 0 and ||u|| > 0, else 1
        mu = momentum * mu + q * u                               (``momentum_buffer``, zero before the first step)
        w  = w - lr * mu                                         (Nesterov: w - lr * (q * u + momentum * mu))

    This is the formula of the VICReg and BYOL references (with ``eps = 0`` it is exactly theirs; the default
    1e-8 only guards against a vanishing ``||u||``). The paper writes the denominator ``||g|| + wd * ||w||``, an
    upper bound of ``||u||``; SimCLR's TensorFlow LARS folds ``lr * q`` into the momentum buffer, which differs
    from this one only when the lr changes between steps. Norms are Frobenius norms of the whole tensor.

    Groups with ``lars_adaptation`` False get neither the trust ratio nor weight decay (plain SGD with momentum,
    ``mu = momentum * mu + g``). A group without the key follows its ``apply_weight_decay`` flag when it has one
    (so biases and normalisation parameters, whose groups have it False, are excluded as in the SimCLR, BYOL and
    VICReg references), else it is adapted.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (the engines set ``group["lr"]`` every step).
        momentum: momentum in [0, 1).
        weight_decay: default weight decay of a group (the engines set it every step on the decayed groups).
        trust_coefficient: eta, the scale of the trust ratio (0.001 in the LARS paper and lightly).
        eps: added to ``||u||`` in the trust ratio's denominator.
        nesterov: Nesterov momentum.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        nesterov: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    @staticmethod
    def adapted(group: dict) -> bool:
        """Whether a group gets the trust ratio and weight decay (see the class docstring)."""
        return bool(group.get("lars_adaptation", group.get("apply_weight_decay", True)))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One update of every parameter that has a gradient; returns ``closure()`` when one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            parameters = [p for p in group["params"] if p.grad is not None]
            if not parameters:
                continue
            if any(p.grad.is_sparse for p in parameters):
                raise RuntimeError("LARS does not support sparse gradients")
            updates = [p.grad for p in parameters]  # never modified in place below
            if self.adapted(group):
                weight_decay, eta, eps = group["weight_decay"], group["trust_coefficient"], group["eps"]
                if weight_decay:
                    updates = torch._foreach_add(updates, parameters, alpha=weight_decay)
                weight_norms = torch._foreach_norm(parameters)
                update_norms = torch._foreach_norm(updates)
                # on the device, without a sync: 1 where a norm is 0 (a zero-initialised weight still learns)
                ratios = [
                    torch.where((w_norm > 0) & (u_norm > 0), eta * w_norm / (u_norm + eps), torch.ones_like(w_norm))
                    for w_norm, u_norm in zip(weight_norms, update_norms)
                ]
                updates = torch._foreach_mul(updates, ratios)
            momentum = group["momentum"]
            buffers = []
            for parameter in parameters:
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, updates)
            steps = torch._foreach_add(updates, buffers, alpha=momentum) if group["nesterov"] else buffers
            torch._foreach_add_(parameters, steps, alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str,
    param_groups: Iterable[dict],
    *,
    learning_rate: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """``name`` (one of ``OPTIMIZERS``) over ``param_groups``; each group's weight decay comes from the group
    (``weight_decay`` 0.0 on biases and norms, the schedule's value set per step on the others).

    - ``adamw``: ``torch.optim.AdamW(groups, lr, betas, eps)``;
    - ``sgd``: ``torch.optim.SGD(groups, lr, momentum, nesterov)``;
    - ``lars``: ``LARS(groups, lr, momentum, trust_coefficient, eps, nesterov)``.
    """
    groups = list(param_groups)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov)
    if name == "lars":
        return LARS(
            groups,
            lr=learning_rate,
            momentum=momentum,
            trust_coefficient=trust_coefficient,
            eps=eps,
            nesterov=nesterov,
        )
    raise ValueError(f"unknown optimizer {name!r}: training.optimizer must be one of {list(OPTIMIZERS)}")


def apply_optimizer_settings(
    optimizer,
    name: str,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
    trust_coefficient: float = 0.001,
) -> None:
    """Set the recipe's hyper-parameters of optimizer ``name`` on every param group of ``optimizer`` and of the
    optimizers it wraps (following ``.optimizer``: accelerate's, DeepSpeed's). Call it after loading an optimizer
    state, which brings back the saved values. ``adamw`` takes ``betas`` and ``eps``; ``sgd`` ``momentum`` and
    ``nesterov``; ``lars`` ``momentum``, ``nesterov``, ``trust_coefficient`` and ``eps``. The lr and weight decay
    are left alone: the method sets them every step."""
    settings = {
        "adamw": {"betas": tuple(betas), "eps": eps},
        "sgd": {"momentum": momentum, "nesterov": nesterov},
        "lars": {"momentum": momentum, "nesterov": nesterov, "trust_coefficient": trust_coefficient, "eps": eps},
    }
    if name not in settings:
        raise ValueError(f"unknown optimizer {name!r}: training.optimizer must be one of {list(OPTIMIZERS)}")
    wrapper = optimizer
    while wrapper is not None:  # a wrapper's param_groups may be its inner optimizer's list or a copy of it
        for group in getattr(wrapper, "param_groups", ()):
            group.update(settings[name])
        wrapper = getattr(wrapper, "optimizer", None)
