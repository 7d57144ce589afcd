"""Sharing a run on the Hugging Face Hub: the same files from both engines and from ``hf-ssl push``.

    files_to_push(output_dir)                  what a push uploads: the model, backbone/, the card, recipe,
                                               history and k-NN results; never checkpoints, staging folders, locks
    push_output_dir(output_dir, repo_id)       the run, as one commit (``push_to_hub`` of either engine)
    push_backbone(output_dir, repo_id)         backbone/ alone at the root of its own repository, with its own card
    CheckpointPusher                           ``hub_strategy`` every_save / checkpoint / all_checkpoints during
                                               training
    fetch_hub_checkpoint(output_dir, repo_id)  ``--resume hub``: the repository's last-checkpoint/ as checkpoint-<step>
    main(argv)                                 ``hf-ssl push OUTPUT_DIR``: push a finished output directory (or retry)

A run saves everything locally before it pushes anything, so a push that fails (no token, no network) loses
nothing: ``hf-ssl push OUTPUT_DIR --repo_id ORG/NAME`` uploads the same files later.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import Future, wait
from pathlib import Path

import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hf_ssl.errors import ConfigError
from hf_ssl.training.sharing.model_card import backbone_card
from hf_ssl.training.state import checkpointing

logger = logging.getLogger(__name__)

# What a push uploads from the output directory. Not training_args.bin: a pickle (it loads only with
# weights_only=False) of the settings recipe.yaml already holds as plain YAML.
PUSHED_FILES = (
    "README.md",
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "recipe.yaml",
    "history.json",
    "history.png",
    "knn_results.json",
)
# backbone/: the plain transformers backbone; runs/: TensorBoard traces (report_to=tensorboard), which the Hub
# shows as the repository's training metrics, as it does for a Trainer's push
PUSHED_FOLDERS = ("backbone", "runs")
SHARDED_WEIGHTS = re.compile(r"^model-\d+-of-\d+\.safetensors$")
HUB_CHECKPOINT = "last-checkpoint"  # where hub_strategy=checkpoint keeps the latest checkpoint, as the Trainer
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
PUSH_WEIGHTS_PREFIX = ".hub-weights-"  # the accelerate engine's from_pretrained copy of a checkpoint's weights


# ----- what a push sends ---------------------------------------------------------------------------------------------


def files_to_push(output_dir: str | Path, backbone_only: bool = False) -> list[str]:
    """The paths, in the repository, of every file a push of ``output_dir`` uploads, sorted.

    The run (default): ``PUSHED_FILES`` and the weight shards that exist, and every file under ``backbone/`` and
    ``runs/``; not the checkpoints, their staging folders, the run's lock or ``training_args.bin``. With
    ``backbone_only``: the files of ``backbone/`` at the root, and ``README.md``, the backbone's own card, rendered
    when it is pushed (``backbone_card``).
    """
    output_dir = Path(output_dir)
    if backbone_only:
        return sorted({"README.md", *_files_under(output_dir / "backbone")})
    paths = (
        [
            path.name
            for path in output_dir.iterdir()
            if path.is_file() and (path.name in PUSHED_FILES or SHARDED_WEIGHTS.match(path.name))
        ]
        if output_dir.is_dir()
        else []
    )
    for folder in PUSHED_FOLDERS:
        paths += [f"{folder}/{path}" for path in _files_under(output_dir / folder)]
    return sorted(paths)


def _files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative POSIX paths), hidden files and folders left out."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)


def check_pushable(output_dir: str | Path, backbone_only: bool = False) -> None:
    """Raise a ``ConfigError`` when ``output_dir`` does not hold the model a push is for."""
    output_dir = Path(output_dir)
    folder, what = (
        (output_dir / "backbone", "backbone/ (the plain transformers backbone)")
        if backbone_only
        else (output_dir, "trained model")
    )
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not ((folder / "config.json").is_file() and has_weights):
        raise ConfigError(
            f"{output_dir} holds no {what} (config.json, model.safetensors): give the output directory of a finished "
            "run (a run cut after training writes it with --resume auto)"
        )


def push_command(output_dir: str | Path, repo_id: str, backbone_only: bool = False) -> str:
    """The ``hf-ssl push`` command that uploads ``output_dir`` to ``repo_id`` (what an error tells to run)."""
    return f"hf-ssl push {shlex.quote(str(output_dir))} --repo_id {repo_id}" + (
        " --backbone_only" if backbone_only else ""
    )


# ----- pushing a finished run ----------------------------------------------------------------------------------------


def create_hub_repo(name: str, token: str | None = None, private: bool | None = None) -> str:
    """Create the model repository ``name`` if it does not exist and return its full id (``org/name``)."""
    return HfApi(token=token).create_repo(name, private=private, exist_ok=True).repo_id


def push_output_dir(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "End of training",
    blocking: bool = True,
):
    """Upload ``files_to_push(output_dir)`` to the existing repository ``repo_id`` as one commit; returns its
    ``CommitInfo``, or a ``Future`` of it when not ``blocking``. The card (``README.md``) must already name
    ``repo_id`` (the engines' ``create_model_card``, or ``retarget_card``)."""
    output_dir = Path(output_dir)
    check_pushable(output_dir)
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(output_dir / path))
        for path in files_to_push(output_dir)
    ]
    return HfApi(token=token).create_commit(
        repo_id, operations, commit_message=commit_message, revision=revision, run_as_future=not blocking
    )


def push_backbone(
    output_dir: str | Path,
    repo_id: str,
    *,
    base_model: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload the pretrained backbone",
):
    """Create ``repo_id`` if needed and upload ``<output_dir>/backbone`` at its root with the backbone's card
    (``backbone_card``; ``base_model``: the run's repository when it is on the Hub) as one commit. Returns the
    repository's full id."""
    output_dir = Path(output_dir)
    check_pushable(output_dir, backbone_only=True)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card = backbone_card(output_dir, repo_id, base_model=base_model)
    operations = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode("utf-8"))]
    operations += [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(output_dir / "backbone" / path))
        for path in files_to_push(output_dir, backbone_only=True)
        if path != "README.md"
    ]
    api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
    return repo_id


def retarget_card(readme: str | Path, repo_id: str) -> bool:
    """Make the card ``readme`` name ``repo_id`` (its usage snippets, title and model-index) when it was written
    for another repository (a run pushed under another name, or one whose repository was not created yet).
    Returns whether it changed."""
    readme = Path(readme)
    if not readme.is_file():
        return False
    card = ModelCard.load(readme)
    named = set(re.findall(r'from_pretrained\("([^"]+)"', card.text)) - {repo_id}
    if not named:
        return False
    for old in named:
        card.text = card.text.replace(f'"{old}"', f'"{repo_id}"')
        card.text = re.sub(rf"^# {re.escape(old)}$", f"# {repo_id}", card.text, flags=re.MULTILINE)
    if card.data.eval_results:
        card.data.model_name = repo_id
    card.save(readme)
    return True


def pretraining_repo(output_dir: str | Path, api: HfApi) -> str | None:
    """The Hub repository the run in ``output_dir`` was pushed to, when its model is there: the ``base_model`` of its
    backbone's card. The card names it in its snippets; ``recipe.yaml`` has ``training.hub_model_id``."""
    output_dir = Path(output_dir)
    candidates = []
    if (output_dir / "README.md").is_file():
        candidates += re.findall(r'from_pretrained\("([^"/]+/[^"]+)"', (output_dir / "README.md").read_text())
    if (output_dir / "recipe.yaml").is_file():
        candidates.append(
            ((yaml.safe_load((output_dir / "recipe.yaml").read_text()) or {}).get("training") or {}).get(
                "hub_model_id"
            )
        )
    for candidate in dict.fromkeys(candidates):
        if isinstance(candidate, str) and "/" in candidate:
            try:
                if api.file_exists(candidate, "config.json"):
                    return candidate
            except Exception:  # the Hub cannot say: the card names no base model rather than a wrong one
                return None
    return None


def push_run(
    output_dir: str | Path,
    repo_id: str | None = None,
    *,
    backbone_only: bool = False,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> str:
    """What ``hf-ssl push`` does: upload the finished run in ``output_dir`` (or, ``backbone_only``, its backbone) and
    return the repository's full id. ``repo_id`` defaults to the recipe's ``training.hub_model_id``, else the output
    directory's name (``training.push_backbone_to_hub`` for the backbone)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ConfigError(f"{output_dir} is not a folder: give the output directory of a finished run")
    check_pushable(output_dir, backbone_only)
    recipe = yaml.safe_load((output_dir / "recipe.yaml").read_text()) if (output_dir / "recipe.yaml").is_file() else {}
    training = (recipe or {}).get("training") or {}
    if backbone_only:
        repo_id = repo_id or training.get("push_backbone_to_hub")
        if not repo_id:
            raise ConfigError(
                "--backbone_only needs --repo_id ORG/NAME (the recipe sets no training.push_backbone_to_hub)"
            )
        base_model = pretraining_repo(output_dir, HfApi(token=token))
        return push_backbone(
            output_dir, repo_id, base_model=base_model, token=token, private=private, revision=revision
        )
    repo_id = create_hub_repo(repo_id or training.get("hub_model_id") or output_dir.absolute().name, token, private)
    retarget_card(output_dir / "README.md", repo_id)
    push_output_dir(output_dir, repo_id, token=token, revision=revision, commit_message="Upload the pretraining run")
    return repo_id


def main(argv: Sequence[str] | None = None) -> int:
    """``hf-ssl push``: exit code 0 once pushed, 2 for a folder or option at fault, 1 when the Hub refused or
    could not be reached (the message says how to retry)."""
    parser = argparse.ArgumentParser(
        prog="hf-ssl push",
        description="Upload the output directory of a finished run to the Hugging Face Hub: the hf_ssl model, "
        "backbone/, the image processor, recipe.yaml, history.json/png, knn_results.json and the model card (never "
        "checkpoints). Also how to retry a push that failed at the end of a run.",
    )
    parser.add_argument("output_dir", help="The run's training.output_dir.")
    parser.add_argument(
        "--repo_id",
        default=None,
        help="ORG/NAME (or NAME in your namespace); default: the recipe's "
        "training.hub_model_id, else the folder's name (--backbone_only: training.push_backbone_to_hub).",
    )
    parser.add_argument(
        "--private", action="store_true", help="Create the repository private (an existing one keeps its visibility)."
    )
    parser.add_argument(
        "--backbone_only",
        action="store_true",
        help="Push backbone/ alone, at the root of its own repository, with a card for a plain transformers model.",
    )
    parser.add_argument(
        "--token", default=None, help="Hub token with write access (default: HF_TOKEN or the saved login)."
    )
    arguments = parser.parse_args(argv)
    what = "backbone/ of " if arguments.backbone_only else ""
    try:
        repo_id = push_run(
            arguments.output_dir,
            arguments.repo_id,
            backbone_only=arguments.backbone_only,
            private=True if arguments.private else None,
            token=arguments.token,
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # no token, no network, a refused commit: nothing local changed
        print(
            f"error: pushing {what}{arguments.output_dir} failed ({type(error).__name__}: {error}); nothing local "
            "changed. Log in (hf auth login, or HF_TOKEN / --token), check the network and --repo_id, then run the "
            "same command again",
            file=sys.stderr,
        )
        return 1
    print(f"Pushed {what}{arguments.output_dir} to https://huggingface.co/{repo_id}")
    return 0


# ----- checkpoints during training -----------------------------------------------------------------------------------


def hub_strategy(args) -> str:
    """``args.hub_strategy`` as a plain string (``TrainingArguments`` keeps an enum)."""
    return str(getattr(args.hub_strategy, "value", args.hub_strategy))


def model_files(folder: Path) -> list[str]:
    """The files of a ``from_pretrained`` model in ``folder``: its config and weights (shards and index too)."""
    if not folder.is_dir():
        return []
    names = ("config.json", "model.safetensors", "model.safetensors.index.json")
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file() and (path.name in names or SHARDED_WEIGHTS.match(path.name))
    )


def push_checkpoint(
    api: HfApi,
    repo_id: str,
    checkpoint: Path,
    *,
    weights: Path | None = None,
    folder_in_repo: str | None = None,
    commit_message: str,
    revision: str | None = None,
    remove_weights: bool = False,
) -> None:
    """Upload the model so far (config and weights from ``weights``, default the checkpoint) at the root of
    ``repo_id``, then, with ``folder_in_repo``, the whole committed ``checkpoint`` into that folder as one commit
    that also deletes what an earlier checkpoint left there (so ``last-checkpoint/`` is always one checkpoint).
    ``remove_weights``: delete ``weights`` afterwards (a copy made for this push)."""
    weights = weights or checkpoint
    try:
        root = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(weights / name)) for name in model_files(weights)
        ]
        if len(root) > 1:  # weights beside the config (a DeepSpeed or FSDP checkpoint holds its own format)
            api.create_commit(repo_id, root, commit_message=commit_message, revision=revision)
        if folder_in_repo is not None:
            files = _files_under(checkpoint)
            prefix = f"{folder_in_repo}/"
            stale = [
                path
                for path in api.list_repo_files(repo_id, revision=revision)
                if path.startswith(prefix) and path[len(prefix) :] not in files
            ]
            operations = [CommitOperationDelete(path_in_repo=path) for path in stale]
            operations += [
                CommitOperationAdd(path_in_repo=prefix + path, path_or_fileobj=str(checkpoint / path))
                for path in files
            ]
            api.create_commit(repo_id, operations, commit_message=f"{commit_message}, checkpoint", revision=revision)
    finally:
        if remove_weights:
            shutil.rmtree(weights, ignore_errors=True)


class CheckpointPusher:
    """Pushes each committed checkpoint as ``args.hub_strategy`` asks (with ``push_to_hub``), in the background on
    one upload thread, as the Trainer does, so training does not wait for the network:

        every_save        the model so far (config.json, model.safetensors) at the repository's root
        checkpoint        the same, and the whole checkpoint as last-checkpoint/ (what --resume hub continues from)
        all_checkpoints   the same, and each checkpoint as checkpoint-<step>/
        end               nothing during training (push_to_hub uploads the run at the end)

    A checkpoint saved while a push is still running waits, unless ``hub_always_push`` queues it at once: only the
    latest one waiting is pushed, when training ends (``wait``), so the last checkpoint of a session is always on
    the Hub. A push that fails is logged and training goes on (the local checkpoint is intact). The engines call
    ``wait`` at the end of training and before the end-of-training push, and keep the checkpoints still to upload
    out of rotation (``pushing``).
    """

    def __init__(self, args):
        self.args = args
        self.strategy = hub_strategy(args)
        self.jobs: list[tuple[Path, Path | None, Future]] = []  # (checkpoint, weights copy, upload)
        self.waiting: tuple | None = None  # the arguments of push for the latest checkpoint not pushed yet
        self._api = None

    @property
    def active(self) -> bool:
        """Whether checkpoints are pushed during training at all."""
        return bool(self.args.push_to_hub) and self.strategy != "end"

    @property
    def api(self) -> HfApi:
        if self._api is None:  # one instance: its single worker thread runs the pushes in order
            self._api = HfApi(token=self.args.hub_token)
        return self._api

    def busy(self) -> bool:
        return any(not future.done() for *_, future in self.jobs)

    def pushing(self) -> set[Path]:
        """The checkpoints whose upload has not finished or not started (rotation must not delete them yet)."""
        waiting = {self.waiting[1]} if self.waiting is not None else set()
        return waiting | {checkpoint for checkpoint, _, future in self.jobs if not future.done()}

    def push(
        self, repo_id: str | None, checkpoint: Path, step: int, epoch: float, weights: Path | None = None
    ) -> bool:
        """Start pushing the committed ``checkpoint`` (main process), or keep it for ``wait`` while an upload is
        running; ``weights``: where its ``from_pretrained`` weights are when the checkpoint holds another format
        (removed once pushed). Returns whether the upload started."""
        if not self.active or repo_id is None:
            if weights is not None:
                shutil.rmtree(weights, ignore_errors=True)
            return False
        if self.busy() and not self.args.hub_always_push:
            logger.info("%s waits: the previous push to the Hub is still running", checkpoint.name)
            self._drop_waiting()
            self.waiting = (repo_id, checkpoint, step, epoch, weights)
            return False
        self._drop_waiting()
        remove_weights = weights is not None
        save_strategy = str(getattr(self.args.save_strategy, "value", self.args.save_strategy))
        message = (
            f"Training in progress, step {step}"
            if save_strategy == "steps"
            else f"Training in progress, epoch {int(epoch)}"
        )
        folder = {"checkpoint": HUB_CHECKPOINT, "all_checkpoints": checkpoint.name}.get(self.strategy)
        future = self.api.run_as_future(
            push_checkpoint,
            self.api,
            repo_id,
            checkpoint,
            weights=weights,
            folder_in_repo=folder,
            commit_message=message,
            revision=self.args.hub_revision,
            remove_weights=remove_weights,
        )
        future.add_done_callback(lambda done, name=checkpoint.name: self._report(done, name, repo_id))
        self.jobs = [job for job in self.jobs if not job[2].done()] + [(checkpoint, weights, future)]
        return True

    @staticmethod
    def _report(future: Future, name: str, repo_id: str) -> None:
        error = future.exception()
        if error is not None:
            logger.warning(
                "Pushing %s to %s failed (%s: %s); the local checkpoint is intact and training goes on",
                name,
                repo_id,
                type(error).__name__,
                error,
            )
        else:
            logger.info("Pushed %s to %s", name, repo_id)

    def _drop_waiting(self) -> None:
        """Forget the checkpoint waiting to be pushed (a newer one replaces it)."""
        if self.waiting is not None and self.waiting[4] is not None:
            shutil.rmtree(self.waiting[4], ignore_errors=True)
        self.waiting = None

    def wait(self) -> None:
        """Push the checkpoint still waiting, if any, then block until every push has finished (successfully or
        not)."""
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            self.jobs = [job for job in self.jobs if not job[2].done()]
            wait([future for *_, future in self.jobs])  # the earlier upload first: the repository ends at the latest
            self.push(*waiting)
        futures = [future for *_, future in self.jobs]
        if any(not future.done() for future in futures):
            logger.info("Waiting for the checkpoint push to the Hub to finish")
        wait(futures)

    def weights_copy(self, output_dir: str | Path, step: int) -> Path:
        """Where the accelerate engine writes the ``from_pretrained`` weights of checkpoint ``step`` for this push
        (its checkpoints hold accelerate's state); copies a killed run left behind are removed first."""
        output_dir = Path(output_dir)
        uploading = {weights for _, weights, future in self.jobs if weights is not None and not future.done()}
        if self.waiting is not None:
            uploading.add(self.waiting[4])
        for stale in output_dir.glob(f"{PUSH_WEIGHTS_PREFIX}*"):
            if stale not in uploading:
                shutil.rmtree(stale, ignore_errors=True)
        return output_dir / f"{PUSH_WEIGHTS_PREFIX}{step}"


# ----- resuming from the Hub -----------------------------------------------------------------------------------------


def is_hub_resume(resume) -> bool:
    """``--resume hub`` (or ``training.resume_from_checkpoint: hub``)."""
    return isinstance(resume, str) and resume.lower() == "hub"


def fetch_hub_checkpoint(
    output_dir: str | Path,
    repo_id: str | None,
    *,
    token: str | None = None,
    revision: str | None = None,
) -> Path | None:
    """``--resume hub``: bring ``last-checkpoint/`` of ``repo_id`` (pushed by ``hub_strategy=checkpoint``) into
    ``output_dir`` as ``checkpoint-<step>`` (its step from ``hf_ssl_state.json``), unless ``output_dir`` already
    holds an intact checkpoint at that step or later, which is then used (the log says which). Returns the
    checkpoint to resume from, or None when the repository has no ``last-checkpoint/`` yet (a first session
    starts afresh). Unreachable Hub or a damaged download: ``ConfigError``, before training.
    Main process only; the other processes read the folder once it is written."""
    output_dir = Path(output_dir)
    if not repo_id or "/" not in repo_id:
        raise ConfigError(
            "--resume hub needs the run's Hub repository: set training.hub_model_id=ORG/NAME (or "
            "training.push_to_hub=true with training.hub_strategy=checkpoint, which pushes the checkpoints it resumes "
            "from)"
        )
    api = HfApi(token=token)
    state_file = f"{HUB_CHECKPOINT}/{checkpointing.STATE_FILE}"
    try:
        state_path = api.hf_hub_download(repo_id, state_file, revision=revision)
    except GatedRepoError as error:
        raise _hub_resume_error(repo_id, error) from error
    except (RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as error:
        logger.warning(
            "resume=hub: %s has no %s/ (%s); resuming from the latest local checkpoint if any, else starting afresh",
            repo_id,
            HUB_CHECKPOINT,
            type(error).__name__,
        )
        return checkpointing.latest_checkpoint(output_dir)
    except Exception as error:  # offline, no token, the Hub down: never start afresh over a run that exists
        raise _hub_resume_error(repo_id, error) from error
    hub_step = int(checkpointing.read_state(Path(state_path).parent)["step"])
    local = [
        path for path in checkpointing.list_checkpoints(output_dir) if checkpointing.checkpoint_damage(path) is None
    ]
    if local and checkpointing.checkpoint_step(local[-1]) >= hub_step:
        logger.info(
            "resume=hub: the local %s is at or past %s/%s (step %d): resuming from the local one",
            local[-1].name,
            repo_id,
            HUB_CHECKPOINT,
            hub_step,
        )
        return local[-1]
    staging = checkpointing.prepare_staging(output_dir, hub_step)
    try:
        api.snapshot_download(repo_id, revision=revision, allow_patterns=[f"{HUB_CHECKPOINT}/*"], local_dir=staging)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _hub_resume_error(repo_id, error) from error
    downloaded = staging / HUB_CHECKPOINT
    damage = checkpointing.checkpoint_damage(downloaded)
    if damage is not None:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(
            f"{repo_id}/{HUB_CHECKPOINT} is damaged ({damage}): push it again, or resume from a local checkpoint with "
            "--resume auto"
        )
    final = checkpointing.commit_checkpoint(downloaded, checkpointing.checkpoint_path(output_dir, hub_step))
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("resume=hub: downloaded %s/%s (step %d) to %s", repo_id, HUB_CHECKPOINT, hub_step, final)
    return final


def _hub_resume_error(repo_id: str, error: BaseException) -> ConfigError:
    return ConfigError(
        f"--resume hub cannot read {repo_id}/{HUB_CHECKPOINT} ({type(error).__name__}: {error}). Check the network "
        "and the login (hf auth login, or HF_TOKEN), or continue from a local checkpoint with --resume auto; the run "
        "has not started"
    )
