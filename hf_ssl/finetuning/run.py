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
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
import yaml
from transformers import EarlyStoppingCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_ssl.finetuning.arguments import (
    FinetuneAugmentationArguments,
    FinetuneDataArguments,
    FinetuneModelArguments,
    FinetuningArguments,
)
from hf_ssl.training.config import (
    ConfigError,
    SectionHelp,
    apply_overrides,
    build_dataclass,
    check_sections,
    dataclass_help,
    load_yaml,
    parse_overrides,
    to_plain,
)

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
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "FinetuneRecipe":
        check_sections(raw, SECTIONS, source)
        return cls(
            model=build_dataclass(FinetuneModelArguments, raw.get("model"), "model"),
            data=build_dataclass(FinetuneDataArguments, raw.get("data"), "data"),
            augmentation=build_dataclass(FinetuneAugmentationArguments, raw.get("augmentation"), "augmentation"),
            training=build_dataclass(FinetuningArguments, raw.get("training"), "training"),
        )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> "FinetuneRecipe":
        raw = apply_overrides(load_yaml(path), parse_overrides(list(overrides), cls.section_keys()))
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def sections_help(cls) -> list[SectionHelp]:
        own = FinetuningArguments.own_field_names()
        return [
            SectionHelp("model", FinetuneModelArguments.__doc__, (("", dataclass_help(FinetuneModelArguments)),)),
            SectionHelp("data", FinetuneDataArguments.__doc__, (("", dataclass_help(FinetuneDataArguments)),)),
            SectionHelp("augmentation", FinetuneAugmentationArguments.__doc__, (("", dataclass_help(FinetuneAugmentationArguments)),)),
            SectionHelp("training", FinetuningArguments.__doc__, (
                ("hf_ssl's keys, and TrainingArguments keys with a fine-tuning default:", dataclass_help(FinetuningArguments, list(own))),
                ("The training section also takes every other transformers.TrainingArguments key:",
                 tuple(key for key in dataclass_help(FinetuningArguments) if key.name not in own)),
            )),
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


def resolve_resume(resume: str | None, args: FinetuningArguments) -> str | None:
    """The checkpoint to resume from: ``auto`` = the latest in ``output_dir`` (None when there is none), ``hub`` = the
    ``last-checkpoint/`` pushed to ``hub_model_id`` (downloaded into ``output_dir``; a newer local checkpoint wins; a
    repository without one yet: the local checkpoint or a fresh start, so one command starts and continues a job), or
    a folder. Without ``--resume``, an ``output_dir`` holding checkpoints is an error unless ``overwrite_output_dir``."""
    output_dir = Path(args.output_dir)
    local = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if resume is None:
        if local is not None:
            if not args.overwrite_output_dir:
                raise ConfigError(
                    f"{output_dir} holds checkpoints of an earlier run ({Path(local).name}): continue it with --resume auto, "
                    "start afresh with training.overwrite_output_dir=true (they are deleted), or choose another training.output_dir"
                )
            for checkpoint in output_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
        return None
    if resume == "auto":
        if local is None:
            logger.info("--resume auto: no checkpoint in %s, starting afresh", output_dir)
        return local
    if resume == "hub":
        return _download_hub_checkpoint(args, local)
    if not Path(resume).is_dir():
        raise ConfigError(f"--resume {resume!r}: not a checkpoint folder; give one, or 'auto' or 'hub'")
    return resume


def _download_hub_checkpoint(args: FinetuningArguments, local: str | None) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    if not args.hub_model_id:
        raise ConfigError("--resume hub needs training.hub_model_id: the repository the earlier session pushed its checkpoints to")
    target = Path(args.output_dir) / "_hub_checkpoint"  # "_*" is left out of the Trainer's Hub pushes
    try:
        snapshot_download(
            args.hub_model_id, allow_patterns=[f"{HUB_CHECKPOINT}/*"], local_dir=target, token=args.hub_token, revision=args.hub_revision
        )
    except RepositoryNotFoundError:
        logger.warning("--resume hub: %s does not exist yet; %s", args.hub_model_id, "resuming from the local " + Path(local).name if local else "starting afresh")
        return local
    except Exception as error:  # offline, no token, the Hub down: never start afresh over a run that exists
        raise ConfigError(
            f"--resume hub: cannot download {HUB_CHECKPOINT}/ of {args.hub_model_id!r} ({type(error).__name__}: {error}). Check "
            "training.hub_model_id, the token (hf auth login, HF_TOKEN) and the network; --resume auto continues from a local checkpoint"
        ) from error
    checkpoint = target / HUB_CHECKPOINT
    if not (checkpoint / "trainer_state.json").is_file():  # a first session: nothing pushed yet
        logger.warning(
            "--resume hub: %s has no %s/ yet (push it with training.push_to_hub=true and training.hub_strategy=checkpoint); %s",
            args.hub_model_id, HUB_CHECKPOINT, "resuming from the local " + Path(local).name if local else "starting afresh",
        )
        return local
    hub_step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    if local is not None and int(Path(local).name.split("-")[-1]) > hub_step:
        logger.info("--resume hub: the local %s is newer than the Hub's step %d; resuming from it", Path(local).name, hub_step)
        return local
    logger.info("--resume hub: resuming from step %d of %s", hub_step, args.hub_model_id)
    return str(checkpoint)


def run_finetuning(recipe: FinetuneRecipe, resume: str | None = None) -> dict[str, float]:
    """Fine-tune as ``recipe`` says and write the outputs; returns the final metrics (``eval_*`` of the validation split
    with the best model, ``test_*`` of the test split when there is one)."""
    from hf_ssl.data import load_image_dataset, undecoded_images
    from hf_ssl.finetuning.card import write_finetune_card
    from hf_ssl.finetuning.data import ClassificationCollator, split_labelled_dataset
    from hf_ssl.finetuning.metrics import compute_metrics
    from hf_ssl.finetuning.model import build_classification_model, freeze_backbone, load_image_processor, resolve_backbone_source
    from hf_ssl.finetuning.trainer import FinetuneTrainer

    args, data = recipe.training, recipe.data
    checkpoint = resolve_resume(resume, args)
    set_seed(args.seed)

    # 1. the labelled splits and their class names
    try:
        dataset = load_image_dataset(
            data.dataset, name=data.dataset_config_name, data_dir=data.data_dir, data_files=data.data_files,
            image_column=data.image_column, label_column=data.label_column,
        )
        splits = split_labelled_dataset(
            dataset, data.train_split, data.validation_split, data.test_split, data.train_val_split, args.seed,
            data.max_train_samples, data.max_eval_samples,
        )
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"data: {error}") from error

    # 2. the backbone with a new head; the processor it was trained with
    source = resolve_backbone_source(recipe.model.model_name_or_path, recipe.model.revision, Path(args.output_dir) / "_pretrained_backbone")
    image_processor = load_image_processor(source, recipe.model.image_processor_name_or_path)
    model = build_classification_model(source, splits.label_names, from_scratch=recipe.model.from_scratch)
    if recipe.model.mode == "linear_probe":
        trained = freeze_backbone(model)
        logger.info("Linear probe: the backbone is frozen; training %s", ", ".join(trained))

    # 3. the Trainer: crops for training, the processor for evaluation
    augmentation = recipe.augmentation
    train_collator = ClassificationCollator(
        image_processor, train=True, image_size=augmentation.image_size, crop_scale=augmentation.crop_scale,
        crop_ratio=augmentation.crop_ratio, horizontal_flip=augmentation.horizontal_flip, skip_bad_images=data.skip_bad_images,
        seed=args.seed,
    )
    eval_collator = ClassificationCollator(image_processor, train=False, skip_bad_images=data.skip_bad_images)
    callbacks = [EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold)] if args.early_stopping_patience else []
    trainer = FinetuneTrainer(
        model=model, args=args, train_dataset=undecoded_images(splits.train), eval_dataset=undecoded_images(splits.validation),
        data_collator=train_collator, eval_data_collator=eval_collator, processing_class=image_processor,
        compute_metrics=compute_metrics, callbacks=callbacks, layer_decay=recipe.model.layer_decay,
    )

    # 4. train (the best checkpoint by validation accuracy is loaded at the end), then measure and save
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    stopped = trainer.stopped_early
    metrics = dict(train_result.metrics)
    metrics.update(trainer.evaluate(), eval_samples=len(splits.validation))
    if splits.test is not None:
        metrics.update(trainer.evaluate(undecoded_images(splits.test), metric_key_prefix="test"), test_samples=len(splits.test))
    metrics["num_skipped_images"] = train_collator.num_skipped + eval_collator.num_skipped
    trainer.save_model()
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.save_state()
        recipe.save(args.output_dir)
        trainer.model_card_writer = lambda: write_finetune_card(
            args.output_dir, recipe, trainer.model, metrics, trainer.state.global_step, train_collator.image_size, license=args.hub_license,
            stopped=trainer.run_control.describe_stop() if stopped else None,
        )
        trainer.create_model_card()
        for key in ("eval_accuracy", "eval_top5_accuracy", "eval_macro_f1", "test_accuracy", "test_top5_accuracy", "test_macro_f1"):
            if key in metrics:
                print(f"{key}: {100 * metrics[key]:.2f}%")
        print(f"Saved the fine-tuned model to {args.output_dir}")
        if stopped:
            print(f"Training {trainer.run_control.describe_stop()} at step {trainer.state.global_step} of {trainer.state.max_steps}; "
                  "continue with --resume auto (or --resume hub in a new session)")
    if args.push_to_hub:
        trainer.push_to_hub(commit_message="Fine-tuned model" if not stopped else f"Stopped at step {trainer.state.global_step}")
    return metrics


def parse_command_line(argv: Sequence[str] | None = None, prog: str | None = None) -> tuple[FinetuneRecipe, str | None]:
    from hf_ssl.training.cli import RecipeArgumentParser

    parser = RecipeArgumentParser(FinetuneRecipe.sections_help, "The keys of a fine-tuning recipe", description=__doc__, prog=prog)
    parser.add_argument("--config", required=True, help="Fine-tuning recipe YAML, e.g. recipes/finetune_fashion_mnist.yaml.")
    parser.add_argument("--resume", default=None, help="'auto' (latest checkpoint in training.output_dir), 'hub' (last-checkpoint/ of training.hub_model_id) or a checkpoint folder.")
    arguments, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    return FinetuneRecipe.from_yaml(arguments.config, overrides), arguments.resume


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; exit code 2 for a recipe or command-line mistake (``error: ...``, no traceback)."""
    try:
        recipe, resume = parse_command_line(argv, prog=prog)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        transformers.utils.logging.set_verbosity_warning()
        run_finetuning(recipe, resume)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
