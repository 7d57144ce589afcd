"""The model a fine-tuning run starts from: a transformers ``AutoModelForImageClassification`` built on the backbone of
an hf_ssl run, an exported backbone, or any transformers vision checkpoint; the linear probe's frozen backbone; and
the parameter groups of layer-wise lr decay.

Where the backbone comes from (``model.model_name_or_path``, a folder or a Hub id):

    an hf_ssl run (output dir or Hub repo)   its ``backbone/`` subfolder (the evaluated backbone, plain transformers)
    an hf_ssl checkpoint-<step> folder       the evaluated backbone of the pretraining model, exported on the fly
    a backbone/ folder, a transformers model  itself (ViT, Dinov2, IJepa, ResNet, ... any image-classification family)

Every backbone weight must load: a checkpoint whose weights do not fit the model is an error naming them, never a
silently random backbone. Only the classification head (``classifier``) starts new.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from filelock import FileLock
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from hf_ssl.errors import ConfigError

logger = logging.getLogger(__name__)

HEAD_PREFIX = "classifier"
EXPORT_WAIT_SECONDS = 600
# Parameters no fine-tuning recipe decays (BEiT / MAE): biases and norms (the Trainer's rule) and these tokens.
NO_DECAY_NAMES = ("position_embeddings", "cls_token", "mask_token", "register_tokens", "distillation_token")


@dataclass
class BackboneSource:
    """Where the fine-tuned backbone is read from: ``from_pretrained(path, subfolder=subfolder, revision=revision)``,
    and the image processor (``processor_path`` / ``processor_subfolder``); ``pretraining_model_type`` names the hf_ssl
    model it came from (None for a plain transformers model)."""

    path: str
    subfolder: str = ""
    revision: str | None = None
    processor_path: str | None = None
    processor_subfolder: str = ""
    pretraining_model_type: str | None = None

    def from_pretrained_kwargs(self) -> dict:
        return {"subfolder": self.subfolder, "revision": self.revision}


def resolve_backbone_source(
    name_or_path: str, revision: str | None = None, export_dir: str | Path | None = None
) -> BackboneSource:
    """Find the plain transformers backbone of ``name_or_path`` (see the module docstring). An hf_ssl checkpoint
    without ``backbone/`` has its evaluated backbone exported to ``export_dir`` (default: a temporary folder)."""
    import hf_ssl  # noqa: F401  (registers the hf_ssl configs, so AutoConfig reads an hf_ssl run)

    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    except Exception as error:
        raise ConfigError(
            f"model.model_name_or_path={name_or_path!r} cannot be read as a model ({type(error).__name__}: {error}). "
            "Give an hf_ssl run folder, its backbone/ folder, a checkpoint-<step> folder, or a transformers model "
            "(Hub id or folder)"
        ) from error
    if not config.model_type.startswith("hf_ssl_"):
        return BackboneSource(name_or_path, revision=revision, processor_path=name_or_path)
    try:
        AutoConfig.from_pretrained(name_or_path, subfolder="backbone", revision=revision)
    except Exception:  # a checkpoint-<step> folder, or a run saved before its backbone was exported
        return _export_pretraining_backbone(name_or_path, config, revision, export_dir)
    return BackboneSource(
        name_or_path,
        subfolder="backbone",
        revision=revision,
        processor_path=name_or_path,
        processor_subfolder="backbone",
        pretraining_model_type=config.model_type,
    )


def _export_pretraining_backbone(name_or_path: str, config: PretrainedConfig, revision, export_dir) -> BackboneSource:
    from transformers import AutoModelForPreTraining

    target = Path(export_dir) if export_dir is not None else Path(tempfile.mkdtemp(prefix="hf_ssl_backbone_"))
    target.mkdir(parents=True, exist_ok=True)
    marker = target / "exported_from.json"
    record = {
        "model_name_or_path": str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else name_or_path,
        "revision": revision,
    }
    # The local main process exports (save_pretrained writes only there) under a file lock; the other processes
    # wait for its marker, written last. Not a barrier: it would pair with barriers inside from_pretrained /
    # save_pretrained.
    if PartialState().is_local_main_process:
        with FileLock(str(target) + ".lock"):
            if _exported(marker, record, target):
                logger.info("Using the backbone of %s exported earlier to %s", name_or_path, target)  # a resumed run
            else:
                marker.unlink(missing_ok=True)
                model = AutoModelForPreTraining.from_pretrained(name_or_path, revision=revision)
                model.export_backbone(str(target), image_processor=_find_processor(name_or_path, revision))
                marker.write_text(json.dumps(record))
                logger.info(
                    "%s has no backbone/ folder: exported the evaluated backbone of its %s to %s",
                    name_or_path,
                    config.model_type,
                    target,
                )
    else:
        deadline = time.monotonic() + EXPORT_WAIT_SECONDS
        while not _exported(marker, record, target):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"waited {EXPORT_WAIT_SECONDS} s for the main process to export the backbone of {name_or_path} to "
                    f"{target}"
                )
            time.sleep(0.5)
    return BackboneSource(str(target), processor_path=str(target), pretraining_model_type=config.model_type)


def _exported(marker: Path, record: dict, target: Path) -> bool:
    """``target`` holds a finished export of the checkpoint ``record`` names (the marker is written last)."""
    return marker.is_file() and json.loads(marker.read_text()) == record and (target / "config.json").is_file()


def _find_processor(name_or_path: str, revision):
    """The image processor saved with an hf_ssl model, or beside it (a checkpoint-<step> folder's run folder)."""
    candidates = [name_or_path]
    if Path(name_or_path).is_dir():
        candidates.append(str(Path(name_or_path).resolve().parent))
    for candidate in candidates:
        try:
            return AutoImageProcessor.from_pretrained(
                candidate, revision=revision if candidate == name_or_path else None
            )
        except Exception:
            continue
    raise ConfigError(
        f"no image processor (preprocessor_config.json) in {name_or_path!r} or its parent folder: set "
        "model.image_processor_name_or_path to the run folder whose preprocessor_config.json describes the images"
    )


def load_image_processor(source: BackboneSource, override: str | None = None):
    """The processor that prepared the backbone's images: ``override`` when given, else the one saved with the
    model."""
    if override is not None:
        return AutoImageProcessor.from_pretrained(override)
    try:
        return AutoImageProcessor.from_pretrained(
            source.processor_path, subfolder=source.processor_subfolder, revision=source.revision
        )
    except Exception as error:
        raise ConfigError(
            f"{source.path!r} has no image processor (preprocessor_config.json) ({type(error).__name__}: {error}): "
            "set model.image_processor_name_or_path to one (a Hub id or a folder holding preprocessor_config.json)"
        ) from error


def build_classification_model(source: BackboneSource, label_names: list[str], from_scratch: bool = False):
    """``AutoModelForImageClassification`` on the backbone of ``source`` with a new ``classifier`` for ``label_names``.

    Every weight of the backbone must be in the checkpoint (``ConfigError`` otherwise); weights the classification
    model has no place for (an exported ViT's identity pooler, an old classifier of another size) are left out.
    ``from_scratch``: the same architecture, randomly initialised."""
    label2id = {name: index for index, name in enumerate(label_names)}
    id2label = dict(enumerate(label_names))
    config = AutoConfig.from_pretrained(source.path, **source.from_pretrained_kwargs())
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ConfigError(
            f"transformers has no image-classification model for {config.model_type!r} (the backbone of "
            f"{source.path!r}); families it has: "
            f"{', '.join(sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)[:40])}, ..."
        )
    labels = {"num_labels": len(label_names), "label2id": label2id, "id2label": id2label}
    if from_scratch:
        config.update(labels)
        return AutoModelForImageClassification.from_config(config)
    model, loading = AutoModelForImageClassification.from_pretrained(
        source.path,
        **source.from_pretrained_kwargs(),
        **labels,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
    )
    missing = [key for key in loading["missing_keys"] if not key.startswith(HEAD_PREFIX)]
    mismatched = [entry[0] if isinstance(entry, tuple) else entry for entry in loading.get("mismatched_keys", [])]
    mismatched = [key for key in mismatched if not key.startswith(HEAD_PREFIX)]
    if missing or mismatched:
        raise ConfigError(
            f"the weights of {source.path!r} do not fit {type(model).__name__}: "
            + (f"missing {_first(missing)}" if missing else "")
            + ("; " if missing and mismatched else "")
            + (f"of another shape {_first(mismatched)}" if mismatched else "")
            + ". Point model.model_name_or_path at the backbone the run saved (its backbone/ folder), or set "
            "model.from_scratch=true for a random start"
        )
    return model


def _first(keys: list[str], count: int = 8) -> str:
    return ", ".join(keys[:count]) + (f" and {len(keys) - count} more" if len(keys) > count else "")


def freeze_backbone(model: torch.nn.Module) -> list[str]:
    """The linear probe: every parameter but the classification head stops training, and the backbone stays in eval
    mode when the Trainer calls ``model.train()`` (frozen BatchNorm statistics and no dropout, as in the linear
    evaluations of DINO and MAE). Returns the names of the parameters that still train."""
    head = getattr(model, HEAD_PREFIX, None)
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no {HEAD_PREFIX!r} head to train alone: use model.mode=full")
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(HEAD_PREFIX + ".")
    backbone_modules = [module for name, module in model.named_children() if name != HEAD_PREFIX]
    train_everything = model.train

    def train_head_only(mode: bool = True):
        train_everything(mode)
        for module in backbone_modules:
            module.eval()
        return model

    model.train = train_head_only
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


# (regex on a parameter name, what its layer id is) for the families layer-wise lr decay knows. Layer 0 is the
# embeddings, layer i + 1 the i-th transformer block / ResNet stage, layer L + 1 the final norm and the head.
_BLOCK_PATTERNS = (  # stages first: a ResNet stage holds "layers.<j>" of its own
    re.compile(r"\.encoder\.stages\.(\d+)\."),  # ResNet
    re.compile(r"\.(?:encoder\.)?(?:layer|layers)\.(\d+)\."),  # ViT, DeiT, Dinov2, IJepa, BEiT, Data2VecVision
)
_EMBEDDING_PATTERN = re.compile(r"\.(?:embeddings|embedder)\.")


def num_layer_groups(config: PretrainedConfig) -> int:
    """The number of blocks L layer decay counts: transformer layers, or ResNet stages."""
    if getattr(config, "depths", None) is not None and config.model_type == "resnet":
        return len(config.depths)
    layers = getattr(config, "num_hidden_layers", None)
    if layers is None:
        raise ConfigError(
            f"layer_decay knows ViT-family models and ResNet, not {config.model_type!r}: set model.layer_decay=null"
        )
    return int(layers)


def layer_id(name: str, num_layers: int) -> int:
    """The layer id of parameter ``name``: 0 for the embeddings, i + 1 in block i, ``num_layers + 1`` for the rest
    (the final norm, the pooler and the head)."""
    if _EMBEDDING_PATTERN.search(name):
        return 0
    for pattern in _BLOCK_PATTERNS:
        match = pattern.search(name)
        if match:
            return int(match.group(1)) + 1
    return num_layers + 1


def parameter_groups(
    model: torch.nn.Module, learning_rate: float, weight_decay: float, decay_names: set[str], layer_decay: float | None
) -> list[dict]:
    """Optimizer parameter groups: weight decay on ``decay_names`` but position embeddings and CLS / mask tokens, and,
    with ``layer_decay``, lr ``learning_rate * layer_decay ** (L + 1 - layer_id)`` (the head and final norm at the full
    lr, the embeddings at ``layer_decay ** (L + 1)`` of it; BEiT, MAE). Frozen parameters are left out. Each group
    carries ``layer_id`` and ``lr_scale`` for the logs and tests."""
    num_layers = num_layer_groups(model.config) if layer_decay is not None else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = name in decay_names and not any(token in name for token in NO_DECAY_NAMES)
        layer = layer_id(name, num_layers) if layer_decay is not None else 0
        scale = layer_decay ** (num_layers + 1 - layer) if layer_decay is not None else 1.0
        group = groups.setdefault(
            (layer, decays),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decays else 0.0,
                "lr": learning_rate * scale,
                "lr_scale": scale,
                "layer_id": layer,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    if layer_decay is not None and not any(key[0] not in (0, num_layers + 1) for key in groups):
        raise ConfigError(
            f"layer_decay found no transformer block or ResNet stage among the parameters of {type(model).__name__}: "
            "set model.layer_decay=null for this family"
        )
    return [groups[key] for key in sorted(groups)]
