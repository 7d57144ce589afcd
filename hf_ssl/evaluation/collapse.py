"""Collapse metrics for the embeddings of any method, and a detector that reads them from the training logs.

Two ways a self-supervised run fails without raising an error:

- **constant collapse**: every image gets (nearly) the same embedding. ``embedding_std`` falls towards 0
  and ``effective_rank`` towards 1 or below.
- **uniform collapse** (DINO-style heads): the teacher outputs the same flat distribution over its
  ``out_dim`` prototypes for every image; its entropy sits at ln(out_dim) and so does the loss.

``collapse_metrics`` measures a batch of embeddings; ``CollapseDetector`` watches the logged numbers over
a window of optimizer steps and returns one warning per episode, with what to try.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Mapping

import torch
import torch.nn.functional as F


def _check_embeddings(embeddings: torch.Tensor, min_rows: int = 1) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be a (N, D) matrix, got shape {tuple(embeddings.shape)}")
    if embeddings.shape[0] < min_rows:
        raise ValueError(f"embeddings need at least {min_rows} rows (images), got {embeddings.shape[0]}")


@torch.no_grad()
def embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Standard deviation over the batch of the L2-normalised embeddings, averaged over dimensions.

    The same number ``DinoForPreTraining`` logs. Embeddings spread uniformly on the unit sphere give
    ~1/sqrt(D); a collapsed (constant) representation gives 0.

    Args:
        embeddings: (N, D) with N >= 2.
    Returns:
        float32 scalar tensor.
    """
    _check_embeddings(embeddings, min_rows=2)
    return F.normalize(embeddings.detach().float(), dim=-1).std(dim=0).mean()


@torch.no_grad()
def effective_rank(embeddings: torch.Tensor) -> torch.Tensor:
    """Effective rank of the centred embedding matrix (Roy & Vetterli 2007; RankMe, Garrido et al. 2023).

    exp of the Shannon entropy of the singular values normalised to sum to 1: 1 for rank-1 data, D for
    isotropic data with N >> D, and in between when a few directions dominate. The rows are centred first,
    so a constant offset shared by every embedding does not count as a direction.

    Computed in float64 (float32 on MPS, which has no float64) from the eigenvalues of the smaller Gram
    matrix (D x D when N >= D): the same singular values as an SVD of the (N, D) matrix, much faster for
    N >> D. Singular values below the rounding floor are dropped, so noise adds no rank: below
    4 * eps * ||X||_F (eps of the input's dtype, or of the compute dtype if coarser: the most that
    rounding the input can add) or below 2 * sqrt(eps_compute) * the largest one (the accuracy of the
    Gram route). A float32 rank-1 matrix thus has effective rank 1, not 1 + noise. Constant embeddings
    (zero after centring) have effective rank **0**, their true rank, rather than NaN; embeddings with
    NaN or inf give NaN.

    Args:
        embeddings: (N, D).
    Returns:
        float32 scalar tensor in [0, min(N, D)].
    """
    _check_embeddings(embeddings)
    zero = torch.zeros((), dtype=torch.float32, device=embeddings.device)
    embeddings = embeddings.detach()
    if not bool(torch.isfinite(embeddings).all()):  # NaN/inf in, NaN out, rather than a LAPACK error
        return torch.full((), math.nan, dtype=torch.float32, device=embeddings.device)
    if bool((embeddings == embeddings[:1]).all()):  # exactly constant: skip the rounding of the mean
        return zero
    dtype = torch.float32 if embeddings.device.type == "mps" else torch.float64
    values = embeddings.to(dtype)
    centred = values - values.mean(dim=0, keepdim=True)
    num_rows, dimension = centred.shape
    gram = centred.T @ centred if num_rows >= dimension else centred @ centred.T
    singular_values = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    compute_eps = torch.finfo(dtype).eps
    input_eps = torch.finfo(embeddings.dtype).eps if embeddings.is_floating_point() else compute_eps
    # rounding perturbs each entry by at most eps * |entry|: a perturbation of norm <= eps * ||X||_F
    tolerance = torch.maximum(
        4 * max(input_eps, compute_eps) * torch.linalg.matrix_norm(values),
        2 * math.sqrt(compute_eps) * singular_values.max(),
    )
    singular_values = singular_values[singular_values > tolerance]
    if singular_values.numel() == 0:
        return zero
    probabilities = singular_values / singular_values.sum()
    entropy = -(probabilities * probabilities.log()).sum()
    return entropy.exp().float()


@torch.no_grad()
def mean_l2_norm(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean L2 norm of the (N, D) embeddings, before any normalisation: float32 scalar tensor."""
    _check_embeddings(embeddings)
    return embeddings.detach().float().norm(dim=-1).mean()


def collapse_metrics(embeddings: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """``embedding_std``, ``effective_rank`` and ``mean_l2_norm`` of (N, D) embeddings, as Python floats
    under ``<prefix><name>`` (e.g. ``prefix="teacher_"``), ready for ``Trainer.log``."""
    return {
        f"{prefix}embedding_std": float(embedding_std(embeddings)),
        f"{prefix}effective_rank": float(effective_rank(embeddings)),
        f"{prefix}mean_l2_norm": float(mean_l2_norm(embeddings)),
    }


# what to try whatever the method; a method adds its own knobs first (``method_advice``, e.g. DINO's temperatures)
UNIFORM_COLLAPSE_ADVICE = (
    "check that the augmentations do not destroy the image (look at a few augmented crops); a lower learning rate"
)
CONSTANT_COLLAPSE_ADVICE = (
    "check that the augmentations do not destroy the image (all-black, all-grey or fully solarised crops "
    "give every image the same embedding: look at a few augmented crops); a lower learning rate or a longer warmup"
)


class CollapseDetector:
    """Watches per-step training logs for collapse and returns one warning per episode.

    Feed it every logged dict with ``update(logs, step)``. It reads, when present:

    - ``loss`` and ``teacher_entropy_ratio`` (or ``teacher_entropy`` with ``max_entropy``, ``out_dim`` or
      the ``out_dim`` given here; the loss check needs ln(out_dim) from one of these, or from
      teacher_entropy / teacher_entropy_ratio as the DINO method logs them) for **uniform collapse**: the teacher
      entropy stays above ``entropy_ratio_threshold`` x ln(out_dim), or the loss stays within ``loss_tolerance``
      (relative) of ln(out_dim) and does not go down by more than ``min_loss_decrease`` x ln(out_dim) over the window;
    - ``embedding_std`` and ``effective_rank`` for **constant collapse**: ``embedding_std`` stays below
      ``embedding_std_factor / sqrt(D)`` (D from ``embedding_dim`` here or in the logs; ``embedding_std_threshold``
      overrides, and without either the threshold is 1e-3 = 0.1/sqrt(10000)), or ``effective_rank`` stays
      below ``min_effective_rank``.

    A symptom must hold at every log for at least ``patience`` optimizer steps (from the first log that
    showed it to the current one) before the detector warns. Logs without the keys of a check (k-NN
    results, the end-of-training summary) leave that check as it was. After a warning the detector is
    quiet until a log shows that check healthy again, which ends the episode.

    Args:
        patience: steps a symptom must last before a warning.
        out_dim: number of prototypes of a DINO-style head, for ln(out_dim) when the logs lack it.
        embedding_dim: D of the embeddings behind ``embedding_std``.
        method_advice: the method's own advice, ``{"uniform": ..., "constant": ...}`` (either may be missing), given
            before the generic advice in the warnings (DINO: its temperatures, centering and head); None: generic only.
    """

    def __init__(
        self,
        patience: int = 100,
        out_dim: int | None = None,
        embedding_dim: int | None = None,
        method_advice: dict[str, str] | None = None,
        entropy_ratio_threshold: float = 0.98,
        loss_tolerance: float = 0.01,
        min_loss_decrease: float = 0.001,
        embedding_std_factor: float = 0.1,
        embedding_std_threshold: float | None = None,
        min_effective_rank: float = 1.5,
    ):
        if patience < 0:
            raise ValueError(f"patience must be >= 0 steps, got {patience}")
        if out_dim is not None and out_dim < 2:
            raise ValueError(f"out_dim must be >= 2, got {out_dim}")
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.patience = patience
        self.out_dim = out_dim
        self.embedding_dim = embedding_dim
        self.method_advice = dict(method_advice or {})
        self.entropy_ratio_threshold = entropy_ratio_threshold
        self.loss_tolerance = loss_tolerance
        self.min_loss_decrease = min_loss_decrease
        self.embedding_std_factor = embedding_std_factor
        self.embedding_std_threshold = embedding_std_threshold
        self.min_effective_rank = min_effective_rank
        self.reset()

    def reset(self) -> None:
        """Forget every streak and episode."""
        self._calls = 0
        # first step of the current run of symptomatic logs, per signal (None: healthy or never seen)
        self._streak_start: dict[str, int | None] = {"entropy": None, "loss": None, "std": None, "rank": None}
        # (step, loss) of the loss streak, trimmed to the last `patience` steps, for the "not decreasing" test
        self._loss_window: deque[tuple[int, float]] = deque()
        self._warned = {"uniform": False, "constant": False}

    # ----- one log -----------------------------------------------------------------------------
    def update(self, logs: Mapping[str, float], step: int | None = None) -> str | None:
        """Reads one log; returns a warning message when a collapse episode is detected, else None.

        Args:
            logs: logged numbers (``Trainer.log`` dict); non-numeric entries are ignored.
            step: optimizer step of the log (``state.global_step``); default: the number of calls so far.
        """
        self._calls += 1
        step = self._calls if step is None else int(step)
        values = {key: float(value) for key, value in logs.items() if _is_number(value)}
        messages = [self._uniform(values, step), self._constant(values, step)]
        messages = [message for message in messages if message is not None]
        return "\n".join(messages) if messages else None

    __call__ = update

    def _track(self, signal: str, symptomatic: bool | None, step: int) -> int:
        """Updates a signal's streak; returns for how many steps it has been symptomatic (-1: not now)."""
        if symptomatic is None:  # the log does not carry this signal
            start = self._streak_start[signal]
            return -1 if start is None else step - start
        if not symptomatic:
            self._streak_start[signal] = None
            return -1
        if self._streak_start[signal] is None:
            self._streak_start[signal] = step
        return step - self._streak_start[signal]

    def _max_entropy(self, values: dict[str, float]) -> float | None:
        """ln(out_dim) from the logs, from ``out_dim`` given here, or from teacher_entropy / its ratio."""
        if "max_entropy" in values:
            return values["max_entropy"]
        out_dim = values.get("out_dim", self.out_dim)
        if out_dim and out_dim > 1:
            return math.log(out_dim)
        if values.get("teacher_entropy_ratio") and "teacher_entropy" in values:
            return values["teacher_entropy"] / values["teacher_entropy_ratio"]
        return None

    def _uniform(self, values: dict[str, float], step: int) -> str | None:
        max_entropy = self._max_entropy(values)
        ratio = values.get("teacher_entropy_ratio")
        if ratio is None and "teacher_entropy" in values and max_entropy:
            ratio = values["teacher_entropy"] / max_entropy
        entropy_high = None if ratio is None else ratio > self.entropy_ratio_threshold
        loss = values.get("loss")
        loss_near_max = None
        if loss is not None and max_entropy and math.isfinite(loss):
            loss_near_max = abs(loss - max_entropy) <= self.loss_tolerance * max_entropy

        entropy_steps = self._track("entropy", entropy_high, step)
        loss_steps = self._track("loss", loss_near_max, step)
        if loss_near_max:
            self._loss_window.append((step, loss))
            # keep one entry at or before the window start, so the comparison spans `patience` steps
            while len(self._loss_window) > 1 and self._loss_window[1][0] <= step - self.patience:
                self._loss_window.popleft()
        elif loss_near_max is False:
            self._loss_window.clear()

        loss_stuck = False
        if loss_steps >= self.patience and loss_near_max and self._loss_window:
            first_loss = self._loss_window[0][1]
            loss_stuck = first_loss - loss < self.min_loss_decrease * max_entropy
        entropy_stuck = entropy_steps >= self.patience and bool(entropy_high)

        # a healthy log ends the episode: one signal fine and the other not symptomatic
        if (entropy_high is False and loss_near_max is not True) or (
            loss_near_max is False and entropy_high is not True
        ):
            self._warned["uniform"] = False
        if not (entropy_stuck or loss_stuck) or self._warned["uniform"]:
            return None
        self._warned["uniform"] = True
        evidence = []
        if entropy_stuck:
            evidence.append(
                f"teacher entropy is {ratio:.3f} x ln(out_dim) (threshold {self.entropy_ratio_threshold}) "
                f"for {entropy_steps} steps"
            )
        if loss_stuck:
            evidence.append(
                f"the loss {loss:.4f} has stayed within {self.loss_tolerance:.0%} of ln(out_dim) = {max_entropy:.4f} "
                f"without going down for {loss_steps} steps"
            )
        return (
            f"Uniform collapse suspected at step {step}: {'; '.join(evidence)}. The teacher gives every image the "
            f"same flat distribution, so the student learns nothing. Try: {self._advice('uniform')}."
        )

    def _std_threshold(self, values: dict[str, float]) -> tuple[float, str]:
        if self.embedding_std_threshold is not None:
            return self.embedding_std_threshold, "embedding_std_threshold"
        dimension = values.get("embedding_dim", self.embedding_dim)
        if dimension:
            return self.embedding_std_factor / math.sqrt(
                dimension
            ), f"{self.embedding_std_factor}/sqrt({int(dimension)})"
        return 1e-3, "0.1/sqrt(10000), embedding_dim unknown"

    def _constant(self, values: dict[str, float], step: int) -> str | None:
        threshold, threshold_source = self._std_threshold(values)
        std = values.get("embedding_std")
        rank = values.get("effective_rank")
        std_low = None if std is None or not math.isfinite(std) else std < threshold
        rank_low = None if rank is None or not math.isfinite(rank) else rank < self.min_effective_rank
        std_steps = self._track("std", std_low, step)
        rank_steps = self._track("rank", rank_low, step)
        std_stuck = bool(std_low) and std_steps >= self.patience
        rank_stuck = bool(rank_low) and rank_steps >= self.patience

        if (std_low is False and rank_low is not True) or (rank_low is False and std_low is not True):
            self._warned["constant"] = False
        if not (std_stuck or rank_stuck) or self._warned["constant"]:
            return None
        self._warned["constant"] = True
        evidence = []
        if std_stuck:
            evidence.append(f"embedding_std {std:.2e} < {threshold:.2e} ({threshold_source}) for {std_steps} steps")
        if rank_stuck:
            evidence.append(f"effective_rank {rank:.3f} < {self.min_effective_rank} for {rank_steps} steps")
        return (
            f"Constant collapse suspected at step {step}: {'; '.join(evidence)}. Every image gets nearly the same "
            f"embedding. Try: {self._advice('constant')}."
        )

    def _advice(self, kind: str) -> str:
        generic = UNIFORM_COLLAPSE_ADVICE if kind == "uniform" else CONSTANT_COLLAPSE_ADVICE
        own = self.method_advice.get(kind)
        return f"{own}. In general: {generic}" if own else generic


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):  # int, float and numpy scalars
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1
