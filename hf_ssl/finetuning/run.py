"""Fine-tune a pretrained backbone on an image-classification dataset: what ``hf-ssl finetune`` and
``recipes/finetune_classification.py`` run.

    python recipes/finetune_classification.py --config recipes/finetune_fashion_mnist.yaml \\
        model.model_name_or_path=outputs/dino-fashion-mnist-demo
    python recipes/finetune_classification.py --config recipes/finetune_fashion_mnist.yaml model.mode=linear_probe

Every key of the YAML file can be overridden as section.key=value (or --key value for a key only one section has);
--help lists them all. --resume auto continues from the latest checkpoint in training.output_dir; --resume hub from
the ``last-checkpoint/`` a run with ``training.hub_strategy: checkpoint`` pushed to ``training.hub_model_id`` (the
next Kaggle / Colab session). The output directory receives the fine-tuned ``AutoModelForImageClassification`` (best
checkpoint by validation accuracy) with its image processor, ``recipe.yaml``, the metrics (``all_results.json``) and
a model card.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
import yaml
from accelerate import PartialState
from transformers import EarlyStoppingCallback, set_seed

from hf_ssl.errors import ConfigError
from hf_ssl.finetuning.arguments import (
    FINETUNE_ENGINE,
    FinetuneAugmentationArguments,
    FinetuneDataArguments,
    FinetuneModelArguments,
    FinetuningArguments,
)
from hf_ssl.training.setup.config import (
    SectionHelp,
    apply_overrides,
    build_dataclass,
    check_sections,
    dataclass_help,
    load_yaml,
    parse_overrides,
    to_plain,
)
from hf_ssl.training.state import checkpointing

logger = logging.getLogger("hf_ssl.finetune")

SECTIONS = ("model", "data", "augmentation", "training")
HUB_CHECKPOINT = "last-checkpoint"


@dataclass
class FinetuneRecipe:
    """The four sections of a fine-tuning recipe file (see ``hf_ssl.finetuning.arguments``)."""

    model: FinetuneModelArguments
    data: FinetuneDataArguments
    augmentation: FinetuneAugmentationArguments
    training: FinetuningArguments

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> FinetuneRecipe:
        check_sections(raw, SECTIONS, source)
        return cls(
            model=build_dataclass(FinetuneModelArguments, raw.get("model"), "model"),
            data=build_dataclass(FinetuneDataArguments, raw.get("data"), "data"),
            augmentation=build_dataclass(FinetuneAugmentationArguments, raw.get("augmentation"), "augmentation"),
            training=build_dataclass(FinetuningArguments, raw.get("training"), "training"),
        )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> FinetuneRecipe:
        raw = apply_overrides(load_yaml(path), parse_overrides(list(overrides), cls.section_keys()))
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def sections_help(cls) -> list[SectionHelp]:
        own = FinetuningArguments.own_field_names()
        return [
            SectionHelp("model", FinetuneModelArguments.__doc__, (("", dataclass_help(FinetuneModelArguments)),)),
            SectionHelp("data", FinetuneDataArguments.__doc__, (("", dataclass_help(FinetuneDataArguments)),)),
            SectionHelp(
                "augmentation",
                FinetuneAugmentationArguments.__doc__,
                (("", dataclass_help(FinetuneAugmentationArguments)),),
            ),
            SectionHelp(
                "training",
                FinetuningArguments.__doc__,
                (
                    (
                        "hf_ssl's keys, and TrainingArguments keys with a fine-tuning default:",
                        dataclass_help(FinetuningArguments, list(own)),
                    ),
                    (
                        "The training section also takes every other transformers.TrainingArguments key:",
                        tuple(key for key in dataclass_help(FinetuningArguments) if key.name not in own),
                    ),
                ),
            ),
        ]

    @classmethod
    def section_keys(cls) -> dict[str, list[str]]:
        return {section.name: section.keys for section in cls.sections_help()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": to_plain(dataclasses.asdict(self.model)),
            "data": to_plain(dataclasses.asdict(self.data)),
            "augmentation": to_plain(dataclasses.asdict(self.augmentation)),
            "training": {key: to_plain(value) for key, value in self.training.to_dict().items()},
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "recipe.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


# What a resume may not change (besides the total batch): everything that shapes the training of the model. The
# rest (saving, logging, evaluation batch, test split, trackers, Hub, time limits, workers) may change.
RESUME_FIXED_KEYS = {
    "data": (
        "dataset",
        "dataset_config_name",
        "data_dir",
        "data_files",
        "image_column",
        "label_column",
        "train_split",
        "validation_split",
        "train_val_split",
        "max_train_samples",
        "max_eval_samples",
        "channels_last",
    ),
    "training": (
        "learning_rate",
        "weight_decay",
        "warmup_ratio",
        "warmup_steps",
        "lr_scheduler_type",
        "lr_scheduler_kwargs",
        "num_train_epochs",
        "max_steps",
        "seed",
        "data_seed",
        "optim",
        "optim_args",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "label_smoothing_factor",
        "eval_strategy",
        "eval_steps",
        "metric_for_best_model",
        "greater_is_better",
    ),
}


def resume_settings(recipe: FinetuneRecipe) -> dict[str, Any]:
    """The recipe values a fine-tuning checkpoint records and a resume must match (``RESUME_FIXED_KEYS``, every key of
    the model and augmentation sections) as JSON types."""
    values = recipe.to_dict()
    settings = {"model": values["model"], "augmentation": values["augmentation"]}
    for section, keys in RESUME_FIXED_KEYS.items():
        settings[section] = {key: values[section].get(key) for key in keys}
    return json.loads(json.dumps(settings))


def resolve_resume(resume: str | None, args: FinetuningArguments) -> Path | None:
    """The checkpoint to resume from: ``auto`` = the latest intact one in ``output_dir`` (an incomplete or damaged one
    is passed over with a warning naming it; None when there is none), ``hub`` = the ``last-checkpoint/`` pushed to
    ``hub_model_id`` (downloaded into ``output_dir``; a newer local checkpoint wins; a repository without one yet: the
    local checkpoint or a fresh start, so one command starts and continues a job), or a checkpoint folder. Then, on the
    main process, the output directory is locked for this run, and a fresh start refuses a folder holding another
    run's checkpoints or model unless ``overwrite_output_dir`` (``checkpointing.guard_output_dir``)."""
    if resume == "hub":
        local = checkpointing.resolve_resume("auto", args.output_dir)
        checkpoint = _download_hub_checkpoint(args, local)
    elif resume is not None:
        if resume != "auto":
            refuse_pretraining_checkpoint(resume)
        checkpoint = checkpointing.resolve_resume(resume, args.output_dir)
    else:
        checkpoint = None
    if PartialState().is_main_process:
        checkpointing.guard_output_dir(
            args.output_dir, checkpoint, resume is not None, args.overwrite_output_dir, "model.model_name_or_path"
        )
    return checkpoint


def refuse_pretraining_checkpoint(path: str | Path) -> None:
    """``--resume`` continues a fine-tuning checkpoint; a pretraining run or checkpoint is a place to start from."""
    path = Path(path)
    state = checkpointing.read_state(path) if (path / checkpointing.STATE_FILE).is_file() else {}
    model_type = None
    if (path / "config.json").is_file():
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    pretraining = state.get("engine") not in (None, FINETUNE_ENGINE) or (
        not state and str(model_type).startswith("hf_ssl_")
    )
    if pretraining:
        what = state.get("method") or str(model_type).removeprefix("hf_ssl_")
        raise ConfigError(
            f"--resume {path}: this is a {what} pretraining {'checkpoint' if state else 'run'}, not a fine-tuning "
            f"checkpoint. To fine-tune from it, start a new run with model.model_name_or_path={path} (without "
            "--resume); --resume continues a fine-tuning run from one of its own checkpoint-<step> folders"
        )


def check_resume_compatible(checkpoint: Path, recipe: FinetuneRecipe, total_batch_size: int) -> dict[str, Any]:
    """Raise a ``ConfigError`` naming every changed key when ``checkpoint`` cannot continue this recipe (another
    engine, other settings, another total batch); ``training.resume_with_changed_settings`` lets the settings change,
    with a warning. Returns the checkpoint's state."""
    refuse_pretraining_checkpoint(checkpoint)
    state = checkpointing.read_state(checkpoint)
    saved_batch = state.get("total_batch_size")
    if saved_batch is not None and saved_batch != total_batch_size:
        raise ConfigError(
            f"{checkpoint} was trained with a total batch of {saved_batch} ({state.get('world_size')} processes); "
            f"this run has {total_batch_size}. The data position and the schedule count optimizer steps of that "
            "batch: set per_device_train_batch_size x gradient_accumulation_steps x processes back to it"
        )
    differences = checkpointing.config_differences(state.get("settings") or {}, resume_settings(recipe))
    if differences:
        changes = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, old, new in differences[:10])
        if not recipe.training.resume_with_changed_settings:
            raise ConfigError(
                f"{checkpoint} was trained with other settings: {changes}. A resume continues the run that wrote it: "
                "put these back (the run's recipe.yaml has them), set training.resume_with_changed_settings=true to "
                "continue it with the new values from its step on, or start a new run (another training.output_dir)"
            )
        logger.warning("Resuming %s with changed settings (resume_with_changed_settings): %s", checkpoint, changes)
    return state


def _download_hub_checkpoint(args: FinetuningArguments, local: Path | None) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    if not args.hub_model_id:
        raise ConfigError(
            "--resume hub needs training.hub_model_id: the repository the earlier session pushed its checkpoints to"
        )
    target = Path(args.output_dir) / "_hub_checkpoint"  # "_*" is left out of the Trainer's Hub pushes
    try:
        snapshot_download(
            args.hub_model_id,
            allow_patterns=[f"{HUB_CHECKPOINT}/*"],
            local_dir=target,
            token=args.hub_token,
            revision=args.hub_revision,
        )
    except RepositoryNotFoundError:
        logger.warning(
            "--resume hub: %s does not exist yet; %s",
            args.hub_model_id,
            "resuming from the local " + local.name if local else "starting afresh",
        )
        return local
    except Exception as error:  # offline, no token, the Hub down: never start afresh over a run that exists
        raise ConfigError(
            f"--resume hub: cannot download {HUB_CHECKPOINT}/ of {args.hub_model_id!r} ({type(error).__name__}: "
            f"{error}). Check training.hub_model_id, the token (hf auth login, HF_TOKEN) and the network; --resume "
            "auto continues from a local checkpoint"
        ) from error
    checkpoint = target / HUB_CHECKPOINT
    if not (checkpoint / "trainer_state.json").is_file():  # a first session: nothing pushed yet
        logger.warning(
            "--resume hub: %s has no %s/ yet (push it with training.push_to_hub=true and "
            "training.hub_strategy=checkpoint); %s",
            args.hub_model_id,
            HUB_CHECKPOINT,
            "resuming from the local " + local.name if local else "starting afresh",
        )
        return local
    damage = checkpointing.checkpoint_damage(checkpoint)
    if damage is not None:
        raise ConfigError(f"--resume hub: {HUB_CHECKPOINT}/ of {args.hub_model_id!r} cannot be resumed from: {damage}")
    hub_step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    if local is not None and checkpointing.checkpoint_step(local) > hub_step:
        logger.info(
            "--resume hub: the local %s is newer than the Hub's step %d; resuming from it", local.name, hub_step
        )
        return local
    logger.info("--resume hub: resuming from step %d of %s", hub_step, args.hub_model_id)
    return checkpoint


def finished_at(checkpoint: Path, args: FinetuningArguments) -> str | None:
    """Why the run of ``checkpoint`` has nothing left to train ("its last step", "early stopping"), or None. The
    training length cannot have changed (a resume refuses it unless resume_with_changed_settings, see
    ``check_resume_compatible``); with a changed length, the Trainer decides."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if args.resume_with_changed_settings:
        return None
    if state["global_step"] >= state["max_steps"]:
        return "its last step"
    early = (state.get("stateful_callbacks") or {}).get("EarlyStoppingCallback") or {}
    counter = (early.get("attributes") or {}).get("early_stopping_patience_counter", 0)
    if args.early_stopping_patience and counter >= args.early_stopping_patience:
        return "early stopping"
    return None


def saved_results(output_dir: str | Path, step: int) -> dict[str, Any] | None:
    """The results a finished run wrote for ``step`` (``all_results.json`` beside the model), or None."""
    output_dir = Path(output_dir)
    state, results = output_dir / "trainer_state.json", output_dir / "all_results.json"
    if not (state.is_file() and results.is_file() and (output_dir / "config.json").is_file()):
        return None
    if json.loads(state.read_text()).get("global_step") != step:
        return None
    return json.loads(results.read_text())


def run_finetuning(recipe: FinetuneRecipe, resume: str | None = None) -> dict[str, float]:
    """Fine-tune as ``recipe`` says and write the outputs; returns the final metrics (``eval_*`` of the validation
    split with the best model, ``test_*`` of the test split when there is one). A resumed run that had already finished
    keeps its outputs and returns its saved results."""
    from transformers import TrainerState

    from hf_ssl.data import load_image_dataset, undecoded_images
    from hf_ssl.finetuning.card import write_finetune_card
    from hf_ssl.finetuning.data import ClassificationCollator, SeededExamples, check_images_fit, split_labelled_dataset
    from hf_ssl.finetuning.metrics import compute_metrics
    from hf_ssl.finetuning.model import (
        build_classification_model,
        freeze_backbone,
        load_image_processor,
        resolve_backbone_source,
    )
    from hf_ssl.finetuning.trainer import FinetuneTrainer

    args, data = recipe.training, recipe.data
    checkpoint = resolve_resume(resume, args)
    if checkpoint is not None:
        check_resume_compatible(checkpoint, recipe, args.total_batch_size)
        finished = finished_at(checkpoint, args)
        kept = saved_results(args.output_dir, checkpointing.checkpoint_step(checkpoint)) if finished else None
        if kept is not None:
            print(
                f"The run in {args.output_dir} finished at step {checkpointing.checkpoint_step(checkpoint)} "
                f"({finished}): nothing left to train, its model and results are kept. To train further, start a new "
                f"run from it: model.model_name_or_path={args.output_dir} and another training.output_dir"
            )
            return kept
    else:
        finished = None
    set_seed(args.seed)

    # 1. the labelled splits and their class names
    try:
        dataset = load_image_dataset(
            data.dataset,
            name=data.dataset_config_name,
            data_dir=data.data_dir,
            data_files=data.data_files,
            image_column=data.image_column,
            label_column=data.label_column,
        )
        splits = split_labelled_dataset(
            dataset,
            data.train_split,
            data.validation_split,
            data.test_split,
            data.train_val_split,
            args.seed,
            data.max_train_samples,
            data.max_eval_samples,
        )
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"data: {error}") from error

    # 2. the backbone with a new head; the processor it was trained with
    source = resolve_backbone_source(
        recipe.model.model_name_or_path, recipe.model.revision, Path(args.output_dir) / "_pretrained_backbone"
    )
    image_processor = load_image_processor(source, recipe.model.image_processor_name_or_path)
    model = build_classification_model(source, splits.label_names, from_scratch=recipe.model.from_scratch)
    if recipe.model.mode == "linear_probe":
        trained = freeze_backbone(model)
        logger.info("Linear probe: the backbone is frozen; training %s", ", ".join(trained))

    # 3. the Trainer: crops for training (seeded by example and epoch), the processor for evaluation
    augmentation = recipe.augmentation
    train_collator = ClassificationCollator(
        image_processor,
        train=True,
        image_size=augmentation.image_size,
        crop_scale=augmentation.crop_scale,
        crop_ratio=augmentation.crop_ratio,
        horizontal_flip=augmentation.horizontal_flip,
        skip_bad_images=data.skip_bad_images,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        channels_last=data.channels_last,
    )
    eval_collator = ClassificationCollator(
        image_processor, train=False, skip_bad_images=data.skip_bad_images, channels_last=data.channels_last
    )
    train_images = undecoded_images(splits.train)
    try:
        check_images_fit(train_images, train_collator)
    except ValueError as error:
        raise ConfigError(f"data: {error}") from error
    callbacks = (
        [EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold)]
        if args.early_stopping_patience
        else []
    )
    trainer = FinetuneTrainer(
        model=model,
        args=args,
        train_dataset=SeededExamples(train_images),
        eval_dataset=undecoded_images(splits.validation),
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        layer_decay=recipe.model.layer_decay,
        resume_settings=resume_settings(recipe),
    )

    # 4. train (the best checkpoint by validation accuracy is loaded at the end), then measure and save
    if finished:  # killed after its last checkpoint, before its outputs: write them from the checkpoint
        trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        best = trainer.state.best_model_checkpoint if args.load_best_model_at_end else None
        trainer._load_from_checkpoint(best if best and Path(best).is_dir() else str(checkpoint))
        logger.info("%s is where the run finished (%s): writing its outputs without training", checkpoint, finished)
        metrics = {"epoch": trainer.state.epoch}
    else:
        train_result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
        metrics = dict(train_result.metrics)
    trainer.rotate_checkpoints()  # also after a kill between a checkpoint's commit and its rotation
    stopped = trainer.stopped_early
    early_stopped = not stopped and trainer.state.global_step < trainer.state.max_steps
    metrics.update(trainer.evaluate(), eval_samples=len(splits.validation))
    if splits.test is not None:
        metrics.update(
            trainer.evaluate(undecoded_images(splits.test), metric_key_prefix="test"), test_samples=len(splits.test)
        )
    metrics["num_skipped_images"] = train_collator.num_skipped + eval_collator.num_skipped
    trainer.save_model()
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.save_state()
        recipe.save(args.output_dir)
        trainer.model_card_writer = lambda: write_finetune_card(
            args.output_dir,
            recipe,
            trainer.model,
            metrics,
            trainer.state.global_step,
            train_collator.image_size,
            license=args.hub_license,
            stopped=trainer.run_control.describe_stop() if stopped else None,
        )
        trainer.create_model_card()
        for key in (
            "eval_accuracy",
            "eval_top5_accuracy",
            "eval_macro_f1",
            "test_accuracy",
            "test_top5_accuracy",
            "test_macro_f1",
        ):
            if key in metrics:
                print(f"{key}: {100 * metrics[key]:.2f}%")
        print(f"Saved the fine-tuned model to {args.output_dir}")
        if stopped:
            print(
                f"Training {trainer.run_control.describe_stop()} at step {trainer.state.global_step} of "
                f"{trainer.state.max_steps}; continue with --resume auto (or --resume hub in a new session)"
            )
        elif early_stopped:
            print(
                f"Early stopping ended the run at step {trainer.state.global_step} of {trainer.state.max_steps}: "
                f"{args.metric_for_best_model} did not improve for {args.early_stopping_patience} validations; the "
                f"model is the best checkpoint ({trainer.state.best_model_checkpoint}). The run is finished: --resume "
                "auto keeps it as it is"
            )
    if args.push_to_hub:
        trainer.push_to_hub(
            commit_message="Fine-tuned model" if not stopped else f"Stopped at step {trainer.state.global_step}"
        )
    return metrics


def parse_command_line(
    argv: Sequence[str] | None = None, prog: str | None = None
) -> tuple[FinetuneRecipe, str | None]:
    from hf_ssl.training.setup.cli import RecipeArgumentParser

    parser = RecipeArgumentParser(
        FinetuneRecipe.sections_help, "The keys of a fine-tuning recipe", description=__doc__, prog=prog
    )
    parser.add_argument(
        "--config", required=True, help="Fine-tuning recipe YAML, e.g. recipes/finetune_fashion_mnist.yaml."
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="'auto' (latest checkpoint in training.output_dir), 'hub' (last-checkpoint/ of training.hub_model_id) or "
        "a checkpoint folder.",
    )
    arguments, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    return FinetuneRecipe.from_yaml(arguments.config, overrides), arguments.resume


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; exit code 2 for a recipe or command-line mistake, 1 for a run stopped by NaN/inf or a
    failed save (``error: ...``, no traceback)."""
    from hf_ssl.errors import NonFiniteLossError, NonFiniteWeightsError
    from hf_ssl.training.state.checkpointing import CheckpointSaveError

    try:
        recipe, resume = parse_command_line(argv, prog=prog)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        transformers.utils.logging.set_verbosity_warning()
        run_finetuning(recipe, resume)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (
        NonFiniteLossError,
        NonFiniteWeightsError,
        CheckpointSaveError,
    ) as error:  # the message says what is kept where
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
