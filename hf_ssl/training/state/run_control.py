"""When a run stops early, shared by both engines: SIGTERM/SIGINT, a time budget, early stopping.

``RunControl.check`` is called once per optimizer step on every process. It returns why the run must
save a checkpoint and stop (or None), and every process gets the same answer: the flags are combined
with one all-reduce, because a signal, the clock and the k-NN metric (main process only) can differ
between processes, and a process that stops alone leaves the others waiting forever.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

STOP_REASONS = ("signal", "max_time", "early_stopping")


class InterruptHandler:
    """Turns SIGTERM/SIGINT into a flag the training loop reads at the end of the step (which then saves
    a checkpoint and stops). A second SIGINT interrupts at once (KeyboardInterrupt), as usual.

    Only the main thread can install handlers; elsewhere (a notebook cell run in a thread) this does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> InterruptHandler:
        if threading.current_thread() is not threading.main_thread():
            logger.info("not in the main thread: SIGTERM/SIGINT will not trigger a checkpoint")
            return self
        for number in self.signals:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _handle(self, number, frame) -> None:
        name = signal.Signals(number).name
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = name
        logger.warning("%s received: saving a checkpoint at the end of this step, then stopping", name)


@dataclass
class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` evaluations.

    ``update(value)`` is called with each new value of the metric (e.g. every k-NN evaluation) and
    returns True once patience runs out. Its state goes into checkpoints (``state_dict``).
    """

    metric: str
    patience: int
    min_delta: float = 0.0
    greater_is_better: bool = True
    best: float | None = None
    evaluations_without_improvement: int = 0

    def __post_init__(self):
        if self.patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"early_stopping_min_delta must be >= 0, got {self.min_delta}")

    def improves(self, value: float) -> bool:
        if self.best is None:
            return math.isfinite(value)
        gain = value - self.best if self.greater_is_better else self.best - value
        return gain > self.min_delta

    def update(self, value: float) -> bool:
        if self.improves(value):
            self.best = float(value)
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        return self.evaluations_without_improvement >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "evaluations_without_improvement": self.evaluations_without_improvement}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.evaluations_without_improvement = int(state.get("evaluations_without_improvement", 0))


@dataclass
class RunControl:
    """Decides, the same way on every process, whether a run saves and stops after this step.

    Args:
        max_time_seconds: stop once this much wall time has passed since ``start`` (None: no limit); meant
            for sessions that get cut (Colab, Kaggle, a cluster's time limit): each resumed session gets the
            whole budget again.
        early_stopping: an ``EarlyStopping`` fed by ``observe`` (None: off).
        reduce_max: ``fn(tensor) -> tensor``, the element-wise max over processes (identity for one process).
        handle_signals: install the SIGTERM/SIGINT handler in ``start``.
    """

    max_time_seconds: float | None = None
    early_stopping: EarlyStopping | None = None
    reduce_max: Callable[[torch.Tensor], torch.Tensor] | None = None
    handle_signals: bool = True
    stop_reason: str | None = None
    _interrupts: InterruptHandler = field(default_factory=InterruptHandler)
    _started_at: float | None = None
    _early_stop_pending: bool = False

    def start(self) -> None:
        self._started_at = time.monotonic()
        self.stop_reason = None
        if self.handle_signals:
            self._interrupts.install()

    def finish(self) -> None:
        self._interrupts.uninstall()

    @property
    def elapsed_seconds(self) -> float:
        return 0.0 if self._started_at is None else time.monotonic() - self._started_at

    def observe(self, logs: dict[str, Any]) -> None:
        """Feed logged metrics (every process may call it; only those that saw the metric count)."""
        if self.early_stopping is None:
            return
        value = logs.get(self.early_stopping.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.early_stopping.update(float(value)):
                self._early_stop_pending = True
            logger.info(
                "early stopping: %s=%.4f, best %.4f, %d/%d evaluations without improvement",
                self.early_stopping.metric,
                value,
                self.early_stopping.best if self.early_stopping.best is not None else float("nan"),
                self.early_stopping.evaluations_without_improvement,
                self.early_stopping.patience,
            )

    def check(self, device: torch.device | str = "cpu") -> str | None:
        """Call once per optimizer step on every process (a collective when there are several).
        Returns the reason to save and stop (``"signal"``, ``"max_time"``, ``"early_stopping"``) or None."""
        flags = torch.tensor(
            [
                float(self._interrupts.received is not None),
                float(self.max_time_seconds is not None and self.elapsed_seconds >= self.max_time_seconds),
                float(self._early_stop_pending),
            ],
            device=device,
        )
        if self.reduce_max is not None:
            flags = self.reduce_max(flags)
        for reason, flag in zip(STOP_REASONS, flags.tolist()):
            if flag > 0:
                self.stop_reason = reason
                return reason
        return None

    def describe_stop(self) -> str:
        if self.stop_reason == "signal":
            return f"stopped by {self._interrupts.received or 'a signal on another process'}"
        if self.stop_reason == "max_time":
            return f"stopped after max_time_seconds={self.max_time_seconds:g} ({self.elapsed_seconds:.0f} s)"
        if self.stop_reason == "early_stopping":
            stopping = self.early_stopping
            return (
                f"early stopping: {stopping.metric} did not improve by more than {stopping.min_delta} for "
                f"{stopping.patience} evaluations (best {stopping.best})"
            )
        return "finished"


def build_run_control(args, reduce_max: Callable[[torch.Tensor], torch.Tensor] | None) -> RunControl:
    """The ``RunControl`` of a run's training arguments (any ``PretrainingArguments``)."""
    early_stopping = None
    if args.early_stopping_patience:
        early_stopping = EarlyStopping(
            metric=args.metric_for_best_model,
            patience=args.early_stopping_patience,
            min_delta=args.early_stopping_min_delta,
            greater_is_better=args.greater_is_better if args.greater_is_better is not None else True,
        )
    return RunControl(
        max_time_seconds=args.max_time_seconds,
        early_stopping=early_stopping,
        reduce_max=reduce_max,
        handle_signals=args.save_on_interrupt,
    )


class RunControlCallback(TrainerCallback):
    """Saves a checkpoint and stops the Trainer on SIGTERM/SIGINT, at ``max_time_seconds`` and on early
    stopping (``hf_ssl.training.state.run_control.RunControl``; every process reaches the same decision)."""

    def __init__(self, run_control):
        self.run_control = run_control

    def on_train_begin(self, args, state, control, **kwargs):
        self.run_control.start()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.run_control.observe(logs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.run_control.check(args.device) is not None:
            logger.warning("step %d: %s; saving a checkpoint", state.global_step, self.run_control.describe_stop())
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.run_control.finish()
