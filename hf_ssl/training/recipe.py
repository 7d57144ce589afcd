"""The DINO recipe: typed sections of a YAML file, and the steps a training script takes with them."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from transformers import PretrainedConfig

from hf_ssl.data import MultiCropConfig, load_image_dataset
from hf_ssl.models.dino import DinoConfig, DinoForPretraining, check_input_sizes
from hf_ssl.training.checkpointing import comparable
from hf_ssl.training.config import (
    ConfigError,
    KeyHelp,
    SectionHelp,
    apply_overrides,
    build_dataclass,
    check_keyword_arguments,
    check_sections,
    dataclass_help,
    keyword_arguments_help,
    load_yaml,
    parse_overrides,
    to_plain,
)
from hf_ssl.training.dino_trainer import DinoTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class DataArguments:
    """Which images to train on, and which labelled splits measure them."""

    dataset: str = field(default="fashion_mnist", metadata={"help": "Hub id, local dir, 'imagefolder', 'parquet', or 'fashion_mnist'."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration (load_dataset name=)."})
    data_dir: str | None = field(default=None, metadata={"help": "data_dir, e.g. an imagefolder root."})
    data_files: str | list[str] | dict[str, Any] | None = field(default=None, metadata={"help": "data_files for parquet/arrow/csv."})
    train_split: str = field(default="train", metadata={"help": "Split to pretrain on."})
    eval_split: str | None = field(default="test", metadata={"help": "Labelled split for k-NN queries (None: no k-NN)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default 'image', else 'img')."})
    label_column: str | None = field(default=None, metadata={"help": "Label column for k-NN (default 'label' when present)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Pretrain on the first N images only."})
    skip_bad_images: bool = field(default=True, metadata={"help": "Skip and count unreadable images (false: stop with an error)."})

    def __post_init__(self):
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1 (or null for every image), got {self.max_train_samples}")


@dataclass
class EvaluationArguments:
    """Weighted k-NN on frozen teacher features (DINO: k=20, T=0.07)."""

    knn_k: int = field(default=20, metadata={"help": "Number of neighbours that vote for the class of a query."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Each neighbour's vote weighs exp(cosine similarity / knn_temperature)."})
    knn_eval_steps: int = field(default=0, metadata={"help": "Evaluate every N optimizer steps (0: only at the end)."})
    knn_at_end: bool = field(default=True, metadata={"help": "Evaluate once more when training ends."})
    knn_at_start: bool = field(default=False, metadata={"help": "Also measure the randomly initialised model before training."})
    knn_max_train_samples: int | None = field(default=10000, metadata={"help": "Size of the labelled feature bank (None: whole split)."})
    knn_max_eval_samples: int | None = field(default=2000, metadata={"help": "Number of query images (None: whole split)."})
    batch_size: int = field(default=256, metadata={"help": "Images per forward pass when extracting the k-NN features."})
    image_size: int | None = field(default=None, metadata={"help": "Evaluation resize (default: the global crop size)."})

    def __post_init__(self):
        for name in ("knn_k", "batch_size", "knn_max_train_samples", "knn_max_eval_samples", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1{' (or null)' if name not in ('knn_k', 'batch_size') else ''}, got {value}")
        if not self.knn_temperature > 0:
            raise ValueError(f"knn_temperature must be > 0, got {self.knn_temperature}")
        if self.knn_eval_steps < 0:
            raise ValueError(f"knn_eval_steps must be >= 0 (0: only at the end), got {self.knn_eval_steps}")


SECTIONS = ("model", "data", "augmentation", "training", "evaluation")
MODEL_EXTRA_KEYS = ("pretrained_model_name_or_path",)
# What the model section may change when it continues from a pretrained model (no weight's shape depends on
# them); the architecture keys come from the pretrained model's config and are refused.
PRETRAINED_OVERRIDABLE_KEYS = (
    "student_temperature", "teacher_temperature", "warmup_teacher_temperature", "warmup_teacher_temperature_epochs",
    "center_momentum", "student_drop_path_rate",
)


@dataclass
class DinoRecipe:
    model: dict[str, Any]
    data: DataArguments
    augmentation: MultiCropConfig
    training: DinoTrainingArguments
    evaluation: EvaluationArguments

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "DinoRecipe":
        check_sections(raw, SECTIONS, source)
        training = dict(raw.get("training") or {})
        training.setdefault("output_dir", "outputs/dino")
        recipe = cls(
            model=check_keyword_arguments(DinoConfig.__init__, raw.get("model"), "model", extra=MODEL_EXTRA_KEYS),
            data=build_dataclass(DataArguments, raw.get("data"), "data"),
            augmentation=build_dataclass(MultiCropConfig, raw.get("augmentation"), "augmentation"),
            training=build_dataclass(DinoTrainingArguments, training, "training"),
            evaluation=build_dataclass(EvaluationArguments, raw.get("evaluation"), "evaluation"),
        )
        recipe.check_image_sizes()
        return recipe

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "DinoRecipe":
        """The recipe of YAML file ``path`` with ``overrides`` (``section.key=value``, ``--section.key value``,
        or without the section for a key that only one section has) applied."""
        raw = apply_overrides(load_yaml(path), parse_overrides(overrides or [], cls.section_keys()))
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def section_keys(cls) -> dict[str, list[str]]:
        """Section name -> every key it accepts (how an override written without its section finds it)."""
        return {section.name: section.keys for section in cls.sections_help()}

    @classmethod
    def sections_help(cls) -> list[SectionHelp]:
        """Every section and key with its type, default and help, as ``--help`` prints them."""
        own_model_keys = inspect.get_annotations(DinoConfig)  # the rest are keys of every transformers config
        model_keys = keyword_arguments_help(DinoConfig.__init__, DinoConfig.__doc__, PretrainedConfig.__doc__)
        pretrained = KeyHelp(
            "pretrained_model_name_or_path", "str | None", "null",
            "Hub id or folder of a trained hf_ssl DINO model to continue from. Its architecture is kept (architecture "
            f"keys set beside it must agree); only {', '.join(PRETRAINED_OVERRIDABLE_KEYS)} may change.",
        )
        own_training_keys = inspect.get_annotations(DinoTrainingArguments)  # DINO's keys and DINO defaults
        other_training_keys = tuple(key for key in dataclass_help(DinoTrainingArguments) if key.name not in own_training_keys)
        return [
            SectionHelp("model", DinoConfig.__doc__, (
                ("", (pretrained, *(key for key in model_keys if key.name in own_model_keys))),
                ("Keys of every transformers config (PretrainedConfig), rarely needed here:",
                 tuple(key for key in model_keys if key.name not in own_model_keys)),
            )),
            SectionHelp("data", DataArguments.__doc__, (("", dataclass_help(DataArguments)),)),
            SectionHelp("augmentation", MultiCropConfig.__doc__, (("", dataclass_help(MultiCropConfig)),)),
            SectionHelp("training", DinoTrainingArguments.__doc__, (
                ("hf_ssl's DINO keys, and TrainingArguments keys with a DINO default:",
                 dataclass_help(DinoTrainingArguments, list(own_training_keys))),
                ("The training section also takes every other transformers.TrainingArguments key:", other_training_keys),
            )),
            SectionHelp("evaluation", EvaluationArguments.__doc__, (("", dataclass_help(EvaluationArguments)),)),
        ]

    def to_dict(self) -> dict[str, Any]:
        training = {key: to_plain(value) for key, value in self.training.to_dict().items()}
        return {
            "model": to_plain(self.model),
            "data": to_plain(self.data),
            "augmentation": to_plain(self.augmentation),
            "training": training,
            "evaluation": to_plain(self.evaluation),
        }

    def save(self, directory: str | Path) -> Path:
        """Write the resolved recipe (every default filled in) as ``recipe.yaml``."""
        path = Path(directory) / "recipe.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    # ----- the steps of a training script ------------------------------------------------------
    def load_datasets(self):
        """The pretraining split and (when a labelled split is configured) the k-NN bank/queries."""
        data = self.data
        if data.data_dir is not None and not Path(data.data_dir).is_dir():
            what = "is a file, not a folder" if Path(data.data_dir).exists() else "does not exist"
            raise ConfigError(f"data.data_dir={data.data_dir!r} {what}")
        if data.dataset.startswith((".", "/", "~")) and not Path(data.dataset).expanduser().exists():
            raise ConfigError(f"data.dataset={data.dataset!r} looks like a local path and does not exist")
        dataset = load_image_dataset(
            data.dataset,
            name=data.dataset_config_name,
            data_dir=data.data_dir,
            data_files=data.data_files,
            image_column=data.image_column,
            label_column=data.label_column,
        )
        splits = list(dataset) if hasattr(dataset, "keys") else []
        if data.train_split not in splits:
            raise ConfigError(f"data.train_split={data.train_split!r} is not a split of {data.dataset!r}; splits: {splits}")
        train = dataset[data.train_split]
        if data.max_train_samples is not None:
            train = train.select(range(min(data.max_train_samples, len(train))))
        knn_splits = None
        if data.eval_split is not None:
            if data.eval_split not in splits:
                raise ConfigError(f"data.eval_split={data.eval_split!r} is not a split of {data.dataset!r}; splits: {splits} (set it to null to skip k-NN)")
            bank, queries = dataset[data.train_split], dataset[data.eval_split]
            if "label" in bank.column_names and "label" in queries.column_names:
                knn_splits = (bank, queries)
            else:
                logger.warning("No label column in %r: k-NN evaluation is off (set data.label_column).", data.dataset)
        return train, knn_splits

    @cached_property
    def model_config(self) -> DinoConfig:
        """The model's configuration: built from the model section, or the pretrained model's with the keys of
        ``PRETRAINED_OVERRIDABLE_KEYS`` the section sets. Architecture keys beside a pretrained model must agree
        with it (so the recipe that trained a model can continue it). ``ConfigError`` for a value that makes no
        sense, an architecture that differs from the pretrained one, or a pretrained model that cannot be found."""
        kwargs = {key: value for key, value in self.model.items() if key not in MODEL_EXTRA_KEYS}
        pretrained = self.model.get("pretrained_model_name_or_path")
        try:
            if pretrained is None:
                return DinoConfig(**kwargs)
            DinoConfig(**kwargs)  # the same checks as for a new model
        except ValueError as error:
            raise ConfigError(f"invalid 'model' section: {error}") from error
        try:
            config = DinoConfig.from_pretrained(pretrained)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.pretrained_model_name_or_path={pretrained!r} cannot be loaded: {error}") from error
        conflicts = [
            f"model.{key}: {given!r} here, {saved!r} in the pretrained model"
            for key, given, saved in _architecture_conflicts(config, kwargs)
        ]
        if conflicts:
            raise ConfigError(
                f"the model section differs from the pretrained model {pretrained!r}: {'; '.join(conflicts[:5])}. The "
                "architecture is the pretrained model's: remove these keys or give them its values. Only "
                f"{', '.join(PRETRAINED_OVERRIDABLE_KEYS)} may change when continuing from a pretrained model"
            )
        for key in PRETRAINED_OVERRIDABLE_KEYS:
            if key in kwargs and getattr(config, key) != kwargs[key]:
                logger.info("model.%s: %r (the pretrained model had %r)", key, kwargs[key], getattr(config, key))
                setattr(config, key, kwargs[key])
        return config

    def build_model(self) -> DinoForPretraining:
        """A new ``DinoForPretraining``, or the pretrained one (``model.pretrained_model_name_or_path``) with the
        loss settings of the model section applied."""
        pretrained = self.model.get("pretrained_model_name_or_path")
        if pretrained is None:
            return DinoForPretraining(self.model_config)
        return DinoForPretraining.from_pretrained(pretrained, config=self.model_config)

    def check_image_sizes(self) -> None:
        """The crop and evaluation sizes against the backbone (``check_input_sizes``), before anything runs."""
        crops = self.augmentation
        sizes = {"augmentation.global_crop_size": crops.global_crop_size}
        if crops.local_crops_number:
            sizes["augmentation.local_crop_size"] = crops.local_crop_size
        if self.evaluation.image_size is not None:
            sizes["evaluation.image_size"] = self.evaluation.image_size
        try:
            check_input_sizes(self.model_config.backbone_config, sizes, native=("augmentation.global_crop_size", "evaluation.image_size"))
        except ValueError as error:
            raise ConfigError(str(error)) from error

    @property
    def evaluation_image_size(self) -> int:
        return self.evaluation.image_size or self.augmentation.global_crop_size


def _architecture_conflicts(config: DinoConfig, values: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, recipe value, pretrained value)`` for each architecture key of ``values`` that ``config`` (a
    pretrained model's) does not share; for ``backbone_config``, each key the recipe gives."""
    conflicts = []
    for key, value in values.items():
        if key in PRETRAINED_OVERRIDABLE_KEYS:
            continue
        if key == "backbone_config":
            given = value.to_dict() if isinstance(value, PretrainedConfig) else dict(value or {})
            for name, item in given.items():
                saved = getattr(config.backbone_config, name, None)
                if comparable(item) != comparable(saved):
                    conflicts.append((f"backbone_config.{name}", item, saved))
        elif comparable(value) != comparable(getattr(config, key, None)):
            conflicts.append((key, value, getattr(config, key, None)))
    return conflicts

