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
the previous checkpoints stay as they were. ``hf_ssl_state.json`` is written last and lists the size of
every other file, so a checkpoint truncated afterwards (a copy cut short, a disk that filled up) is
recognised before a resume loads it (``checkpoint_damage``).

One run at a time per output directory: the main process holds ``<output_dir>/_hf_ssl.lock``
(``guard_output_dir``), and a fresh run refuses a directory that already holds a run's checkpoints or
model unless it resumes them or ``overwrite_output_dir`` is set.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_ssl.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
STATE_FILE = "hf_ssl_state.json"
STATE_FORMAT_VERSION = 1
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
_STAGING_PREFIX = f".staging-{CHECKPOINT_PREFIX}-"
LOCK_FILE = "_hf_ssl.lock"  # "_*" files are left out of Hub uploads by the Trainer
# Files that make a folder a finished run's output (the model that save_model writes).
MODEL_FILES = ("model.safetensors", "config.json")


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


def load_weights_in_place(model, checkpoint: str | os.PathLike) -> None:
    """Load the weights of ``checkpoint`` (a ``save_pretrained`` folder of ``model``'s class) into ``model``, copying
    into its existing tensors, so that an optimizer or EMA holding them keeps pointing at them.

    Saved checkpoints carry a model's checkpoint key names (a ViT's ``encoder.layer.*``), which transformers converts
    when it loads with ``from_pretrained``, not when a raw state dict is loaded (the Trainer's resume and best-model
    reload): the weights would silently stay as they were. Strict: every tensor must be there."""
    loaded = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)


def incomplete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` folders of ``output_dir`` without ``hf_ssl_state.json`` (a save that did not finish, or
    one written without hf_ssl), oldest step first: never resumed from."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = [
        child
        for child in directory.iterdir()
        if _CHECKPOINT_NAME.match(child.name) and child.is_dir() and not (child / STATE_FILE).is_file()
    ]
    return sorted(found, key=checkpoint_step)


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


# ---------------------------------------------------------------------------------------------------------------------
# The hf_ssl state file
# ---------------------------------------------------------------------------------------------------------------------


def write_state(directory: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``hf_ssl_state.json`` into the finished checkpoint folder ``directory``, with the size of every
    other file in it (``files``), so that a file truncated later is caught by ``checkpoint_damage``."""
    path = Path(directory) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    files = file_sizes(directory)
    with path.open("w", encoding="utf-8") as handle:
        json.dump({"format_version": STATE_FORMAT_VERSION, **state, "files": files}, handle, indent=1)
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
        raise ConfigError(
            f"{path} has format_version {state['format_version']}; this hf_ssl reads up to {STATE_FORMAT_VERSION}"
        )
    return state


def file_sizes(directory: str | os.PathLike) -> dict[str, int]:
    """``{relative path: size in bytes}`` of every file under ``directory`` except ``hf_ssl_state.json``."""
    directory = Path(directory)
    return {
        path.relative_to(directory).as_posix(): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != STATE_FILE
    }


def checkpoint_damage(checkpoint: str | os.PathLike) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (an unreadable state file, a missing file, a file whose size
    is not the size it was saved with, a safetensors file shorter than its header says), or None if intact.
    Reads sizes and headers only, never the tensors."""
    checkpoint = Path(checkpoint)
    try:
        state = read_state(checkpoint)
    except ConfigError as error:
        return str(error)
    for name, size in (state.get("files") or {}).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} holds {path.stat().st_size} bytes, {size} were saved"
    for path in sorted(checkpoint.rglob("*.safetensors")):  # also for checkpoints written before the size list
        problem = _safetensors_damage(path)
        if problem is not None:
            return f"{path.relative_to(checkpoint).as_posix()} {problem}"
    return None


def _safetensors_damage(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header giving each tensor's byte range, then the
    data: the file must be exactly as long as the header says."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > size - 8:
                return f"is truncated ({size} bytes, its header alone needs {header_length + 8})"
            header = json.loads(handle.read(header_length))
    except (struct.error, ValueError) as error:
        return f"is not a readable safetensors file ({error})"
    data_length = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if size != 8 + header_length + data_length:
        return f"is truncated ({size} bytes, its header says {8 + header_length + data_length})"
    return None


def resolve_resume(resume: str | os.PathLike | bool | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: ``None``/``False`` -> none; ``"auto"``/``True`` -> the latest intact one
    in ``output_dir`` (a damaged one is passed over with a warning naming it; none when there is no checkpoint
    yet, so the same command starts and resumes a job); a path -> that checkpoint, which must exist and be
    intact. Raises ``ConfigError`` before any training for a bad path or when every checkpoint is damaged."""
    if resume is None or resume is False or resume == "":
        return None
    if resume is True or str(resume).lower() in ("auto", "latest", "true"):
        checkpoints = list_checkpoints(output_dir)
        for folder in incomplete_checkpoints(output_dir):
            logger.warning("resume=auto: passing over %s: it has no %s, its save did not finish", folder, STATE_FILE)
        if not checkpoints:
            logger.info("resume=auto: no checkpoint in %s yet, starting from scratch", output_dir)
            return None
        problems = []
        for candidate in reversed(checkpoints):
            damage = checkpoint_damage(candidate)
            if damage is None:
                if problems:
                    logger.warning("resume=auto: %s; resuming from %s instead", "; ".join(problems), candidate.name)
                logger.info("resume=auto: resuming from %s", candidate)
                return candidate
            problems.append(f"{candidate.name} is damaged ({damage})")
        raise ConfigError(
            f"no intact checkpoint in {output_dir}: {'; '.join(problems)}. Delete the damaged folders to start again, "
            "or restore them from a copy"
        )
    path = Path(resume)
    if path.is_file():
        raise ConfigError(
            f"resume checkpoint {str(path)!r} is a file: give its folder ({CHECKPOINT_PREFIX}-<step>), or 'auto'"
        )
    if not path.is_dir():
        raise ConfigError(
            f"resume checkpoint {str(path)!r} does not exist (use a {CHECKPOINT_PREFIX}-<step> folder, or 'auto')"
        )
    if not (path / STATE_FILE).is_file() and list_checkpoints(path):
        raise ConfigError(
            f"{path} is an output directory, not a checkpoint: resume from {latest_checkpoint(path)} or use 'auto'"
        )
    damage = checkpoint_damage(path)
    if damage is not None:
        earlier = [
            candidate
            for candidate in list_checkpoints(path.parent)
            if checkpoint_step(candidate) < checkpoint_step(path) and checkpoint_damage(candidate) is None
        ]
        hint = (
            f" The latest intact checkpoint before it is {earlier[-1]}: resume from it, or use 'auto'."
            if earlier
            else ""
        )
        raise ConfigError(f"checkpoint {path} is damaged: {damage}.{hint}")
    return path


class StagedTrainerCheckpoints:
    """Mixin of a transformers ``Trainer`` subclass whose ``_save_checkpoint`` writes the Trainer's checkpoint under
    the staging folder (``staged_trainer_checkpoint``), adds its own files and commits it (``commit_staged``)."""

    _staging_dir: Path | None = None

    def _get_output_dir(self, trial) -> str:
        # while a checkpoint is saved, the Trainer writes it under the staging folder (see staged_trainer_checkpoint)
        return str(self._staging_dir) if self._staging_dir is not None else super()._get_output_dir(trial)

    @contextmanager
    def staged_trainer_checkpoint(self, model, trial):
        """Write the Trainer's checkpoint of this step (model, optimizer, scheduler, scaler, RNG states, trainer state)
        under ``.staging-checkpoint-<step>/``, every process its part, and yield the folder written; the body runs
        inside ``saving_checkpoint``: a failure removes the staging folder and says which checkpoint is intact."""
        step, output_dir = self.state.global_step, self.args.output_dir
        staging_parent = staging_path(output_dir, step)
        if self.args.should_save:
            prepare_staging(output_dir, step)
        self.accelerator.wait_for_everyone()
        with saving_checkpoint(output_dir, step):
            self._staging_dir = staging_parent
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
            yield staging_parent / f"{CHECKPOINT_PREFIX}-{step}"

    def commit_staged(self, written: Path, state: Mapping[str, Any]) -> Path:
        """Main process, once every process wrote its part of ``written``: ``hf_ssl_state.json``, then the rename to
        ``checkpoint-<step>``. Returns the committed folder."""
        write_state(written, state)
        final = commit_checkpoint(written, checkpoint_path(self.args.output_dir, self.state.global_step))
        written.parent.rmdir()
        return final


def checkpoint_step(checkpoint: Path) -> int:
    """The step of a ``checkpoint-<step>`` folder (-1 for another name)."""
    match = _CHECKPOINT_NAME.match(checkpoint.name)
    return int(match.group(1)) if match else -1


# ---------------------------------------------------------------------------------------------------------------------
# One run per output directory
# ---------------------------------------------------------------------------------------------------------------------

_held_locks: dict[str, Any] = {}


def lock_output_dir(output_dir: str | os.PathLike) -> None:
    """Hold ``<output_dir>/_hf_ssl.lock`` for the rest of this process (main process only), or raise a
    ``ConfigError`` naming the run that holds it. The operating system drops the lock when the process ends,
    however it ends (SIGKILL included), so a killed run never leaves a stale lock, not even while its DataLoader
    workers outlive it for a few seconds. Taking it again in the same process is a no-op (a notebook or a test that
    trains twice into one folder)."""
    directory = Path(output_dir).resolve()
    if str(directory) in _held_locks:
        return
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, no guard
        return
    directory.mkdir(parents=True, exist_ok=True)
    # A POSIX record lock (lockf), not flock: an flock belongs to the open file, which forked DataLoader workers
    # share, so an orphaned worker would hold it after a kill -9 of the run; a record lock belongs to this process
    # alone. It is also dropped when this process closes any descriptor of the file, so the file is opened only here
    # and the holder is read through this handle, once the lock is refused.
    handle = open(directory / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"output_dir {str(output_dir)!r} is in use by another run ({holder}): two runs in one folder overwrite "
            "each other's checkpoints and model. Wait for it to end, or give this run another training.output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _held_locks[str(directory)] = handle


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Give up the lock ``lock_output_dir`` took (it also goes when the process ends)."""
    handle = _held_locks.pop(str(Path(output_dir).resolve()), None)
    if handle is not None:
        handle.close()


def guard_output_dir(
    output_dir: str | os.PathLike,
    checkpoint: Path | None,
    resume_requested: bool,
    overwrite: bool,
    start_from_key: str = "model.pretrained_model_name_or_path",
) -> None:
    """Before training, on the main process: lock ``output_dir`` for this run, and refuse to start a fresh run
    (``checkpoint`` None) in a folder that holds another run's checkpoints or model, which it would overwrite
    and mix with its own. With ``overwrite`` the old checkpoints are deleted (a later ``--resume auto`` must not
    pick them up) and the old model is replaced when this run saves its own. ``start_from_key``: the recipe key
    that starts a new run from a trained model's weights (named in the advice)."""
    lock_output_dir(output_dir)
    if checkpoint is not None:
        return
    directory = Path(output_dir)
    checkpoints = list_checkpoints(directory)
    model_files = [name for name in MODEL_FILES if (directory / name).is_file()]
    if not checkpoints and not model_files:
        return
    found = ", ".join([path.name for path in checkpoints[-3:]] + model_files)
    if overwrite:
        logger.warning(
            "overwrite_output_dir: deleting the checkpoints of the previous run in %s (%s)", directory, found
        )
        for path in checkpoints:
            shutil.rmtree(path)
        return
    if resume_requested:
        raise ConfigError(
            f"output_dir {str(directory)!r} holds a trained model ({found}) but no checkpoint to resume from. To "
            f"continue training it, start a new run from its weights ({start_from_key}={directory}, another "
            "output_dir); to train again from scratch here, set training.overwrite_output_dir=true"
        )
    raise ConfigError(
        f"output_dir {str(directory)!r} already holds a run ({found}). Continue it with --resume auto, set "
        "training.overwrite_output_dir=true to replace it, or choose another training.output_dir"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------------


class CheckpointSaveError(RuntimeError):
    """Saving checkpoint ``step`` failed; its staging folder is removed and the earlier checkpoints are intact."""

    def __init__(self, step: int, output_dir: str | os.PathLike, cause: BaseException):
        self.step, self.cause = step, cause
        self.no_space = _is_out_of_space(cause, output_dir)
        latest = latest_checkpoint(output_dir)
        intact = f"{latest.name} is intact" if latest is not None else "no earlier checkpoint exists"
        if self.no_space:
            free = _free_bytes(output_dir)
            message = (
                f"no space left on device while saving checkpoint {step} in {output_dir} ({free / 2**20:.1f} MiB "
                f"free); {intact}. Free some space (a lower training.save_total_limit keeps fewer checkpoints), then "
                "continue with --resume auto"
            )
        else:
            message = f"saving checkpoint {step} in {output_dir} failed ({type(cause).__name__}: {cause}); {intact}"
        super().__init__(message)


@contextmanager
def saving_checkpoint(output_dir: str | os.PathLike, step: int):
    """Wrap the writing of checkpoint ``step``: on any error, remove its staging folder and raise a
    ``CheckpointSaveError`` that says whether the disk is full and which checkpoint is intact."""
    try:
        yield
    except CheckpointSaveError:
        raise
    except Exception as error:
        save_error = CheckpointSaveError(step, output_dir, error)  # measures free space before the cleanup
        shutil.rmtree(staging_path(output_dir, step), ignore_errors=True)
        raise save_error from error


def _free_bytes(path: str | os.PathLike) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return -1


def _is_out_of_space(error: BaseException, output_dir: str | os.PathLike) -> bool:
    """ENOSPC/EDQUOT, or an error of a writer that hides the errno (torch.save: "file write failed",
    "iostream error") while the disk has less than 16 MiB left."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    free = _free_bytes(output_dir)
    return 0 <= free < 16 * 2**20


def check_resume_compatible(
    checkpoint: str | os.PathLike,
    *,
    method: str,
    engine: str,
    model_config,
    total_batch_size: int,
    world_size: int,
    sharding: str = "none",
    settings: Mapping[str, Any] | None = None,
    allow_changed_settings: bool = False,
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
            f"{checkpoint} was written under {saved_sharding!r} sharding and this run uses {sharding!r}: DeepSpeed "
            "and FSDP save model and optimizer in their own formats. Resume with the accelerate config that wrote it, "
            "or start a new output_dir from its weights (model.pretrained_model_name_or_path)."
        )
    if state.get("method") != method:
        raise ConfigError(f"{checkpoint} is a {state.get('method')!r} checkpoint; this run trains {method!r}")
    if state.get("engine") != engine:
        raise ConfigError(
            f"{checkpoint} was written by the {state.get('engine')!r} engine; resume it with "
            f"training.engine={state.get('engine')}"
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
            f"{checkpoint} was trained with a total batch of {saved_batch} ({state.get('world_size')} processes); "
            f"this run has {total_batch_size} ({world_size} processes). The schedules and the data position count "
            "optimizer steps of that batch: set per_device_train_batch_size x gradient_accumulation_steps x processes "
            f"back to {saved_batch}, or start a new run from its weights with model.pretrained_model_name_or_path."
        )
    if settings is not None and state.get("settings") is not None:
        differences = config_differences(state["settings"], _as_plain_json(settings))
        changes = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, old, new in differences[:10])
        if differences and allow_changed_settings:
            logger.warning(
                "Resuming %s with changed settings (resume_with_changed_settings): %s. The new values apply from step "
                "%s on.",
                checkpoint,
                changes,
                state.get("step"),
            )
        elif differences:
            raise ConfigError(
                f"{checkpoint} was trained with other settings: {changes}. A resume continues the run that wrote the "
                "checkpoint, so only max_steps / num_train_epochs (every schedule then follows the new length) and "
                "what does not change the training (logging, saving, evaluation, trackers, time limits, workers) may "
                "change. Put these back (the run's recipe.yaml has them); or, to continue this run with the new "
                "values from the checkpoint's step on (e.g. a lower learning rate after a divergence), set "
                "training.resume_with_changed_settings=true; or start a new run from its weights: "
                f"model.pretrained_model_name_or_path={checkpoint} with another training.output_dir."
            )
    if state.get("world_size") not in (None, world_size):
        logger.warning(
            "Resuming a %s-process checkpoint on %s processes (same total batch %s): the data order is the same; "
            "per-process random states start afresh.",
            state.get("world_size"),
            world_size,
            total_batch_size,
        )
    return state


def log_resume_position(checkpoint: Path, saved_state: Mapping[str, Any], step: int, total_steps: int) -> bool:
    """Say where a resumed run stands; True when it has nothing left to train (``step >= total_steps``)."""
    saved_total = saved_state.get("total_steps")
    if step >= total_steps:
        where = "the last step" if step == total_steps else f"past the last step ({total_steps})"
        logger.warning(
            "%s is at step %d, %s: nothing left to train; the model now holds its weights, the final ones.",
            checkpoint,
            step,
            where,
        )
        return True
    if saved_total is not None and saved_total != total_steps:
        logger.warning(
            "The run was planned for %d optimizer steps and now has %d: every schedule (learning rate, weight decay, "
            "teacher momentum and temperature, ...) follows the new length from step %d on.",
            saved_total,
            total_steps,
            step,
        )
    return False


# Keys of a saved config.json that say nothing about the architecture or the loss.
_IGNORED_CONFIG_KEYS = frozenset(
    {
        "use_cache",
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
        "_name_or_path",
        "auto_map",
        "return_dict",
    }
)


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for every key that differs, nested dicts walked."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key in _IGNORED_CONFIG_KEYS:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif comparable(old) != comparable(new):
            differences.append((f"{prefix}{key}", old, new))
    return differences


def comparable(value: Any) -> Any:
    """A config value as it compares across YAML, config.json and Python: lists and tuples alike, 1.0 and 1 alike."""
    if isinstance(value, (list, tuple)):
        return [comparable(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _as_plain_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, int keys strings)."""
    return json.loads(json.dumps(value))


def _as_json(config) -> dict[str, Any]:
    """Every field of a ``PretrainedConfig`` (defaults included) as JSON types: int dict keys become strings."""
    return json.loads(config.to_json_string(use_diff=False))


# ---------------------------------------------------------------------------------------------------------------------
# Rotation
# ---------------------------------------------------------------------------------------------------------------------


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
            raise ValueError(
                "keep_best (save_best_total_limit) needs a metric: set metric_for_best_model, e.g. knn_top1"
            )

    def to_keep(self, checkpoints: list[Path]) -> set[Path]:
        keep = set(checkpoints if self.keep_last is None else checkpoints[-self.keep_last :])
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


def rotate_checkpoints(
    output_dir: str | os.PathLike, policy: RetentionPolicy, busy: Iterable[Path] = ()
) -> list[Path]:
    """Delete the checkpoints ``policy`` does not keep (main process); returns the deleted folders. ``busy``
    checkpoints (still uploading to the Hub, or the one a run resumes from) stay until a later rotation."""
    checkpoints = list_checkpoints(output_dir)
    keep = policy.to_keep(checkpoints) | {Path(path) for path in busy}
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
    total_steps: int | None = None  # the length of the run (optimizer steps) when this checkpoint was saved
    settings: dict[str, Any] = field(
        default_factory=dict
    )  # what a resume may not change (see check_resume_compatible)


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
