"""A recipe: the method it trains and the typed sections of a YAML file, and the steps a training script takes with
them.

method: dino            # any registered method (hf_ssl.training.methods.registered_methods())
model: {...}            # the method's config (DinoConfig, SimClrConfig, ...) or a pretrained model to continue
data: {...}             # DataArguments
augmentation: {...}     # the method's augmentation config (MultiCropConfig, SimClrViewConfig, ViewsConfig...)
training: {...}         # the method's training arguments (a PretrainingArguments subclass)
evaluation: {...}       # EvaluationArguments (k-NN)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import yaml
from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from hf_ssl.data import ViewsConfig, as_views_config, band_statistics, load_image_dataset
from hf_ssl.errors import ConfigError
from hf_ssl.models.backbone import load_pretrained_backbone, pretrained_backbone_config
from hf_ssl.training.methods import MethodSpec, get_method, registered_methods
from hf_ssl.training.methods.base import check_view_sizes
from hf_ssl.training.setup.config import (
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
from hf_ssl.training.state.checkpointing import comparable

logger = logging.getLogger(__name__)


@dataclass
class DataArguments:
    """Which images to train on, and which labelled splits measure them."""

    dataset: str = field(
        default="fashion_mnist", metadata={"help": "Hub id, local dir, 'imagefolder', 'parquet', or 'fashion_mnist'."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Dataset configuration (load_dataset name=)."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "data_dir, e.g. an imagefolder root."})
    data_files: str | list[str] | dict[str, Any] | None = field(
        default=None, metadata={"help": "data_files for parquet/arrow/csv."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to pretrain on."})
    eval_split: str | None = field(
        default="test",
        metadata={
            "help": (
                "Labelled split for k-NN queries (None: no k-NN). When the data has no such labelled split, k-NN is "
                "skipped with a log line, unless the command line names it."
            )
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default 'image', else 'img')."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column for k-NN (default 'label' when present)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Pretrain on the first N images only."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Held-out split whose method loss is logged as val_loss (labels not needed)."}
    )
    train_val_split: float | None = field(
        default=None,
        metadata={
            "help": (
                "Hold out this fraction of the training split for val_loss instead (a seeded draw, left out of "
                "pretraining)."
            )
        },
    )
    skip_bad_images: bool = field(
        default=True, metadata={"help": "Skip and count unreadable images (false: stop with an error)."}
    )
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": (
                "Where the bands of N-band arrays are: true (H, W, N), false (N, H, W), null: the axis with N entries "
                "(an array whose first and last axes both have N entries stops the run)."
            )
        },
    )

    def __post_init__(self):
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1 (or null for every image), got {self.max_train_samples}")
        if self.train_val_split is not None:
            if (
                isinstance(self.train_val_split, bool)
                or not isinstance(self.train_val_split, (int, float))
                or not 0 < self.train_val_split < 1
            ):
                raise ValueError(
                    f"train_val_split must be a fraction in (0, 1) (or null), got {self.train_val_split!r}"
                )
            if self.validation_split is not None:
                raise ValueError("give validation_split or train_val_split, not both")
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be true, false or null, got {self.channels_last!r}")


@dataclass
class EvaluationArguments:
    """Weighted k-NN on frozen features of the evaluated backbone (DINO's teacher; k=20, T=0.07 as in DINO)."""

    knn_k: int = field(default=20, metadata={"help": "Number of neighbours that vote for the class of a query."})
    knn_temperature: float = field(
        default=0.07, metadata={"help": "Each neighbour's vote weighs exp(cosine similarity / knn_temperature)."}
    )
    knn_eval_steps: int = field(default=0, metadata={"help": "Evaluate every N optimizer steps (0: only at the end)."})
    knn_at_end: bool = field(default=True, metadata={"help": "Evaluate once more when training ends."})
    knn_at_start: bool = field(
        default=False, metadata={"help": "Also measure the randomly initialised model before training."}
    )
    knn_raw_pixels: bool = field(
        default=False,
        metadata={
            "help": (
                "Also measure k-NN on the raw pixels (the evaluation image processor's output, flattened): the bar a "
                "representation should clear."
            )
        },
    )
    linear_probe: bool = field(
        default=False,
        metadata={
            "help": (
                "At every k-NN evaluation also fit a linear probe on the bank's frozen features and log linear_top1 / "
                "linear_top5 on the queries (usable as metric_for_best_model)."
            )
        },
    )
    knn_max_train_samples: int | None = field(
        default=10000, metadata={"help": "Size of the labelled feature bank (None: whole split)."}
    )
    knn_max_eval_samples: int | None = field(
        default=2000, metadata={"help": "Number of query images (None: whole split)."}
    )
    batch_size: int = field(
        default=256, metadata={"help": "Images per forward pass when extracting the k-NN features."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Evaluation resize (default: the global crop size)."}
    )
    val_eval_steps: int = field(
        default=0,
        metadata={
            "help": (
                "Log val_loss (data.validation_split or data.train_val_split) every N optimizer steps (0: only at the "
                "end)."
            )
        },
    )
    val_at_end: bool = field(default=True, metadata={"help": "Log val_loss once more when training ends."})
    val_max_samples: int | None = field(
        default=2000, metadata={"help": "Held-out images val_loss is measured on (None: the whole split)."}
    )

    def __post_init__(self):
        for name in (
            "knn_k",
            "batch_size",
            "knn_max_train_samples",
            "knn_max_eval_samples",
            "image_size",
            "val_max_samples",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(
                    f"{name} must be >= 1{' (or null)' if name not in ('knn_k', 'batch_size') else ''}, got {value}"
                )
        if not self.knn_temperature > 0:
            raise ValueError(f"knn_temperature must be > 0, got {self.knn_temperature}")
        for name in ("knn_eval_steps", "val_eval_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: only at the end), got {getattr(self, name)}")


class RecipeData(NamedTuple):
    """What ``Recipe.load_datasets`` loads: the pretraining split, the k-NN (bank, queries) or None, the held-out
    split of ``val_loss`` or None."""

    train: Any
    knn: tuple[Any, Any] | None
    validation: Any


SECTIONS = ("model", "data", "augmentation", "training", "evaluation")
MODEL_EXTRA_KEYS = ("pretrained_model_name_or_path", "pretrained_backbone")


@dataclass
class Recipe:
    """A whole run: ``method`` names the method, the sections hold its settings (see the module docstring).

    ``Recipe.from_yaml(path)`` reads the method from the file's ``method:`` key; ``Recipe.for_method("dino")`` (what
    ``recipes/train_dino.py`` reads) takes files without one and refuses a file of another method."""

    method: str
    model: dict[str, Any]
    data: DataArguments
    augmentation: Any
    training: Any
    evaluation: EvaluationArguments
    # the keys the command line set (``data.eval_split``...): what the user asked for in this very run, as opposed to
    # what the recipe file or the defaults say
    command_line_keys: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    default_method: ClassVar[str | None] = None

    @classmethod
    def for_method(cls, method: str) -> type[Recipe]:
        """The recipe class of a command that trains ``method``: its ``default_method`` is ``method``."""
        try:
            get_method(method)
        except KeyError as error:
            raise ConfigError(f"method: {error.args[0]}") from None
        return _method_recipe_class(cls, method)

    @classmethod
    def method_of(cls, raw: dict[str, Any], method: str | None = None, source: str = "config") -> MethodSpec:
        """The method of a raw recipe: its ``method:`` key, else ``method``, else ``default_method``."""
        named = raw.get("method")
        wanted = method or cls.default_method
        if named is None and wanted is None:
            raise ConfigError(
                f"{source} names no method: add `method: <name>` at its top, one of {registered_methods()}"
            )
        if named is not None and not isinstance(named, str):
            raise ConfigError(f"method must be a name, one of {registered_methods()}, got {named!r}")
        if named is not None and wanted is not None and named != wanted:
            raise ConfigError(
                f"{source} is a {named!r} recipe and this command trains {wanted!r}: run it with "
                f"recipes/train_{named}.py, or with recipes/pretrain.py or `hf-ssl pretrain --config ...`, which read "
                "the method from the recipe"
            )
        name = named or wanted
        try:
            return get_method(name)
        except KeyError as error:
            raise ConfigError(f"method: {error.args[0]}") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config", method: str | None = None) -> Recipe:
        raw = dict(raw)
        spec = cls.method_of(raw, method, source)
        raw.pop("method", None)
        check_sections(raw, SECTIONS, source)
        training = dict(raw.get("training") or {})
        training.setdefault("output_dir", spec.default_output_dir)
        recipe = cls(
            method=spec.name,
            model=check_keyword_arguments(
                spec.config_class.__init__, raw.get("model"), "model", extra=MODEL_EXTRA_KEYS
            ),
            data=build_dataclass(DataArguments, raw.get("data"), "data"),
            augmentation=None,
            training=build_dataclass(spec.training_arguments_class, training, "training"),
            evaluation=build_dataclass(EvaluationArguments, raw.get("evaluation"), "evaluation"),
        )
        recipe.augmentation = build_dataclass(
            spec.view_config_class, recipe._augmentation_with_channels(raw.get("augmentation")), "augmentation"
        )
        recipe.check_settings()
        return recipe

    def _augmentation_with_channels(self, augmentation: dict[str, Any] | None) -> dict[str, Any] | None:
        """The augmentation section with ``num_channels`` set to the backbone's when it leaves it out (so the views
        are cut with the bands the first layer takes); a different value is a ``ConfigError`` naming both keys."""
        if not isinstance(augmentation, dict) and augmentation is not None:
            return augmentation  # build_dataclass says what is wrong with it
        accepts = any(item.name == "num_channels" for item in fields(self.spec.view_config_class))
        channels = getattr(self.model_config.backbone_config, "num_channels", None)
        if not accepts or channels is None:
            return augmentation
        augmentation = dict(augmentation or {})
        given = augmentation.get("num_channels")
        if given is None:
            augmentation["num_channels"] = channels
        elif given != channels:
            raise ConfigError(
                f"augmentation.num_channels={given!r} but the backbone takes {channels} channels "
                "(model.backbone_config.num_channels): give them the same value, or leave augmentation.num_channels "
                "out"
            )
        return augmentation

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None, method: str | None = None) -> Recipe:
        """The recipe of YAML file ``path`` with ``overrides`` (``section.key=value``, ``--section.key value``,
        or without the section for a key that only one section has) applied."""
        raw = load_yaml(path)
        spec = cls.method_of(raw, method, str(path))
        pairs = parse_overrides(overrides or [], cls.section_keys(spec.name))
        recipe = cls.from_dict(apply_overrides(raw, pairs), source=str(path), method=spec.name)
        recipe.command_line_keys = frozenset(key for key, _ in pairs)
        return recipe

    @classmethod
    def section_keys(cls, method: str | None = None) -> dict[str, list[str]]:
        """Section name -> every key it accepts (how an override written without its section finds it)."""
        return {section.name: section.keys for section in cls.sections_help(method)}

    @classmethod
    def sections_help(cls, method: str | None = None) -> list[SectionHelp]:
        """Every section and key of ``method`` (default: ``default_method``) with its type, default and help,
        as ``--help`` prints them."""
        spec = get_method(method or cls.default_method or "dino")
        config_class, arguments_class = spec.config_class, spec.training_arguments_class
        own_model_keys = inspect.get_annotations(config_class)  # the rest are keys of every transformers config
        model_keys = keyword_arguments_help(config_class.__init__, config_class.__doc__, PretrainedConfig.__doc__)
        pretrained = KeyHelp(
            "pretrained_model_name_or_path",
            "str | None",
            "null",
            f"Hub id or folder of a trained hf_ssl {spec.name} model to continue from. Its architecture is kept "
            "(architecture keys set beside it must agree)"
            + (
                f"; only {', '.join(spec.pretrained_overridable_keys)} may change."
                if spec.pretrained_overridable_keys
                else "."
            )
            + " For a plain transformers model use pretrained_backbone.",
        )
        pretrained_backbone = KeyHelp(
            "pretrained_backbone",
            "str | None",
            "null",
            "Hub id or folder of a plain transformers vision model (e.g. microsoft/resnet-50, facebook/dinov2-small, "
            "a save_pretrained or export_backbone folder) whose weights start every backbone of the method (an EMA "
            "teacher or target too); heads stay randomly initialised. Its config is the backbone's: backbone_config "
            "keys beside it must agree, except num_channels (an RGB first layer is adapted: 1 band = sum of the RGB "
            "filters, N bands = RGB filters repeated, first N kept, scaled by 3/N), image_size (position embeddings "
            "resampled) and the dropout rates. Not with pretrained_model_name_or_path.",
        )
        own_training_keys = arguments_class.own_field_names()  # hf_ssl's keys and hf_ssl defaults
        other_training_keys = tuple(
            key for key in dataclass_help(arguments_class) if key.name not in own_training_keys
        )
        return [
            SectionHelp(
                "model",
                config_class.__doc__,
                (
                    (
                        "",
                        (pretrained, pretrained_backbone, *(key for key in model_keys if key.name in own_model_keys)),
                    ),
                    (
                        "Keys of every transformers config (PretrainedConfig), rarely needed here:",
                        tuple(key for key in model_keys if key.name not in own_model_keys),
                    ),
                ),
            ),
            SectionHelp("data", DataArguments.__doc__, (("", dataclass_help(DataArguments)),)),
            SectionHelp(
                "augmentation", spec.view_config_class.__doc__, (("", dataclass_help(spec.view_config_class)),)
            ),
            SectionHelp(
                "training",
                arguments_class.__doc__,
                (
                    (
                        f"hf_ssl's {spec.name} keys, and TrainingArguments keys with an hf_ssl default:",
                        dataclass_help(arguments_class, list(own_training_keys)),
                    ),
                    (
                        "The training section also takes every other transformers.TrainingArguments key:",
                        other_training_keys,
                    ),
                ),
            ),
            SectionHelp("evaluation", EvaluationArguments.__doc__, (("", dataclass_help(EvaluationArguments)),)),
        ]

    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)

    @property
    def starts_pretrained(self) -> bool:
        """The model starts from trained weights (``model.pretrained_model_name_or_path`` or
        ``pretrained_backbone``)."""
        return any(self.model.get(key) is not None for key in MODEL_EXTRA_KEYS)

    @property
    def view_config(self) -> ViewsConfig:
        """The augmentation section as the data pipeline runs it: its named view groups."""
        return as_views_config(self.augmentation)

    def to_dict(self) -> dict[str, Any]:
        training = {key: to_plain(value) for key, value in self.training.to_dict().items()}
        return {
            "method": self.method,
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
    def load_datasets(self) -> RecipeData:
        """The pretraining split, the k-NN bank/queries (``knn_splits``) and the held-out split of ``val_loss``
        (``data.validation_split``, or ``data.train_val_split`` of the training split)."""
        data = self.data
        if data.data_dir is not None and not Path(data.data_dir).is_dir():
            what = "is a file, not a folder" if Path(data.data_dir).exists() else "does not exist"
            raise ConfigError(f"data.data_dir={data.data_dir!r} {what}")
        if data.dataset.startswith((".", "/", "~")) and not Path(data.dataset).expanduser().exists():
            raise ConfigError(f"data.dataset={data.dataset!r} looks like a local path and does not exist")
        try:
            dataset = load_image_dataset(
                data.dataset,
                name=data.dataset_config_name,
                data_dir=data.data_dir,
                data_files=data.data_files,
                image_column=data.image_column,
                label_column=data.label_column,
            )
        except (ConnectionError, FileNotFoundError) as error:  # offline without a local copy, a wrong Hub id or path
            raise ConfigError(f"data.dataset={data.dataset!r} cannot be loaded: {error}") from error
        splits = list(dataset) if hasattr(dataset, "keys") else []
        if data.train_split not in splits:
            raise ConfigError(
                f"data.train_split={data.train_split!r} is not a split of {data.dataset!r}; splits: {splits}"
            )
        train = dataset[data.train_split]
        validation = None
        if data.validation_split is not None:
            if data.validation_split not in splits:
                raise ConfigError(
                    f"data.validation_split={data.validation_split!r} is not a split of {data.dataset!r}; splits: "
                    f"{splits} (or hold out part of the training split with data.train_val_split)"
                )
            validation = dataset[data.validation_split]
        elif data.train_val_split is not None:
            held_out = round(len(train) * data.train_val_split)
            if not 1 <= held_out < len(train):
                raise ConfigError(
                    f"data.train_val_split={data.train_val_split} of {len(train)} training images holds out "
                    f"{held_out}: choose a fraction that leaves images on both sides"
                )
            parts = train.train_test_split(test_size=held_out, seed=self.training.seed, shuffle=True)
            train, validation = parts["train"], parts["test"]
        if validation is not None and self.evaluation.val_max_samples is not None:
            validation = validation.select(range(min(self.evaluation.val_max_samples, len(validation))))
        if data.max_train_samples is not None:
            train = train.select(range(min(data.max_train_samples, len(train))))
        return RecipeData(train, self.knn_splits(dataset), validation)

    def knn_splits(self, dataset) -> tuple[Any, Any] | None:
        """The k-NN bank (the whole training split) and queries (``data.eval_split``) of ``dataset``, or None: with
        ``data.eval_split: null``, or, with one log line that says why and which keys turn it on, when the data has
        no such split, no labels or a single class in the bank (an image folder without class subfolders: what
        self-supervised pretraining usually gets). A split the command line asked for that is missing is a
        ``ConfigError``; one that only the recipe file or the defaults name is skipped."""
        data = self.data
        if data.eval_split is None:
            return None
        splits = list(dataset)
        turn_on = (
            "to turn it on, set data.eval_split to a split with labels (an image folder: <data_dir>/<split>/<class>/ "
            "beside <data_dir>/train/<class>/) and data.label_column when they are not in 'label'; "
            "data.eval_split=null turns this line off"
        )
        if data.eval_split not in splits:
            if "data.eval_split" in self.command_line_keys:
                raise ConfigError(
                    f"data.eval_split={data.eval_split!r} is not a split of {data.dataset!r}; splits: {splits} (set "
                    "it to null to skip k-NN)"
                )
            logger.warning(
                "k-NN evaluation is off: data.eval_split=%r of the recipe is not a split of %r (splits: %s); %s",
                data.eval_split,
                data.dataset,
                splits,
                turn_on,
            )
            return None
        bank, queries = dataset[data.train_split], dataset[data.eval_split]
        bank_labels = _labels_present(bank)
        unlabelled = [
            name
            for name, labels in ((data.train_split, bank_labels), (data.eval_split, _labels_present(queries)))
            if not labels
        ]
        if unlabelled:
            logger.warning(
                "k-NN evaluation is off: %r has no labels in split %s; %s",
                data.dataset,
                " and ".join(repr(name) for name in dict.fromkeys(unlabelled)),
                turn_on,
            )
            return None
        if len(bank_labels) < 2:
            logger.warning(
                "k-NN evaluation is off: the %r split of %r has a single label (%s), nothing to tell apart; %s",
                data.train_split,
                data.dataset,
                _label_names(bank, bank_labels),
                turn_on,
            )
            return None
        return bank, queries

    @cached_property
    def model_config(self):
        """The model's configuration: built from the model section, or the pretrained model's with the method's
        ``pretrained_overridable_keys`` the section sets. Architecture keys beside a pretrained model must agree
        with it (so the recipe that trained a model can continue it). With ``model.pretrained_backbone`` the
        backbone config is that transformers model's (``pretrained_backbone_config``: ``backbone_config`` keys beside
        it must agree, but for ``num_channels``, ``image_size`` and the dropout rates). ``ConfigError`` for a value
        that makes no sense, an architecture that differs from the pretrained one, or a pretrained model that cannot
        be found."""
        spec = self.spec
        config_class = spec.config_class
        kwargs = {key: value for key, value in self.model.items() if key not in MODEL_EXTRA_KEYS}
        pretrained = self.model.get("pretrained_model_name_or_path")
        pretrained_backbone = self.model.get("pretrained_backbone")
        if pretrained_backbone is not None:
            if pretrained is not None:
                raise ConfigError(
                    f"give model.pretrained_model_name_or_path (continue a trained hf_ssl {spec.name} model) or "
                    "model.pretrained_backbone (start the backbones from a plain transformers model), not both"
                )
            try:
                kwargs["backbone_config"] = pretrained_backbone_config(
                    pretrained_backbone, kwargs.get("backbone_config")
                )
            except (OSError, ValueError) as error:
                raise ConfigError(f"model.pretrained_backbone={pretrained_backbone!r}: {error}") from error
        try:
            if pretrained is None:
                return config_class(**kwargs)
            config_class(**kwargs)  # the same checks as for a new model
        except ValueError as error:
            starting_from = f" with model.pretrained_backbone={pretrained_backbone!r}" if pretrained_backbone else ""
            raise ConfigError(f"invalid 'model' section{starting_from}: {error}") from error
        try:
            saved_type = PretrainedConfig.get_config_dict(pretrained)[0].get("model_type")
            method_types = {get_method(name).config_class.model_type for name in registered_methods()}
            if saved_type not in method_types and saved_type in CONFIG_MAPPING:
                raise ConfigError(
                    f"model.pretrained_model_name_or_path={pretrained!r} is a plain transformers {saved_type!r} "
                    f"model, not a trained hf_ssl {spec.name} model: to start the backbones from its weights, write "
                    f"model.pretrained_backbone: {pretrained} instead"
                )
            config = config_class.from_pretrained(pretrained)
        except ConfigError:
            raise
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"model.pretrained_model_name_or_path={pretrained!r} cannot be loaded: {error}"
            ) from error
        if not isinstance(config, config_class) or config.model_type != config_class.model_type:
            raise ConfigError(
                f"model.pretrained_model_name_or_path={pretrained!r} is a {config.model_type!r} model, not a "
                f"{spec.name} one ({config_class.model_type!r}): continue it with its own method"
            )
        conflicts = [
            f"model.{key}: {given!r} here, {saved!r} in the pretrained model"
            for key, given, saved in _architecture_conflicts(config, kwargs, spec.pretrained_overridable_keys)
        ]
        if conflicts:
            raise ConfigError(
                f"the model section differs from the pretrained model {pretrained!r}: {'; '.join(conflicts[:5])}. The "
                "architecture is the pretrained model's: remove these keys or give them its values"
                + (
                    f". Only {', '.join(spec.pretrained_overridable_keys)} may change when continuing from a "
                    "pretrained model"
                    if spec.pretrained_overridable_keys
                    else ""
                )
            )
        for key in spec.pretrained_overridable_keys:
            if key in kwargs and getattr(config, key) != kwargs[key]:
                logger.info("model.%s: %r (the pretrained model had %r)", key, kwargs[key], getattr(config, key))
                setattr(config, key, kwargs[key])
        return config

    def build_model(self):
        """A new pretraining model of the method, or the pretrained one (``model.pretrained_model_name_or_path``)
        with the loss settings of the model section applied, or a new one whose every backbone starts from the
        transformers model ``model.pretrained_backbone`` (``load_pretrained_backbone``; heads stay random)."""
        model_class = self.spec.pretraining_model_class
        pretrained = self.model.get("pretrained_model_name_or_path")
        pretrained_backbone = self.model.get("pretrained_backbone")
        if pretrained_backbone is not None:
            model = model_class(self.model_config)
            try:
                load_pretrained_backbone(model, pretrained_backbone)
            except (OSError, ValueError) as error:
                raise ConfigError(f"model.pretrained_backbone={pretrained_backbone!r}: {error}") from error
            return model
        if pretrained is None:
            return model_class(self.model_config)
        return model_class.from_pretrained(pretrained, config=self.model_config)

    def check_settings(self) -> None:
        """The view groups against the method, their sizes and the evaluation size against the backbone
        (``check_view_sizes``), the method's collator on the backbone's patch grid (I-JEPA's masks) and its training
        keys against the model (H-JEPA's per-level warmups), before anything runs."""
        method_class = self.spec.method_class
        try:
            method_class.check_view_groups(self.view_config)
            check_view_sizes(self.model_config, self.augmentation, self.evaluation.image_size)
            method_class.build_collator(self.model_config, self.augmentation, self.training.seed)
            method_class.check_training_arguments(self.model_config, self.training)
        except ValueError as error:
            raise ConfigError(str(error)) from error

    def check_best_metric(self, data: RecipeData) -> None:
        """``training.early_stopping_patience`` follows ``metric_for_best_model``: refuse, before training, a metric
        this run never logs (``val_loss`` without validation data, ``knn_*`` without a k-NN evaluation, ``linear_*``
        without its probe) or logs only at the end. ``save_best_total_limit`` on such a metric keeps the last
        checkpoints only: a warning says so (a recipe's default best-N must not stop a run on unlabelled data)."""
        args, evaluation = self.training, self.evaluation
        metric = args.metric_for_best_model
        if not metric or not (args.early_stopping_patience or args.save_best_total_limit):
            return
        if metric == "val_loss":
            missing = (
                "there is no validation data: set data.validation_split or data.train_val_split"
                if data.validation is None
                else None
            )
            interval, interval_key = evaluation.val_eval_steps, "evaluation.val_eval_steps"
        elif metric.startswith(("knn_", "linear_")):
            missing = None
            if data.knn is None:
                missing = "there is no k-NN evaluation (no labelled data.eval_split): give one, or follow val_loss"
            elif metric.startswith("linear_") and not evaluation.linear_probe:
                missing = "the linear probe is off: set evaluation.linear_probe=true"
            interval, interval_key = evaluation.knn_eval_steps, "evaluation.knn_eval_steps"
        else:
            return
        if missing is not None and args.early_stopping_patience:
            raise ConfigError(
                f"training.early_stopping_patience follows training.metric_for_best_model={metric!r}, but this run "
                f"never logs it: {missing}"
            )
        if missing is not None:
            logger.warning(
                "training.save_best_total_limit keeps no best checkpoint: this run never logs "
                "training.metric_for_best_model=%r (%s); checkpoints are kept by training.save_total_limit alone",
                metric,
                missing,
            )
        elif args.early_stopping_patience and interval == 0:
            raise ConfigError(
                f"training.early_stopping_patience follows {metric!r}, which {interval_key}=0 logs only when training "
                f"ends: set {interval_key} to the number of optimizer steps between evaluations"
            )

    def resolve_normalisation(self, train_dataset, max_images: int = 1000) -> None:
        """Fill in ``augmentation.mean`` / ``std`` from ``train_dataset`` when they are still null for bands other
        than RGB (``hf_ssl.data.band_statistics`` over up to ``max_images`` images), so that training, the saved
        recipe and the image processor all normalise with them."""
        if not self.view_config.needs_statistics:
            return
        try:
            mean, std = band_statistics(
                train_dataset,
                self.view_config.num_channels,
                max_images=max_images,
                channels_last=self.data.channels_last,
                skip_bad_images=self.data.skip_bad_images,
            )
        except ValueError as error:
            raise ConfigError(
                f"cannot compute the normalisation of data.dataset={self.data.dataset!r}: {error}"
            ) from error
        logger.info(
            "Per-band normalisation computed from the training data: mean %s, std %s",
            [round(value, 4) for value in mean],
            [round(value, 4) for value in std],
        )
        self.augmentation = dataclasses.replace(self.augmentation, mean=mean, std=std)

    @property
    def evaluation_image_size(self) -> int:
        """``evaluation.image_size``, else the size of the first view group (DINO's global crops)."""
        return self.evaluation.image_size or self.view_config.first.size


@functools.cache
def _method_recipe_class(base: type, method: str) -> type:
    return type(
        f"Recipe[{method}]",
        (base,),
        {
            "default_method": method,
            "__module__": __name__,
            "__doc__": (
                f"The recipe a script that trains {method!r} reads: ``method: {method}`` unless the file says "
                "otherwise (it refuses another method's recipe)."
            ),
        },
    )


def _labels_present(split) -> list:
    """The distinct labels of ``split``'s ``label`` column, missing ones (None, or -1 as in Hub test splits) left out;
    [] without the column. (An image folder of ``train/*.png`` and ``test/*.png`` gets the split names as labels,
    None in one of them.)"""
    if "label" not in split.column_names:
        return []
    return [label for label in split.unique("label") if label is not None and label != -1]


def _label_names(split, labels: list) -> str:
    """``labels`` of ``split`` as their class names where its label column is a ``ClassLabel``."""
    names = getattr(split.features.get("label"), "names", None)
    return ", ".join(repr(names[label]) if names and isinstance(label, int) else repr(label) for label in labels)


def _architecture_conflicts(
    config, values: dict[str, Any], overridable: tuple[str, ...]
) -> list[tuple[str, Any, Any]]:
    """``(key, recipe value, pretrained value)`` for each architecture key of ``values`` that ``config`` (a
    pretrained model's) does not share; for ``backbone_config``, each key the recipe gives."""
    conflicts = []
    for key, value in values.items():
        if key in overridable:
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
