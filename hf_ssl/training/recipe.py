"""The DINO recipe: typed sections of a YAML file, and the steps a training script takes with them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_ssl.data import MultiCropConfig, load_image_dataset
from hf_ssl.models.dino import DinoConfig
from hf_ssl.training.config import (
    ConfigError,
    apply_overrides,
    build_dataclass,
    check_keyword_arguments,
    check_sections,
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


@dataclass
class EvaluationArguments:
    """Weighted k-NN on frozen teacher features (DINO: k=20, T=0.07)."""

    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_eval_steps: int = field(default=0, metadata={"help": "Evaluate every N optimizer steps (0: only at the end)."})
    knn_at_end: bool = True
    knn_at_start: bool = field(default=False, metadata={"help": "Also measure the randomly initialised model before training."})
    knn_max_train_samples: int | None = field(default=10000, metadata={"help": "Size of the labelled feature bank (None: whole split)."})
    knn_max_eval_samples: int | None = field(default=2000, metadata={"help": "Number of query images (None: whole split)."})
    batch_size: int = 256
    image_size: int | None = field(default=None, metadata={"help": "Evaluation resize (default: the global crop size)."})


SECTIONS = ("model", "data", "augmentation", "training", "evaluation")
MODEL_EXTRA_KEYS = ("pretrained_model_name_or_path",)


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
        return cls(
            model=check_keyword_arguments(DinoConfig.__init__, raw.get("model"), "model", extra=MODEL_EXTRA_KEYS),
            data=build_dataclass(DataArguments, raw.get("data"), "data"),
            augmentation=build_dataclass(MultiCropConfig, raw.get("augmentation"), "augmentation"),
            training=build_dataclass(DinoTrainingArguments, training, "training"),
            evaluation=build_dataclass(EvaluationArguments, raw.get("evaluation"), "evaluation"),
        )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "DinoRecipe":
        raw = apply_overrides(load_yaml(path), parse_overrides(overrides or []))
        return cls.from_dict(raw, source=str(path))

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

    def build_model_config(self) -> DinoConfig:
        kwargs = {key: value for key, value in self.model.items() if key not in MODEL_EXTRA_KEYS}
        return DinoConfig(**kwargs)

    @property
    def evaluation_image_size(self) -> int:
        return self.evaluation.image_size or self.augmentation.global_crop_size

