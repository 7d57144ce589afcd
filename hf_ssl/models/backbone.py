"""Transformers vision backbones as every hf_ssl method uses them.

- ``build_backbone``: the transformers base model of a backbone config (ViT, DeiT, Dinov2, IJepa, ResNet, ConvNext...).
- ``get_backbone_features``: its output split into the global embedding a method trains and evaluates on
  (``pooler_output`` of every hf_ssl feature model) and the patch tokens.
- ``check_input_sizes``: image sizes checked against the backbone before training.
- ``export_backbone``: a trained backbone saved as the plain transformers model that ``AutoModel`` builds, with
  its image processor, so it loads without hf_ssl.
- ``resolve_backbone_config`` / ``backbone_config_for_training``: the nested ``backbone_config`` of a method config.
"""

from __future__ import annotations

import copy
import inspect
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .image_processing import build_image_processor




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
        pixel_values: (B, 3, H, W). Any H, W the backbone accepts: ViT-like models interpolate their position
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
        if image_size and model_class is not None and "interpolate_pos_encoding" in inspect.signature(model_class.forward).parameters
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



# ----------------------------------------------------------------------------------------------------------------------
# Backbone configs
# ----------------------------------------------------------------------------------------------------------------------


def resolve_backbone_config(backbone_config, default_model_type: str, default_kwargs: dict, owner: type) -> PretrainedConfig:
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


# ----------------------------------------------------------------------------------------------------------------------
# Export to a plain transformers model
# ----------------------------------------------------------------------------------------------------------------------


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

    ``transformers.AutoModel.from_pretrained(save_directory)`` and ``AutoImageProcessor.from_pretrained(save_directory)``
    then load it without hf_ssl. Models that ``AutoModel`` builds with a pooling layer (ViT, DeiT) get an identity
    pooler (weight I, bias 0, ``pooler_act="linear"``), so their ``pooler_output`` is the CLS embedding the method
    trained, the ``pooler_output`` of the hf_ssl feature model, and loading reports no missing weights.

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
