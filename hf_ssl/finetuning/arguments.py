"""The sections of a fine-tuning recipe (``recipes/finetune_*.yaml``).

model: {...}          # FinetuneModelArguments: what to start from, full fine-tune or linear probe, layer decay
data: {...}           # FinetuneDataArguments: the labelled dataset and its splits
augmentation: {...}   # FinetuneAugmentationArguments: the training crops (evaluation follows the processor)
training: {...}       # FinetuningArguments: transformers TrainingArguments with fine-tuning defaults
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from hf_ssl.training.arguments import apply_cpu_defaults, drop_bf16_without_gpu, drop_fp16_on_cpu

MODES = ("full", "linear_probe")
FINETUNE_ENGINE = "finetune"  # the engine (and method) hf_ssl_state.json names in a fine-tuning checkpoint


@dataclass
class FinetuneModelArguments:
    """What is fine-tuned: any hf_ssl run or checkpoint (its plain backbone is used), an exported ``backbone/`` folder,
    or any transformers vision checkpoint, by Hub id or folder; a classification head is put on top."""

    model_name_or_path: str = field(
        default=None,
        metadata={
            "help": (
                "hf_ssl output dir / checkpoint / Hub repo, its backbone/ folder, or any transformers vision model "
                "(Hub id or folder)."
            )
        },
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of model_name_or_path."}
    )
    image_processor_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Image processor to use when the model has none saved beside it (default: the model's own)."
        },
    )
    mode: str = field(
        default="full",
        metadata={
            "help": (
                "full (every weight trains) or linear_probe (the backbone is frozen, in eval mode; only the head "
                "trains)."
            )
        },
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": (
                "Layer-wise lr decay (ViT family, ResNet stages): block i of L trains at lr * layer_decay ** (L + 1 - "
                "i); e.g. 0.65 (BEiT / MAE ViT-B). null: one lr."
            )
        },
    )
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Random init of the same architecture (the baseline a pretrained start must beat)."},
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required: an hf_ssl run folder, a backbone folder, or a Hub id")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.layer_decay is not None:
            if not 0 < self.layer_decay <= 1:
                raise ValueError(f"layer_decay must be in (0, 1] (or null), got {self.layer_decay}")
            if self.mode == "linear_probe":
                raise ValueError("layer_decay applies to mode=full: a linear probe trains only the head")


@dataclass
class FinetuneDataArguments:
    """The labelled images: a ``datasets`` Hub id, ``imagefolder`` (+ ``data_dir``), ``parquet`` (+ ``data_files``), a
    local folder, or the built-in ``fashion_mnist``. Without a validation split, one is held out of the training
    split."""

    dataset: str = field(
        default="fashion_mnist",
        metadata={"help": "Hub id, local dir, 'imagefolder', 'parquet', 'arrayfolder' or 'fashion_mnist'."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Dataset configuration (load_dataset name=)."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "data_dir, e.g. an imagefolder root."})
    data_files: str | list[str] | dict[str, Any] | None = field(
        default=None, metadata={"help": "data_files for parquet/arrow/csv."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default 'image', else 'img')."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default 'label')."})
    train_split: str = field(default="train", metadata={"help": "Split to fine-tune on."})
    validation_split: str | None = field(
        default=None,
        metadata={
            "help": (
                "Split that picks the best checkpoint (default: 'validation' when the dataset has one, else "
                "train_val_split of the training split)."
            )
        },
    )
    test_split: str | None = field(
        default="test",
        metadata={"help": "Split measured once at the end with the best model (skipped when the dataset has none)."},
    )
    train_val_split: float = field(
        default=0.1,
        metadata={
            "help": (
                "Fraction of the training split held out for validation when there is no validation split "
                "(stratified, seeded)."
            )
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Fine-tune on a seeded random N images of the training split."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Validate and test on a seeded random N images of each split."}
    )
    skip_bad_images: bool = field(
        default=True,
        metadata={
            "help": (
                "Skip and count unreadable images and N-band arrays holding NaN/inf (false: stop with an error naming "
                "the file)."
            )
        },
    )
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": (
                "N-band arrays: true (H, W, bands), false (bands, H, W); null: inferred, an error when both ends have "
                "the band count (e.g. 16 x 16 x 16)."
            )
        },
    )

    def __post_init__(self):
        if not 0 < self.train_val_split < 1:
            raise ValueError(f"train_val_split must be a fraction in (0, 1), got {self.train_val_split}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or null for every image), got {value}")


@dataclass
class FinetuneAugmentationArguments:
    """Training crops, as in transformers' image-classification example: a random resized crop to the processor's size
    and a horizontal flip, then the processor's normalisation. Evaluation images go through the processor as saved
    (resize, centre crop when it has one)."""

    image_size: int | None = field(
        default=None, metadata={"help": "Side of the training crops (default: the image processor's size)."}
    )
    crop_scale: tuple[float, float] = field(
        default=(0.08, 1.0), metadata={"help": "Area fraction range of the random resized crop."}
    )
    crop_ratio: tuple[float, float] = field(
        default=(3 / 4, 4 / 3), metadata={"help": "Aspect ratio range of the random resized crop."}
    )
    horizontal_flip: bool = field(
        default=True, metadata={"help": "Flip training crops left-right with probability 0.5."}
    )

    def __post_init__(self):
        self.crop_scale, self.crop_ratio = tuple(self.crop_scale), tuple(self.crop_ratio)
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(self.crop_scale)}")
        if len(self.crop_ratio) != 2 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must be [low, high] with 0 < low <= high, got {list(self.crop_ratio)}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1 (or null), got {self.image_size}")


@dataclass
class FinetuningArguments(TrainingArguments):
    """``TrainingArguments`` with the defaults of transformers' image-classification example (evaluate and save each
    epoch, keep the best checkpoint by validation accuracy) plus early stopping, a per-session time budget and the
    Hub resume of Kaggle / Colab sessions."""

    output_dir: str = field(
        default="outputs/finetune", metadata={"help": "Where checkpoints and the fine-tuned model go."}
    )
    learning_rate: float = field(
        default=5e-4, metadata={"help": "Peak lr (AdamW), of the head and, with layer_decay, of the last block."}
    )
    weight_decay: float = field(
        default=0.05, metadata={"help": "AdamW weight decay (not on biases, norms, position embeddings, CLS tokens)."}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of the steps with linear lr warmup."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "lr schedule after the warmup."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Validate every epoch (or steps with eval_steps)."})
    save_strategy: str = field(
        default="epoch",
        metadata={"help": "Checkpoint when validating (must match eval_strategy for the best checkpoint)."},
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best is always kept)."})
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "End with the checkpoint of best metric_for_best_model."}
    )
    metric_for_best_model: str | None = field(
        default="accuracy", metadata={"help": "accuracy, top5_accuracy, macro_f1 or loss (on the validation split)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay false: images are decoded by the collator."}
    )
    logging_steps: float = field(default=50, metadata={"help": "Log every N optimizer steps."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Trackers: none, all, wandb, tensorboard, trackio."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N validations without improvement of metric_for_best_model."}
    )
    early_stopping_threshold: float = field(default=0.0, metadata={"help": "Smallest improvement that counts."})
    max_time_seconds: float | None = field(
        default=None,
        metadata={
            "help": (
                "Save a checkpoint and stop after this much wall time in this session (Kaggle / Colab); resume with "
                "--resume auto or --resume hub."
            )
        },
    )
    hub_license: str | None = field(
        default=None,
        metadata={
            "help": (
                "License in the model card's metadata (e.g. apache-2.0, cc-by-nc-4.0: that of the pretrained weights "
                "and data); null: none stated."
            )
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": (
                "Start afresh in an output_dir that holds another run (its checkpoints are deleted, its model "
                "replaced)."
            )
        },
    )
    max_consecutive_nonfinite_steps: int = field(
        default=5,
        metadata={
            "help": "Optimizer steps with a NaN/inf loss or gradients are skipped; stop after this many in a row."
        },
    )
    resume_with_changed_settings: bool = field(
        default=False,
        metadata={
            "help": (
                "Let --resume continue a checkpoint with other settings (learning rate, data, augmentation...): the "
                "new values apply from its step on."
            )
        },
    )

    @property
    def total_batch_size(self) -> int:
        """Images per optimizer step over every process: what the data position and the schedule count in."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    @classmethod
    def own_field_names(cls) -> tuple[str, ...]:
        """The keys this class adds to, or sets a default for on, ``TrainingArguments``."""
        return tuple(item.name for item in fields(cls) if item.name in cls.__annotations__)

    def __post_init__(self):
        apply_cpu_defaults(self)  # e.g. accelerate_configs/cpu.yaml: the processes train together, not each alone
        drop_bf16_without_gpu(self)
        super().__post_init__()
        drop_fp16_on_cpu(self)  # a Kaggle recipe tried on a CPU: say so and record what runs
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ValueError(f"early_stopping_patience must be >= 1 (or null), got {self.early_stopping_patience}")
            if not self.metric_for_best_model or self.eval_strategy == "no":
                raise ValueError(
                    "early_stopping_patience needs validation: set metric_for_best_model and eval_strategy epoch or "
                    "steps"
                )
        if not isinstance(self.max_consecutive_nonfinite_steps, int) or self.max_consecutive_nonfinite_steps < 1:
            raise ValueError(
                "max_consecutive_nonfinite_steps must be an integer >= 1, got "
                f"{self.max_consecutive_nonfinite_steps!r}"
            )
        if self.max_time_seconds is not None and self.max_time_seconds <= 0:
            raise ValueError(f"max_time_seconds must be > 0 (or null), got {self.max_time_seconds}")
