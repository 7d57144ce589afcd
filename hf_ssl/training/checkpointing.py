"""Checkpoints shared by both engines: atomic commits, rotation (last K + best N), resume resolution and
compatibility checks.

A checkpoint is a folder ``<output_dir>/checkpoint-<step>`` holding what its engine needs to resume
(the Trainer's files, or ``accelerator.save_state``'s) plus ``hf_ssl_state.json``::

    {"format_version": 1, "method": "dino", "engine": "trainer", "step": 300, "epoch": 3.0,
     "world_size": 2, "total_batch_size": 512, "metrics": {"knn_top1": 61.2},
     "tracker_run_ids": {"wandb": "3xk1..."}, "method_state": {...}, "control_state": {...}}

Every process writes into ``<output_dir>/.staging-checkpoint-<step>``; once all are done, the main
process renames it to ``checkpoint-<step>`` (``os.replace``, atomic on POSIX). A save killed half way
leaves a staging folder that is ignored and removed by the next save, never a partial checkpoint, and
the previous checkpoints stay as they were.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_ssl.training.config import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
STATE_FILE = "hf_ssl_state.json"
STATE_FORMAT_VERSION = 1
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
_STAGING_PREFIX = f".staging-{CHECKPOINT_PREFIX}-"


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}-{step}"


def staging_path(output_dir: str | os.PathLike, step: int) -> Path:
    """Where the processes write checkpoint ``step`` before it is committed (same for every process)."""
    return Path(output_dir) / f"{_STAGING_PREFIX}{step}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Committed checkpoints of ``output_dir`` (those with ``hf_ssl_state.json``), oldest step first."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def prepare_staging(output_dir: str | os.PathLike, step: int) -> Path:
    """Remove what a killed save left behind and return the (not yet created) staging folder of ``step``.
    Main process only, before the other processes start writing."""
    directory = Path(output_dir)
    if directory.is_dir():
        for child in directory.iterdir():
            if child.name.startswith(_STAGING_PREFIX) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
    return staging_path(output_dir, step)


def commit_checkpoint(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Atomically publish the finished ``staging`` folder as ``final`` (main process, after every process
    wrote its part). An existing ``final`` (the same step saved again) is replaced."""
    staging, final = Path(staging), Path(final)
    if not (staging / STATE_FILE).is_file():
        raise RuntimeError(f"refusing to commit {staging}: it has no {STATE_FILE}, the save did not finish")
    _fsync_directory(staging)
    replaced = None
    if final.exists():
        replaced = final.with_name(f".replaced-{final.name}")
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    _fsync_directory(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return final


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ----------------------------------------------------------------------------------------------------------------------
# The hf_ssl state file
# ----------------------------------------------------------------------------------------------------------------------


def write_state(directory: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    path = Path(directory) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        json.dump({"format_version": STATE_FORMAT_VERSION, **state}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise ConfigError(
            f"{checkpoint} is not an hf_ssl checkpoint: it has no {STATE_FILE} "
            f"(resume from a {CHECKPOINT_PREFIX}-<step> folder of an hf_ssl output directory)"
        )
    with path.open(encoding="utf-8") as handle:
        try:
            state = json.load(handle)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error}): the checkpoint is damaged") from error
    if state.get("format_version", 0) > STATE_FORMAT_VERSION:
        raise ConfigError(f"{path} has format_version {state['format_version']}; this hf_ssl reads up to {STATE_FORMAT_VERSION}")
    return state


def resolve_resume(resume: str | os.PathLike | bool | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: ``None``/``False`` -> none; ``"auto"``/``True`` -> the latest in
    ``output_dir`` (none when there is none yet, so the same command starts and resumes a job); a path ->
    that checkpoint, which must exist. Raises ``ConfigError`` before any training for a bad path."""
    if resume is None or resume is False or resume == "":
        return None
    if resume is True or str(resume).lower() in ("auto", "latest", "true"):
        found = latest_checkpoint(output_dir)
        if found is None:
            logger.info("resume=auto: no checkpoint in %s yet, starting from scratch", output_dir)
        else:
            logger.info("resume=auto: resuming from %s", found)
        return found
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"resume checkpoint {str(path)!r} does not exist (use a {CHECKPOINT_PREFIX}-<step> folder, or 'auto')")
    if not (path / STATE_FILE).is_file() and list_checkpoints(path):
        raise ConfigError(f"{path} is an output directory, not a checkpoint: resume from {latest_checkpoint(path)} or use 'auto'")
    read_state(path)
    return path


def check_resume_compatible(
    checkpoint: str | os.PathLike,
    *,
    method: str,
    engine: str,
    model_config,
    total_batch_size: int,
    world_size: int,
    sharding: str = "none",
) -> dict[str, Any]:
    """Raise a ``ConfigError`` naming the difference when ``checkpoint`` cannot continue this run (another
    method, engine, ``model_config`` (a ``PretrainedConfig``), total batch, or sharding backend: DeepSpeed and
    FSDP write their own formats); return its state. A different world size is fine when the total batch
    (per device x accumulation x processes) is the same: schedules and the data position count optimizer
    steps of that batch."""
    state = read_state(checkpoint)
    saved_sharding = state.get("sharding", "none")
    if saved_sharding != sharding:
        raise ConfigError(
            f"{checkpoint} was written under {saved_sharding!r} sharding and this run uses {sharding!r}: DeepSpeed and FSDP "
            "save model and optimizer in their own formats. Resume with the accelerate config that wrote it, or start a "
            "new output_dir from its weights (model.pretrained_model_name_or_path)."
        )
    if state.get("method") != method:
        raise ConfigError(f"{checkpoint} is a {state.get('method')!r} checkpoint; this run trains {method!r}")
    if state.get("engine") != engine:
        raise ConfigError(
            f"{checkpoint} was written by the {state.get('engine')!r} engine; resume it with training.engine={state.get('engine')}"
        )
    if (Path(checkpoint) / "config.json").is_file():
        saved_config = type(model_config).from_pretrained(checkpoint)
        differences = config_differences(_as_json(saved_config), _as_json(model_config))
        if differences:
            raise ConfigError(
                f"{checkpoint} holds a model with another configuration: "
                + "; ".join(f"{key}: checkpoint {old!r}, recipe {new!r}" for key, old, new in differences[:10])
                + ". Resume with the recipe that wrote it (its recipe.yaml), or start a new output_dir."
            )
    saved_batch = state.get("total_batch_size")
    if saved_batch is not None and saved_batch != total_batch_size:
        raise ConfigError(
            f"{checkpoint} was trained with a total batch of {saved_batch} ({state.get('world_size')} processes); this run "
            f"has {total_batch_size} ({world_size} processes). The schedules and the data position count optimizer steps "
            "of that batch: set per_device_train_batch_size x gradient_accumulation_steps x processes back to "
            f"{saved_batch}, or start a new run from its weights with model.pretrained_model_name_or_path."
        )
    if state.get("world_size") not in (None, world_size):
        logger.warning(
            "Resuming a %s-process checkpoint on %s processes (same total batch %s): the data order is the same; "
            "per-process random states start afresh.", state.get("world_size"), world_size, total_batch_size,
        )
    return state


# Keys of a saved config.json that say nothing about the architecture or the loss.
_IGNORED_CONFIG_KEYS = frozenset({"use_cache", "transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path", "auto_map", "return_dict"})


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for every key that differs, nested dicts walked."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key in _IGNORED_CONFIG_KEYS:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif _normalise(old) != _normalise(new):
            differences.append((f"{prefix}{key}", old, new))
    return differences


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _as_json(config) -> dict[str, Any]:
    """Every field of a ``PretrainedConfig`` (defaults included) as JSON types: int dict keys become strings."""
    return json.loads(config.to_json_string(use_diff=False))


# ----------------------------------------------------------------------------------------------------------------------
# Rotation
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class RetentionPolicy:
    """Which checkpoints to keep: the ``keep_last`` most recent (None: all) and the ``keep_best`` best by
    ``metric`` (higher is better when ``greater_is_better``). A checkpoint kept by either rule stays."""

    keep_last: int | None = None
    keep_best: int = 0
    metric: str | None = None
    greater_is_better: bool = True

    def __post_init__(self):
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last (save_total_limit) must be >= 1 or None, got {self.keep_last}")
        if self.keep_best < 0:
            raise ValueError(f"keep_best (save_best_total_limit) must be >= 0, got {self.keep_best}")
        if self.keep_best and not self.metric:
            raise ValueError("keep_best (save_best_total_limit) needs a metric: set metric_for_best_model, e.g. knn_top1")

    def to_keep(self, checkpoints: list[Path]) -> set[Path]:
        keep = set(checkpoints if self.keep_last is None else checkpoints[-self.keep_last:])
        if self.keep_best:
            keep.update(ranked_by_metric(checkpoints, self.metric, self.greater_is_better)[: self.keep_best])
        return keep


def ranked_by_metric(checkpoints: list[Path], metric: str, greater_is_better: bool = True) -> list[Path]:
    """The checkpoints that recorded a finite ``metric``, best first (the earlier one first on ties)."""
    scored = []
    for path in checkpoints:
        value = read_state(path).get("metrics", {}).get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            scored.append((value if greater_is_better else -value, path))
    scored.sort(key=lambda item: item[0], reverse=True)
    return [path for _, path in scored]


def rotate_checkpoints(output_dir: str | os.PathLike, policy: RetentionPolicy) -> list[Path]:
    """Delete the checkpoints ``policy`` does not keep (main process); returns the deleted folders."""
    checkpoints = list_checkpoints(output_dir)
    keep = policy.to_keep(checkpoints)
    deleted = []
    for path in checkpoints:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    if deleted:
        logger.info("Deleted old checkpoints: %s", ", ".join(path.name for path in deleted))
    return deleted


@dataclass
class CheckpointRecord:
    """What goes into ``hf_ssl_state.json`` besides what the engine saves."""

    method: str
    engine: str
    step: int
    epoch: float
    world_size: int
    total_batch_size: int
    metrics: dict[str, float] = field(default_factory=dict)
    tracker_run_ids: dict[str, str] = field(default_factory=dict)
    method_state: dict[str, Any] = field(default_factory=dict)
    control_state: dict[str, Any] = field(default_factory=dict)
    sharding: str = "none"  # "deepspeed", "fsdp" or "none" (one process, DDP): see sharding_of


def sharding_of(accelerator) -> str:
    """How the engine lays out model and optimizer state in a checkpoint: "deepspeed", "fsdp" or "none"."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)).upper()
    return {"DEEPSPEED": "deepspeed", "FSDP": "fsdp"}.get(kind, "none")


def retention_policy(args) -> RetentionPolicy:
    """``save_total_limit`` (last K) and ``save_best_total_limit`` (best N by ``metric_for_best_model``)."""
    return RetentionPolicy(
        keep_last=args.save_total_limit,
        keep_best=args.save_best_total_limit,
        metric=args.metric_for_best_model,
        greater_is_better=args.greater_is_better if args.greater_is_better is not None else True,
    )


def tracker_run_ids() -> dict[str, str]:
    """Ids of the tracker runs this process has open (W&B), saved so a resume continues the same run."""
    ids = {}
    import sys

    wandb = sys.modules.get("wandb")  # only if the run imported it
    if wandb is not None and getattr(wandb, "run", None) is not None:
        ids["wandb"] = wandb.run.id
    return ids


def restore_tracker_run_ids(ids: Mapping[str, str]) -> None:
    """Make the trackers started after this call continue the saved runs (W&B reads these variables)."""
    if "wandb" in ids and "WANDB_RUN_ID" not in os.environ:
        os.environ["WANDB_RUN_ID"] = ids["wandb"]
        os.environ.setdefault("WANDB_RESUME", "allow")
        logger.info("W&B: continuing run %s", ids["wandb"])
