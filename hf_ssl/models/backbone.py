"""Transformers vision backbones as every hf_ssl method uses them.

- ``build_backbone``: the transformers base model of a backbone config (ViT, DeiT, Dinov2, IJepa, ResNet, ConvNext...).
- ``get_backbone_features``: its output split into the global embedding a method trains and evaluates on
  (``pooler_output`` of every hf_ssl feature model) and the patch tokens.
- ``check_input_sizes``: image sizes checked against the backbone before training.
- ``export_backbone``: a trained backbone saved as the plain transformers model that ``AutoModel`` builds, with
  its image processor, so it loads without hf_ssl.
- ``resolve_backbone_config`` / ``backbone_config_for_training``: the nested ``backbone_config`` of a method config.
- ``pretrained_backbone_config`` / ``load_pretrained_backbone``: start every backbone of a method from a pretrained
  plain transformers model (a Hub id or a folder), with ``adapt_input_channels`` for another number of channels.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .image_processing import build_image_processor

logger = logging.getLogger(__name__)


def build_backbone(backbone_config: PretrainedConfig) -> PreTrainedModel:
    """The transformers base model for `backbone_config` (what `AutoModel.from_config` builds), without the
    optional pooling layer of ViT-like models: DINO does not use it, and a parameter without gradient breaks DDP."""
    if type(backbone_config) not in MODEL_MAPPING:
        raise ValueError(
            f"backbone_config of model_type {backbone_config.model_type!r} has no transformers AutoModel class; "
            "use a vision backbone such as 'vit', 'dinov2' or 'resnet'"
        )
    model_kwargs = {}
    if "add_pooling_layer" in inspect.signature(MODEL_MAPPING[type(backbone_config)].__init__).parameters:
        model_kwargs["add_pooling_layer"] = False
    return AutoModel.from_config(backbone_config, **model_kwargs)


def get_backbone_embed_dim(config: PretrainedConfig) -> int:
    """Size D of the global embedding `get_backbone_features` returns for a backbone built from `config`."""
    hidden_sizes = getattr(config, "hidden_sizes", None)
    if hidden_sizes:  # CNNs (ResNet, ConvNext): channels of the last stage
        return int(hidden_sizes[-1])
    hidden_size = getattr(config, "hidden_size", None)
    if hidden_size:
        return int(hidden_size)
    raise ValueError(
        f"cannot tell the embedding size of a {type(config).__name__}: it has neither `hidden_sizes` nor `hidden_size`"
    )


def get_backbone_features(
    backbone: PreTrainedModel, pixel_values: torch.Tensor, forward_kwargs: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a transformers vision backbone and split its output into a global embedding and patch tokens.

    Args:
        backbone: a transformers base model (ViT, DeiT, Dinov2, Dinov2WithRegisters, IJepa, ResNet, ConvNext, ...).
        pixel_values: (B, C, H, W). Any H, W the backbone accepts: ViT-like models interpolate their position
            embeddings, so 96-px local crops work with a 224-px backbone.

    Returns:
        cls_embedding: (B, D). Transformers: the final-normed CLS token (the mean of the patch tokens for models
            without one, e.g. IJepa). CNNs: the backbone's pooled output, flattened.
        patch_tokens: (B, N, D). Transformers: the tokens after CLS, distillation and register tokens.
            CNNs: the last feature map (B, C, h, w) flattened to (B, h * w, C).

    ``forward_kwargs`` (``backbone_forward_kwargs(type(backbone))``, looked up once by the caller) keeps the
    signature inspection out of the forward pass, where ``torch.compile`` cannot trace it.
    """
    if forward_kwargs is None:
        forward_kwargs = backbone_forward_kwargs(type(backbone))
    outputs = backbone(pixel_values=pixel_values, **forward_kwargs)
    return split_backbone_output(backbone, outputs)


def backbone_forward_kwargs(backbone_class: type) -> dict:
    """Keyword arguments every forward of this backbone class gets: position-embedding interpolation where the
    class takes the flag (Dinov2 always interpolates; ViT, DeiT and IJepa only when asked)."""
    if "interpolate_pos_encoding" in inspect.signature(backbone_class.forward).parameters:
        return {"interpolate_pos_encoding": True}
    return {}


def check_input_sizes(backbone_config: PretrainedConfig, sizes: dict[str, int], native: tuple[str, ...] = ()) -> None:
    """Check, before training, that the image sizes a run uses suit its backbone; raise a ``ValueError`` naming
    the key and what to set otherwise.

    Args:
        backbone_config: the backbone's transformers config.
        sizes: ``{recipe key: size in pixels}``, e.g. ``{"augmentation.global_crop_size": 224, ...}``.
        native: the keys of ``sizes`` the exported model must run at without interpolation (the global crop size
            and the evaluation size).

    Patch transformers (ViT, DeiT, IJepa, Dinov2...) need sizes that are multiples of ``patch_size`` (otherwise
    the border is silently cut off). ViT, DeiT and IJepa also run only at ``image_size`` unless asked to
    interpolate their position embeddings, which a plain ``AutoModel`` user does not do: training interpolates,
    so the run trains, but its exported backbone would reject the images its own processor makes. Dinov2 always
    interpolates; CNNs take any size.
    """
    model_class = MODEL_MAPPING.get(type(backbone_config), None)
    patch_size = getattr(backbone_config, "patch_size", None) if hasattr(backbone_config, "hidden_size") else None
    if isinstance(patch_size, (list, tuple)):
        patch_size = patch_size[0]
    image_size = getattr(backbone_config, "image_size", None)
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    fixed_size = (
        image_size
        if image_size
        and model_class is not None
        and "interpolate_pos_encoding" in inspect.signature(model_class.forward).parameters
        else None
    )
    kind = backbone_config.model_type
    for key, size in sizes.items():
        if patch_size and size % patch_size:
            raise ValueError(
                f"{key}={size} is not a multiple of the {kind} backbone's patch_size {patch_size}: the last "
                f"{size % patch_size} pixels of each row and column would be cut off. Use a multiple of {patch_size}"
            )
        if fixed_size and key in native and size != fixed_size:
            raise ValueError(
                f"{key}={size} differs from the {kind} backbone's image_size {fixed_size}: a plain transformers "
                f"{model_class.__name__} runs only at {fixed_size} pixels, so the exported backbone would reject the "
                f"images of its own processor. Set {key}={fixed_size}, or give the backbone image_size: {size} "
                "(model.backbone_config.image_size) when training from scratch"
            )


def split_backbone_output(backbone: nn.Module, outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embedding (B, D), patch tokens (B, N, D))`` of a backbone's output; see ``get_backbone_features``."""
    hidden_state = outputs.last_hidden_state
    if hidden_state.ndim == 4:  # CNN feature map (B, C, h, w)
        patch_tokens = hidden_state.flatten(2).transpose(1, 2)
        pooled = outputs.pooler_output
        cls_embedding = pooled.flatten(1) if pooled is not None else patch_tokens.mean(dim=1)
        return cls_embedding, patch_tokens
    has_cls_token, num_prefix_tokens = _prefix_tokens(backbone)
    patch_tokens = hidden_state[:, num_prefix_tokens:]
    cls_embedding = hidden_state[:, 0] if has_cls_token else patch_tokens.mean(dim=1)
    return cls_embedding, patch_tokens


def _prefix_tokens(backbone: nn.Module) -> tuple[bool, int]:
    """(has a CLS token, number of tokens before the patch tokens: CLS, DeiT's distillation token, registers)."""
    embeddings = getattr(backbone, "embeddings", None)
    token_counts = {
        name: getattr(embeddings, name).shape[1]
        for name in ("cls_token", "distillation_token", "register_tokens")
        if isinstance(getattr(embeddings, name, None), torch.Tensor)
    }
    return "cls_token" in token_counts, sum(token_counts.values())


# ---------------------------------------------------------------------------------------------------------------------
# Backbone configs
# ---------------------------------------------------------------------------------------------------------------------


def resolve_backbone_config(
    backbone_config, default_model_type: str, default_kwargs: dict, owner: type
) -> PretrainedConfig:
    """The ``backbone_config`` argument of a method config as a transformers ``PretrainedConfig``.

    ``None`` gives ``default_model_type`` with ``default_kwargs``; a dict must carry its ``"model_type"``; a config
    of ``owner`` (the method config itself) is refused. Raises a ``ValueError`` naming what to fix."""
    if backbone_config is None:
        return CONFIG_MAPPING[default_model_type](**default_kwargs)
    if isinstance(backbone_config, dict):
        model_type = backbone_config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"`backbone_config` must name a model type known to transformers under 'model_type' "
                f"(e.g. 'vit', 'dinov2', 'resnet'), got model_type={model_type!r}"
            )
        backbone_kwargs = {key: value for key, value in backbone_config.items() if key != "model_type"}
        backbone_config = AutoConfig.for_model(model_type, **backbone_kwargs)
    if not isinstance(backbone_config, PretrainedConfig):
        raise ValueError(
            "`backbone_config` must be None, a dict with a 'model_type' or a transformers PretrainedConfig, "
            f"got {type(backbone_config).__name__}"
        )
    if isinstance(backbone_config, owner):
        raise ValueError(f"`backbone_config` must be the config of a vision backbone, not another {owner.__name__}")
    return backbone_config


def backbone_config_for_training(backbone_config: PretrainedConfig, drop_path_rate: float) -> PretrainedConfig:
    """A copy of ``backbone_config`` with ``drop_path_rate`` where the backbone has drop path, and no mask token
    where it could build one (Dinov2 does by default): a parameter without gradient breaks
    DistributedDataParallel unless ``find_unused_parameters=True``, and methods that mask patches bring their own."""
    config = copy.deepcopy(backbone_config)
    if hasattr(config, "drop_path_rate"):
        config.drop_path_rate = drop_path_rate
    if hasattr(config, "use_mask_token"):
        config.use_mask_token = False
    return config


# ---------------------------------------------------------------------------------------------------------------------
# Starting from a pretrained transformers backbone
# ---------------------------------------------------------------------------------------------------------------------

# Backbone config keys that may differ from the pretrained model's: the first layer is adapted to another
# `num_channels` (`adapt_input_channels`), the position embeddings are resampled to another `image_size`, and the
# dropout rates shape no weight.
PRETRAINED_BACKBONE_FREE_KEYS = (
    "num_channels",
    "image_size",
    "drop_path_rate",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
# Tensors of a pretrained checkpoint that hf_ssl's backbones do not build: the pooling layer (`build_backbone`) and the
# mask token (`backbone_config_for_training`).
_UNBUILT_TENSOR_PREFIXES = ("pooler.", "embeddings.mask_token")
# config.json fields that describe the checkpoint's task head or file, not the backbone.
_CHECKPOINT_METADATA_KEYS = (
    "_name_or_path",
    "architectures",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "finetuning_task",
)


def adapt_input_channels(weight: torch.Tensor, num_channels: int) -> torch.Tensor:
    """The weight of an RGB-pretrained first layer adapted to images of ``num_channels`` bands (timm's
    ``adapt_input_conv`` rule). An image whose bands all hold the same values then gets the response the pretrained
    layer gives to that grey image in RGB: exactly for 1 band or a multiple of 3, about otherwise.

    - ``num_channels == 1``: the sum of the three RGB filters;
    - ``num_channels == 2`` or ``> 3``: the RGB filters repeated ``ceil(num_channels / 3)`` times along the input
      channels, the first ``num_channels`` kept, scaled by ``3 / num_channels`` (band ``c`` gets the filter of RGB
      channel ``c % 3``);
    - ``num_channels == 3``: unchanged.

    Args:
        weight: (out, 3, ...) the input channels on dim 1: a conv kernel (out, 3, kh, kw) or a linear weight (out, 3).
        num_channels: N >= 1, the input channels of the adapted layer.

    Returns:
        (out, N, ...) in the dtype of ``weight`` (computed in float32).
    """
    if weight.ndim < 2 or weight.shape[1] != 3:
        raise ValueError(
            "only an RGB-pretrained first layer (input channels on dim 1 = 3) can be adapted to other channels, got a "
            f"weight of shape {tuple(weight.shape)}"
        )
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"num_channels must be an integer >= 1, got {num_channels!r}")
    if num_channels == 3:
        return weight
    rgb = weight.float()
    if num_channels == 1:
        adapted = rgb.sum(dim=1, keepdim=True)
    else:
        repeats = [1] * weight.ndim
        repeats[1] = math.ceil(num_channels / 3)
        adapted = rgb.repeat(*repeats)[:, :num_channels] * (3 / num_channels)
    return adapted.to(weight.dtype)


def pretrained_backbone_config(
    name_or_path: str | os.PathLike, backbone_config: dict | None = None, **from_pretrained_kwargs
) -> PretrainedConfig:
    """The backbone config of a method that starts from the plain transformers model ``name_or_path``: its
    architecture, without its task head's labels and file metadata.

    Args:
        name_or_path: Hub id or local folder of a transformers vision model (``AutoConfig.from_pretrained``: offline,
            a Hub id resolves from the local cache).
        backbone_config: keys a recipe sets beside it (``model.backbone_config``), or None; a config counts by the
            keys that differ from its class defaults. Architecture keys must equal the pretrained model's; those of
            ``PRETRAINED_BACKBONE_FREE_KEYS`` (``num_channels``, ``image_size``, the dropout rates) replace them.
        from_pretrained_kwargs: passed to ``AutoConfig.from_pretrained`` (``revision``, ``cache_dir``, ``token``...).

    Raises ``OSError`` when the model cannot be found, ``ValueError`` naming the keys that differ (or the model
    types) otherwise.
    """
    source = _pretrained_source_config(name_or_path, **from_pretrained_kwargs)
    if isinstance(backbone_config, PretrainedConfig):
        backbone_config = {
            key: value for key, value in backbone_config.to_diff_dict().items() if key not in _CHECKPOINT_METADATA_KEYS
        }
    architecture = {
        key: value
        for key, value in source.to_diff_dict().items()
        if key not in _CHECKPOINT_METADATA_KEYS and key != "model_type"
    }
    given = dict(backbone_config or {})
    wanted_type = given.pop("model_type", source.model_type)
    if wanted_type != source.model_type:
        raise ValueError(
            f"{str(name_or_path)!r} is a {source.model_type!r} model ({_model_class_name(source)}) and "
            f"backbone_config asks for a {wanted_type!r} one: remove backbone_config.model_type (and its architecture "
            f"keys) to train a {source.model_type} backbone, or choose a pretrained {wanted_type} model"
        )
    conflicts = [
        f"backbone_config.{key}: {value!r} here, {getattr(source, key, None)!r} in the pretrained model"
        for key, value in given.items()
        if key not in PRETRAINED_BACKBONE_FREE_KEYS and not _same_value(value, getattr(source, key, None))
    ]
    if conflicts:
        raise ValueError(
            f"backbone_config differs from the pretrained {source.model_type} backbone {str(name_or_path)!r}: "
            f"{'; '.join(conflicts)}. The architecture is the pretrained model's: remove these keys or give them its "
            f"values (only {', '.join(PRETRAINED_BACKBONE_FREE_KEYS)} may differ)"
        )
    return AutoConfig.for_model(source.model_type, **{**architecture, **given})


def load_pretrained_backbone(model: nn.Module, name_or_path: str | os.PathLike, **from_pretrained_kwargs) -> list[str]:
    """Fill every backbone of ``model`` with the weights of the plain transformers model ``name_or_path``.

    The pretrained model is loaded with ``AutoModel.from_pretrained`` (a Hub id, offline from the local cache, or a
    folder of ``save_pretrained`` / ``export_backbone``; a checkpoint with a task head gives its base model). Its
    tensors go into each backbone ``model.backbones()`` lists (DINO's student and teacher, I-JEPA's context and target
    encoders...), so an EMA teacher starts equal to its student; heads and predictors keep their initialisation.
    ``model`` may also be a transformers backbone itself.

    Strict: the checkpoint must hold every tensor of the pretrained model (it may hold a task head besides, which is
    left out), every backbone tensor is filled, and every pretrained tensor is used but the pooling layer and the mask
    token (``pooler.*``, ``embeddings.mask_token``), which hf_ssl backbones do not build. Two differences are adapted:

    - ``num_channels`` N of the backbone config against an RGB checkpoint: the one tensor whose shape differs only on
      dim 1, 3 in the checkpoint and N in the backbone (the first conv of a ResNet or ConvNext, the patch embedding of
      a ViT, DeiT, Dinov2 or IJepa), is adapted by ``adapt_input_channels``;
    - ``image_size``: ``embeddings.position_embeddings`` is resampled to the new patch grid by the pretrained model's
      own ``interpolate_pos_encoding``, so the backbone at its ``image_size`` computes what the pretrained model
      computes at that size with ``interpolate_pos_encoding=True``.

    Returns:
        the module names of the filled backbones (``[""]`` for a transformers backbone). An hf_ssl model records
        ``name_or_path`` as ``config.pretrained_backbone`` (saved in its config.json; its model card's ``base_model``).

    Raises ``OSError`` when the model cannot be found, ``ValueError`` for an hf_ssl checkpoint, a model of another
    type than the backbones, or tensors that do not match (naming them).
    """
    backbones = model.backbones() if hasattr(model, "backbones") else {"": model}
    source_config = _pretrained_source_config(name_or_path, **from_pretrained_kwargs)
    for name, backbone in backbones.items():
        if backbone.config.model_type != source_config.model_type:
            raise ValueError(
                f"{str(name_or_path)!r} is a {source_config.model_type!r} model ({_model_class_name(source_config)}) "
                f"and {'.'.join(filter(None, (type(model).__name__, name)))} is a {backbone.config.model_type!r} one "
                f"({type(backbone).__name__}): use a pretrained {backbone.config.model_type} model, or a "
                f"{source_config.model_type} backbone_config"
            )
    # float32 as the backbones are built: a half-precision checkpoint is widened before any resampling
    loading_kwargs = {"dtype": torch.float32, **from_pretrained_kwargs}
    source, loading = AutoModel.from_pretrained(
        name_or_path, config=source_config, output_loading_info=True, **loading_kwargs
    )
    _check_checkpoint_tensors(source, loading, name_or_path)
    with torch.no_grad():
        for name, backbone in backbones.items():
            state, adapted = _adapted_state_dict(source, backbone, name_or_path)
            backbone.load_state_dict(state, strict=True)
            logger.info(
                "%s: every tensor of the pretrained %s %r (%s parameters)%s",
                name or type(backbone).__name__,
                type(source).__name__,
                str(name_or_path),
                f"{sum(tensor.numel() for tensor in backbone.parameters()):,}",
                f"; adapted: {'; '.join(adapted)}" if adapted else "",
            )
    config = getattr(model, "config", None)
    if hasattr(model, "backbones") and config is not None:  # provenance: the model card's base_model
        config.pretrained_backbone = str(name_or_path)
    return list(backbones)


def _pretrained_source_config(name_or_path, **from_pretrained_kwargs) -> PretrainedConfig:
    """The config of the pretrained model, checked to be a plain transformers vision model."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, **from_pretrained_kwargs)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load the pretrained backbone {str(name_or_path)!r}: {error}") from error
    if config.model_type.startswith("hf_ssl_"):
        raise ValueError(
            f"{str(name_or_path)!r} is an hf_ssl {config.model_type!r} checkpoint, not a plain transformers backbone: "
            "continue it with model.pretrained_model_name_or_path (same method), or export its backbone first "
            "(`model.export_backbone(folder)`) and start from that folder"
        )
    if type(config) not in MODEL_MAPPING or not hasattr(config, "num_channels"):
        raise ValueError(
            f"{str(name_or_path)!r} is a {config.model_type!r} model, not a transformers vision backbone (ViT, "
            "Dinov2, IJepa, ResNet, ConvNext...) with an AutoModel class and a num_channels"
        )
    return config


def _check_checkpoint_tensors(source: PreTrainedModel, loading: dict, name_or_path) -> None:
    """Raise a ``ValueError`` naming the tensors ``AutoModel.from_pretrained`` could not fill from the checkpoint (it
    would initialise them randomly), or the checkpoint tensors it left out, unless these are a task head's (a
    checkpoint saved from a class other than the base model, e.g. ``ResNetForImageClassification``)."""
    missing = sorted(key for key in loading["missing_keys"] if not key.startswith(_UNBUILT_TENSOR_PREFIXES))
    unexpected = sorted(key for key in loading["unexpected_keys"] if not key.startswith(_UNBUILT_TENSOR_PREFIXES))
    saved_as = source.config.architectures or []
    has_task_head = any(name != type(source).__name__ for name in saved_as)
    if missing or (unexpected and not has_task_head):
        raise ValueError(
            f"the checkpoint {str(name_or_path)!r} does not hold a whole {type(source).__name__}: tensors it lacks "
            f"{_first(missing)}, tensors it holds that the model has not {_first(unexpected)}"
        )
    if unexpected:
        logger.info("%r: left out the %s head's tensors %s", str(name_or_path), saved_as[0], _first(unexpected))


def _first(keys: list[str], count: int = 10) -> str:
    return f"{keys[:count]}{f' and {len(keys) - count} more' if len(keys) > count else ''}"


def _adapted_state_dict(source: PreTrainedModel, backbone: nn.Module, name_or_path) -> tuple[dict, list[str]]:
    """The state dict of ``backbone`` taken from ``source``, and what was adapted (see
    ``load_pretrained_backbone``)."""
    source_state, backbone_state = source.state_dict(), backbone.state_dict()
    missing = [key for key in backbone_state if key not in source_state]
    unexpected = [
        key for key in source_state if key not in backbone_state and not key.startswith(_UNBUILT_TENSOR_PREFIXES)
    ]
    if missing or unexpected:
        raise ValueError(
            f"the pretrained {type(source).__name__} {str(name_or_path)!r} does not fit the {type(backbone).__name__} "
            f"backbone: tensors it lacks {_first(missing)}, tensors the backbone lacks {_first(unexpected)}"
        )
    source_channels, channels = source.config.num_channels, backbone.config.num_channels
    state, adapted, first_layers = {}, [], []
    for key, wanted in backbone_state.items():
        tensor = source_state[key]
        if tensor.shape != wanted.shape:
            if _is_first_layer(tensor, wanted, source_channels, channels):
                tensor = adapt_input_channels(tensor, channels)
                first_layers.append(key)
                adapted.append(f"{key} from {source_channels} to {channels} input channels")
            elif key.endswith("position_embeddings") and _image_size(source.config) != _image_size(backbone.config):
                tensor = _resampled_position_embeddings(source, key, wanted.shape, _image_size(backbone.config))
                adapted.append(
                    f"{key} resampled from image_size {source.config.image_size} to {backbone.config.image_size}"
                )
            else:
                raise ValueError(
                    f"the pretrained {type(source).__name__} {str(name_or_path)!r} does not fit the backbone: {key} "
                    f"is {tuple(tensor.shape)} there and {tuple(wanted.shape)} in the backbone (only num_channels, by "
                    "adapting the first layer, and image_size, by resampling the position embeddings, may differ)"
                )
        state[key] = tensor
    if channels != source_channels and len(first_layers) != 1:
        raise ValueError(
            f"cannot adapt {str(name_or_path)!r} from {source_channels} to num_channels={channels}: expected one "
            f"first layer whose input channels differ, found {first_layers or 'none'}"
        )
    return state, adapted


def _is_first_layer(tensor: torch.Tensor, wanted: torch.Tensor, source_channels: int, channels: int) -> bool:
    """Whether ``tensor`` differs from ``wanted`` only on dim 1, the pretrained and the new number of channels."""
    return (
        source_channels != channels
        and tensor.ndim == wanted.ndim >= 2
        and tensor.shape[1] == source_channels
        and wanted.shape[1] == channels
        and tensor.shape[:1] + tensor.shape[2:] == wanted.shape[:1] + wanted.shape[2:]
    )


def _resampled_position_embeddings(source: PreTrainedModel, key: str, shape: torch.Size, image_size: tuple[int, int]):
    """``source``'s position table ``key`` at ``image_size``, as its embeddings module interpolates it at run time."""
    owner_name, _, _ = key.rpartition(".")
    owner = source.get_submodule(owner_name)
    if not hasattr(owner, "interpolate_pos_encoding"):
        raise ValueError(
            f"cannot resample {key} of the pretrained {type(source).__name__} to image_size {image_size}: its "
            f"{type(owner).__name__} has no interpolate_pos_encoding; keep the pretrained image_size"
        )
    table = getattr(owner, key.rpartition(".")[2])
    tokens = table.new_zeros(1, shape[1], shape[-1])  # only the token count and width are read
    resampled = owner.interpolate_pos_encoding(tokens, image_size[0], image_size[1])
    if resampled.shape != shape:
        raise ValueError(
            f"resampling {key} of the pretrained {type(source).__name__} to image_size {image_size} gives "
            f"{tuple(resampled.shape)}, not the backbone's {tuple(shape)}; keep the pretrained image_size"
        )
    return resampled


def _image_size(config: PretrainedConfig) -> tuple[int, int] | None:
    image_size = getattr(config, "image_size", None)
    if image_size is None:
        return None
    return (
        (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(side) for side in image_size)
    )


def _model_class_name(config: PretrainedConfig) -> str:
    return MODEL_MAPPING[type(config)].__name__ if type(config) in MODEL_MAPPING else type(config).__name__


def _same_value(given, saved) -> bool:
    """Config values compared as YAML and config.json write them: lists and tuples alike, 1.0 and 1 alike."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    return plain(given) == plain(saved)


class DropPathBackboneConfigMixin:
    """For a method config with one ``backbone_config`` and a ``drop_path_rate`` (SimCLR, BYOL, VICReg): the backbone
    config the pretraining model trains (``backbone_config_for_training``: the drop path rate where the backbone
    has drop path) and the one of its feature model, its EMA copies and its export (``feature_backbone_config``:
    no drop path)."""

    def backbone_config_for_training(self) -> PretrainedConfig:
        return backbone_config_for_training(self.backbone_config, self.drop_path_rate)

    def feature_backbone_config(self) -> PretrainedConfig:
        return backbone_config_for_training(self.backbone_config, 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Export to a plain transformers model
# ---------------------------------------------------------------------------------------------------------------------


def export_backbone(
    backbone: PreTrainedModel,
    save_directory: str | os.PathLike,
    image_size: int | None = None,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    image_processor=None,
    config: PretrainedConfig | None = None,
) -> str:
    """Save ``backbone`` as the plain transformers model ``AutoModel`` builds for its config, plus its processor.

    ``transformers.AutoModel.from_pretrained(save_directory)`` and
    ``AutoImageProcessor.from_pretrained(save_directory)`` then load it without hf_ssl. Models that ``AutoModel``
    builds with a pooling layer (ViT, DeiT) get an identity pooler (weight I, bias 0, ``pooler_act="linear"``), so
    their ``pooler_output`` is the CLS embedding the method trained, the ``pooler_output`` of the hf_ssl feature model,
    and loading reports no missing weights.

    Args:
        backbone: a base model built by ``build_backbone`` (float32 weights).
        save_directory: where to write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``.
        image_size: input resolution of the processor; defaults to the backbone config's ``image_size``, else 224.
        image_mean, image_std: normalisation; default to ImageNet's.
        image_processor: save this processor instead of building one from the three arguments above.
        config: the config to export under, when it is not ``backbone.config`` (a training backbone's config carries
            its drop path rate; the exported model is for inference and fine-tuning).

    Returns:
        ``save_directory`` as a string.
    """
    export_config = copy.deepcopy(config if config is not None else backbone.config)
    if hasattr(export_config, "pooler_act"):
        export_config.pooler_act = "linear"
        export_config.pooler_output_size = export_config.hidden_size
    exported = AutoModel.from_config(export_config)  # exactly what a plain `AutoModel.from_pretrained` builds
    incompatible = exported.load_state_dict(backbone.state_dict(), strict=False)
    pooler = getattr(exported, "pooler", None)
    pooler_keys = {f"pooler.{name}" for name, _ in pooler.named_parameters()} if pooler is not None else set()
    if incompatible.unexpected_keys or set(incompatible.missing_keys) - pooler_keys:
        raise RuntimeError(
            f"cannot export the {type(backbone).__name__} backbone as {type(exported).__name__}: missing keys "
            f"{incompatible.missing_keys}, unexpected keys {incompatible.unexpected_keys}"
        )
    if pooler_keys:
        with torch.no_grad():
            pooler.dense.weight.copy_(torch.eye(*pooler.dense.weight.shape))
            pooler.dense.bias.zero_()
    exported.save_pretrained(save_directory)

    if image_processor is not None:
        image_processor.save_pretrained(save_directory)
        return str(save_directory)
    if image_size is None:
        config_image_size = getattr(export_config, "image_size", None) or 224
        image_size = config_image_size if isinstance(config_image_size, int) else int(config_image_size[0])
    image_processor = build_image_processor(
        export_config.model_type,
        image_size=image_size,
        image_mean=list(image_mean if image_mean is not None else IMAGENET_DEFAULT_MEAN),
        image_std=list(image_std if image_std is not None else IMAGENET_DEFAULT_STD),
    )
    image_processor.save_pretrained(save_directory)
    return str(save_directory)
