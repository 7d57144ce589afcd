"""The training history: every logged number by optimizer step and by epoch, saved as JSON and plotted.

``HistoryCallback`` records what the Trainer logs (loss, schedules, collapse metrics, k-NN results),
optionally runs a ``CollapseDetector`` on it, and writes ``<output_dir>/history.json`` and
``<output_dir>/history.png`` at the end of training.

``history.json``::

    {"format_version": 1,
     "steps":  [{"step": 10, "epoch": 0.1, "loss": 10.9, "learning_rate": 5e-05, ...}, ...],
     "epochs": [{"epoch": 1, "step": 100, "loss": 10.2, ...}, ...]}

An epoch entry holds the mean of the values logged during that epoch (its steps after the previous
epoch's last step), under the global step at which the epoch ended.

Re-plot a saved history::

    python -m hf_ssl.commands.plot_history outputs/run/history.json [--output plot.png] [--keys loss,knn_top1]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hf_ssl.evaluation.collapse import CollapseDetector

logger = logging.getLogger(__name__)

HISTORY_FORMAT_VERSION = 1
# plotted first, in this order, when present; every other numeric key follows alphabetically
PREFERRED_PLOT_KEYS = (
    "loss",
    "val_loss",
    "learning_rate",
    "weight_decay",
    "teacher_momentum",
    "teacher_temperature",
    "knn_top1",
    "knn_top5",
    "linear_top1",
    "teacher_entropy",
    "teacher_entropy_ratio",
    "student_entropy",
    "embedding_std",
    "effective_rank",
    "mean_l2_norm",
    "center_norm",
    "grad_norm",
)
# bookkeeping and the one-off end-of-training summary: recorded, not plotted by default
NOT_PLOTTED_KEYS = frozenset(
    {
        "step",
        "epoch",
        "total_flos",
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
    }
)
_INDEX_KEYS = ("step", "epoch")


@dataclass
class History:
    """Metrics by optimizer step (``steps``) and by epoch (``epochs``), each a list of flat dicts.

    A step entry is ``{"step": int, "epoch": float (optional), <metric>: float, ...}``; an epoch entry is
    ``{"epoch": int | float, "step": int (optional), <metric>: float, ...}``.
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    # ----- recording ---------------------------------------------------------------------------
    def record_step(self, step: int, metrics: Mapping[str, Any], epoch: float | None = None) -> dict[str, Any]:
        """Records the numeric entries of ``metrics`` at optimizer step ``step``; others are ignored.

        Values logged at the step of the previous entry (k-NN results logged after that step's loss)
        are merged into it. ``epoch`` defaults to ``metrics["epoch"]`` when present. Returns the entry.
        """
        if epoch is None and _is_number(metrics.get("epoch")):
            epoch = metrics["epoch"]
        values = {key: float(value) for key, value in metrics.items() if key not in _INDEX_KEYS and _is_number(value)}
        if self.steps and self.steps[-1]["step"] == int(step):
            entry = self.steps[-1]
        else:
            entry = {"step": int(step)}
            self.steps.append(entry)
        if epoch is not None:
            entry["epoch"] = float(epoch)
        entry.update(values)
        return entry

    def record_epoch(
        self, epoch: int | float, metrics: Mapping[str, Any] | None = None, step: int | None = None
    ) -> dict[str, Any]:
        """Records the end of an epoch: the mean of every numeric value logged since the previous epoch
        entry, updated with ``metrics`` (explicit values win).

        Args:
            epoch: the epoch that ended (``HistoryCallback`` counts from 1).
            metrics: extra epoch-level numbers (e.g. an end-of-epoch k-NN accuracy).
            step: global step at the end of the epoch; default: the last recorded step.
        Returns:
            the epoch entry.
        """
        previous_end = self.epochs[-1].get("step") if self.epochs else None
        if step is None and self.steps:
            step = self.steps[-1]["step"]
        in_epoch = [
            entry
            for entry in self.steps
            if (previous_end is None or entry["step"] > previous_end) and (step is None or entry["step"] <= step)
        ]
        collected: dict[str, list[float]] = {}
        for entry in in_epoch:
            for key, value in entry.items():
                if key not in _INDEX_KEYS:
                    collected.setdefault(key, []).append(value)
        entry: dict[str, Any] = {"epoch": epoch}
        if step is not None:
            entry["step"] = int(step)
        entry.update({key: math.fsum(values) / len(values) for key, values in collected.items()})
        if metrics:
            entry.update(
                {key: float(value) for key, value in metrics.items() if key not in _INDEX_KEYS and _is_number(value)}
            )
        self.epochs.append(entry)
        return entry

    def latest(self, key: str) -> float | None:
        """The last recorded value of ``key`` (step entries first, then epoch entries), or None."""
        for entries in (self.steps, self.epochs):
            for entry in reversed(entries):
                if key in entry:
                    return entry[key]
        return None

    def metric_names(self) -> list[str]:
        """Every recorded metric (step or epoch level), in plotting order: ``PREFERRED_PLOT_KEYS`` first."""
        names = {key for entry in (*self.steps, *self.epochs) for key in entry if key not in _INDEX_KEYS}
        preferred = [key for key in PREFERRED_PLOT_KEYS if key in names]
        return preferred + sorted(names - set(preferred))

    # ----- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format_version": HISTORY_FORMAT_VERSION, "steps": self.steps, "epochs": self.epochs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "history") -> History:
        if (
            not isinstance(data, Mapping)
            or not isinstance(data.get("steps"), list)
            or not isinstance(data.get("epochs"), list)
        ):
            raise ValueError(
                f"{source} is not a training history: expected a JSON object with 'steps' and 'epochs' lists"
            )
        version = data.get("format_version", HISTORY_FORMAT_VERSION)
        if version > HISTORY_FORMAT_VERSION:
            raise ValueError(
                f"{source} has format_version {version}; this hf_ssl reads up to {HISTORY_FORMAT_VERSION}"
            )
        return cls(steps=[dict(entry) for entry in data["steps"]], epochs=[dict(entry) for entry in data["epochs"]])

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the history as JSON, atomically: a reader never sees a half-written file.

        Non-finite values are written as ``NaN``/``Infinity``, which Python's ``json`` reads back.
        """
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1)
        _atomic_write(path, lambda file: file.write(text.encode("utf-8")))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        path = Path(path)
        with path.open(encoding="utf-8") as file:
            try:
                data = json.load(file)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(data, source=str(path))

    def plot(self, path: str | os.PathLike, keys: Sequence[str] | None = None) -> Figure:
        """Saves a PNG grid with one subplot per metric (value against step), epoch means as dots.

        Args:
            path: PNG file to write (atomically).
            keys: metrics to plot, in order; default: every recorded metric but the bookkeeping ones
                (``NOT_PLOTTED_KEYS``), ``PREFERRED_PLOT_KEYS`` first.
        Returns:
            the matplotlib ``Figure``, one axes per plotted key.
        """
        # matplotlib is imported here, not at module level, so importing hf_ssl stays fast. The Agg
        # canvas is attached to this figure only: pyplot's global backend is left alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        available = self.metric_names()
        if keys is None:
            keys = [key for key in available if key not in NOT_PLOTTED_KEYS]
        else:
            keys = list(keys)
            missing = [key for key in keys if key not in available]
            if missing:
                raise ValueError(f"no recorded values for {missing}; recorded metrics: {available}")
        if not keys:
            raise ValueError(f"nothing to plot: the history has no metrics (recorded: {available})")

        columns = min(3, len(keys))
        rows = math.ceil(len(keys) / columns)
        figure = Figure(figsize=(4.2 * columns, 2.8 * rows), layout="constrained")
        FigureCanvasAgg(figure)
        for index, key in enumerate(keys):
            axes = figure.add_subplot(rows, columns, index + 1)
            step_points = [(entry["step"], entry[key]) for entry in self.steps if key in entry]
            epoch_points = [(entry["step"], entry[key]) for entry in self.epochs if key in entry and "step" in entry]
            if step_points:
                steps, values = zip(*step_points)
                axes.plot(steps, values, linewidth=1.2, marker="." if len(step_points) < 50 else None, label="logged")
                axes.set_xlabel("step")
            if epoch_points:
                steps, values = zip(*epoch_points)
                axes.plot(steps, values, "o", markersize=4, label="epoch mean")
                axes.set_xlabel("step")
            if not step_points and not epoch_points:  # epoch-level values recorded without a step
                epoch_values = [(entry["epoch"], entry[key]) for entry in self.epochs if key in entry]
                axes.plot(*zip(*epoch_values), "o-", markersize=4)
                axes.set_xlabel("epoch")
            if step_points and epoch_points:
                axes.legend(fontsize="small")
            axes.set_title(key)
            axes.grid(alpha=0.3)
        _atomic_write(Path(path), lambda file: figure.savefig(file, format="png", dpi=100))
        return figure


class HistoryCallback(TrainerCallback):
    """Records every log of a ``Trainer`` in a ``History`` and saves it at the end of training.

    ``on_log`` records the numeric entries at ``state.global_step`` and feeds them to ``collapse_detector``
    (warnings go to ``logger.warning`` on the main process); ``on_epoch_end`` records the epoch means;
    ``on_train_end`` writes ``<output_dir>/history.json`` and, with ``plot``, ``<output_dir>/history.png``
    on the main process. Every process records, so ``history`` is the same everywhere.

    Args:
        output_dir: folder of ``history.json`` / ``history.png`` (usually ``TrainingArguments.output_dir``).
        plot: also write the PNG.
        collapse_detector: a ``hf_ssl.evaluation.collapse.CollapseDetector``, or None.
    """

    def __init__(
        self, output_dir: str | os.PathLike, plot: bool = True, collapse_detector: CollapseDetector | None = None
    ):
        self.output_dir = Path(output_dir)
        self.plot = plot
        self.collapse_detector = collapse_detector
        self.history = History()
        self.collapse_warnings: list[str] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        self.history.record_step(state.global_step, logs, epoch=state.epoch)
        if self.collapse_detector is None:
            return
        message = self.collapse_detector.update(logs, step=state.global_step)
        if message is not None:
            self.collapse_warnings.append(message)
            if state.is_world_process_zero:
                logger.warning(message)

    def on_epoch_end(self, args, state, control, **kwargs):
        # state.epoch is epoch_index + fraction done: 1.0 at the end of the first epoch, 2.5 when a run
        # stops halfway through the third
        if state.epoch is None:
            epoch = len(self.history.epochs) + 1
        else:
            epoch = max(1, math.ceil(state.epoch - 1e-6))
        self.history.record_epoch(epoch, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.save()

    def save(self) -> Path:
        """Writes ``history.json`` (and ``history.png`` when there is something to plot); returns the JSON path."""
        json_path = self.history.save(self.output_dir / "history.json")
        if self.plot:
            if any(key not in NOT_PLOTTED_KEYS for key in self.history.metric_names()):
                self.history.plot(self.output_dir / "history.png")
            else:
                logger.info("history.png not written: nothing was logged but bookkeeping keys")
        return json_path


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Writes a file through a temporary file in the same folder, then ``os.replace`` (atomic on POSIX
    and Windows): readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; give it the permissions of a normal file
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):  # int, float and numpy scalars
        return True
    # a one-element tensor, without importing torch here
    return hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m hf_ssl.commands.plot_history",
        description="Plot a saved training history (history.json) as a PNG.",
    )
    parser.add_argument("history", type=Path, help="history.json written by HistoryCallback")
    parser.add_argument(
        "--output", type=Path, default=None, help="PNG to write (default: next to the JSON, .png suffix)"
    )
    parser.add_argument("--keys", default=None, help="comma-separated metrics to plot (default: all)")
    arguments = parser.parse_args(argv)
    if not arguments.history.is_file():
        parser.error(f"{arguments.history} does not exist")
    output = arguments.output or arguments.history.with_suffix(".png")
    keys = [key.strip() for key in arguments.keys.split(",") if key.strip()] if arguments.keys else None
    try:
        History.load(arguments.history).plot(output, keys=keys)
    except ValueError as error:
        parser.error(str(error))
    print(output)
    return output
