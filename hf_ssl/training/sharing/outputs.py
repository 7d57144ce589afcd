"""What a training script writes once training is over, in an order that never loses the trained model.

    model        config.json, model.safetensors      the hf_ssl model (save_model; first, before anything can fail)
    processor    preprocessor_config.json             how evaluation prepared images
    backbone     backbone/                             the teacher backbone as a plain transformers model
    recipe       recipe.yaml                           the resolved recipe of what ran
    card         README.md                             the model card
    knn          knn_results.json                      k-NN of the random init and of the trained model

Each later step runs only once the model is on disk; when one fails, ``RunOutputError`` says what was saved
where and what is missing. A run resumed after its last step (``only_missing``) writes only what is not there
yet, so a session cut after training and before the export finishes the job without touching the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from hf_ssl.errors import ConfigError
from hf_ssl.training.state import checkpointing

logger = logging.getLogger(__name__)

# (name, what a user looks for, the path that shows the step is done)
OUTPUTS = (
    ("model", "the trained model (config.json, model.safetensors)", "model.safetensors"),
    ("processor", "the image processor (preprocessor_config.json)", "preprocessor_config.json"),
    ("backbone", "the plain transformers backbone (backbone/)", "backbone/model.safetensors"),
    ("recipe", "the resolved recipe (recipe.yaml)", "recipe.yaml"),
    ("card", "the model card (README.md)", "README.md"),
    ("knn", "the k-NN results (knn_results.json)", "knn_results.json"),
)


# what failed, for the steps that are not the writing of one of OUTPUTS
FAILED_STEPS = {
    "knn": "the k-NN evaluation (the log has its traceback)",
    "push": "uploading the output directory to the Hub (push_to_hub)",
    "push_backbone": "uploading backbone/ to the Hub (push_backbone_to_hub)",
}
PUSH_STEPS = ("push", "push_backbone")


class RunOutputError(RuntimeError):
    """``step`` (one of ``OUTPUTS`` or ``FAILED_STEPS``) failed after training; the message lists what is saved
    where, what is missing, and how to write the rest. For a failed push, ``retry`` is the command (or commands)
    that uploads the saved outputs once the cause is fixed."""

    def __init__(
        self,
        step: str,
        output_dir: str | Path,
        cause: BaseException,
        final_step: int | None = None,
        retry: str | None = None,
    ):
        self.step, self.cause = step, cause
        output_dir = Path(output_dir)
        done = [label for _, label, marker in OUTPUTS if (output_dir / marker).exists()]
        missing = [label for _, label, marker in OUTPUTS if not (output_dir / marker).exists()]
        labels = {name: f"writing {label}" for name, label, _ in OUTPUTS}
        parts = [
            f"{FAILED_STEPS.get(step) or labels.get(step, step)} failed after training ({type(cause).__name__}: "
            f"{cause})."
        ]
        parts.append(f"Saved in {output_dir}: {'; '.join(done)}." if done else f"Nothing was saved in {output_dir}.")
        if missing:
            parts.append(f"Not written: {'; '.join(missing)}.")
        latest = checkpointing.latest_checkpoint(output_dir)
        if step in PUSH_STEPS and retry:
            parts.append(
                f"Nothing is lost: once the cause is fixed (log in with hf auth login or set HF_TOKEN, check the "
                f"network), upload the saved outputs with: {retry}"
            )
        elif latest is not None and latest.name == checkpointing.checkpoint_path(output_dir, final_step or -1).name:
            parts.append(
                f"{latest.name} holds the final weights: once the cause is fixed, the same command with "
                "--resume auto finishes the job without training again."
            )
        elif latest is not None:
            parts.append(f"The checkpoints are intact (latest: {latest.name}).")
        super().__init__(" ".join(parts))


def hub_repo_name(args) -> str:
    """The repository ``push_to_hub`` uploads to: ``hub_model_id``, else the output directory's name (as the
    Trainer)."""
    return args.hub_model_id or Path(args.output_dir).absolute().name


def hub_repo_error(args, error: BaseException, key: str = "push_to_hub") -> ConfigError:
    """The error for a Hub repository that ``push_to_hub`` (or ``push_backbone_to_hub``: ``key``) cannot create,
    raised before training."""
    if key == "push_to_hub":
        setting, repo, fix = (
            "training.push_to_hub=true",
            hub_repo_name(args),
            "check training.hub_model_id, or set training.push_to_hub=false",
        )
    else:
        setting, repo, fix = (
            f"training.{key}={getattr(args, key)}",
            getattr(args, key),
            f"check training.{key}, or set it to null",
        )
    return ConfigError(
        f"{setting}, but the Hub repository {repo!r} cannot be created ({type(error).__name__}: "
        f"{error}). Log in (hf auth login, or HF_TOKEN), {fix}; the run has not started"
    )


def save_run_outputs(
    trainer,
    output_dir: str | Path,
    *,
    image_processor,
    recipe,
    knn_results: dict,
    only_missing: bool = False,
    card_arguments: dict | None = None,
    export_backbone: Callable[[str], None],
) -> list[str]:
    """Write the outputs of a finished training run into ``output_dir`` (see the module docstring) and return
    the names of the steps that wrote something.

    ``trainer.save_model`` is called on every process (it gathers sharded weights); everything else runs on
    the main process. ``export_backbone(path)`` writes the plain backbone (from the saved model, so that sharded
    training exports whole weights). ``only_missing``: skip every output that already exists. ``card_arguments``
    go to ``trainer.create_model_card`` (``dataset``, ``dataset_config``, ``evaluation_split``).
    """
    output_dir = Path(output_dir)

    def wanted(marker: str) -> bool:
        return not (only_missing and (output_dir / marker).exists())

    written = []
    if wanted("model.safetensors"):
        try:
            trainer.save_model(_internal_call=True)  # not the Trainer's push of a user's save: the push comes last
        except Exception as error:
            raise RunOutputError("model", output_dir, error, trainer.state.global_step) from error
        written.append("model")
    if not trainer.is_world_process_zero():
        return written
    steps = (
        ("processor", "preprocessor_config.json", lambda: image_processor.save_pretrained(output_dir)),
        ("backbone", "backbone/model.safetensors", lambda: export_backbone(str(output_dir / "backbone"))),
        ("recipe", "recipe.yaml", lambda: recipe.save(output_dir)),
        ("card", "README.md", lambda: trainer.create_model_card(**(card_arguments or {}))),
        (
            "knn",
            "knn_results.json",
            lambda: (output_dir / "knn_results.json").write_text(json.dumps(knn_results, indent=2)),
        ),
    )
    for name, marker, write in steps:
        if not wanted(marker):
            continue
        try:
            write()
        except Exception as error:
            raise RunOutputError(name, output_dir, error, trainer.state.global_step) from error
        written.append(name)
    if only_missing:
        logger.info("Wrote the missing outputs: %s", ", ".join(written) or "none (all were there)")
    return written
