"""What every hf_ssl method model shares: the ``PreTrainedModel`` base and the feature model.

- ``SslPreTrainedModel``: base of a method's pretraining model (``AutoModelForPreTraining``) and feature model
  (``AutoModel``). A pretraining model names, with ``evaluation_backbone()``, the network whose features k-NN
  measures and that ``export_backbone`` writes (DINO: the teacher backbone; SimCLR: the backbone), and with
  ``backbone_module_names`` every transformers backbone it trains, which ``from_pretrained_backbone`` fills.
- ``SslFeatureModel``: the evaluated backbone alone, for features, k-NN or fine-tuning.

The feature convention, the same for every method and for the exported plain transformers model:

- ``pooler_output`` (B, D) is the embedding the method trains and is evaluated on: the final-normed CLS token for
  ViT-like backbones, the pooled last feature map for CNNs, the mean of the patch tokens for backbones without a
  CLS token (IJepa). The exported ViT / DeiT gets an identity pooler, so its ``pooler_output`` is the same CLS token;
  an exported ResNet returns it as (B, D, 1, 1); an exported IJepa has no pooler (take the mean of
  ``last_hidden_state`` yourself).
- ``last_hidden_state`` is the backbone's own, unchanged: (B, 1 + registers + N, D) tokens for ViT-like backbones
  (CLS first), the (B, C, h, w) feature map for CNNs; exactly what the exported model returns.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple

from .backbone import (
    backbone_forward_kwargs,
    build_backbone,
    export_backbone,
    load_pretrained_backbone,
    pretrained_backbone_config,
    split_backbone_output,
)


class SslPreTrainedModel(PreTrainedModel):
    """Base of every hf_ssl model: images in, no token embeddings, attention implementation passed through to the
    backbone. Subclasses set ``config_class`` and ``base_model_prefix`` and implement ``evaluation_backbone``.

    Every ``forward`` returns a ``ModelOutput``, or its ``to_tuple()`` when called with ``return_dict=False`` (a
    keyword) or when ``config.return_dict`` is False: transformers' ``can_return_tuple`` decides, as for its models."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True  # applies to the backbone layers (ViT-like backbones support it)
    # We run no attention ourselves: these let `attn_implementation=...` pass through to the backbone, which checks
    # its own support (e.g. `attn_implementation="eager"` to get attention maps).
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    # where evaluation_backbone() sits in this model's state dict, e.g. "teacher.backbone." (FSDP gathers by name)
    evaluation_backbone_prefix = "backbone."
    # module names of every transformers backbone this model holds, EMA copies included, e.g. ("student.backbone",
    # "teacher.backbone"): `from_pretrained_backbone` fills each of them
    backbone_module_names: tuple[str, ...] = ("backbone",)

    def get_input_embeddings(self) -> None:
        # Images, no token embeddings (accelerate's FSDP2 preparation asks; transformers' default would raise).
        return None

    def backbones(self) -> dict[str, PreTrainedModel]:
        """Every transformers backbone of this model by module name (``backbone_module_names``). Raises a
        ``RuntimeError`` when the model holds a transformers model the names leave out: a pretrained backbone would
        then fill the student and leave its EMA teacher random."""
        backbones = {name: self.get_submodule(name) for name in self.backbone_module_names}
        left_out = [
            name
            for name, module in self.named_modules()
            if name
            and isinstance(module, PreTrainedModel)
            and name not in backbones
            and not any(name.startswith(f"{listed}.") for listed in backbones)
        ]
        if left_out:
            raise RuntimeError(
                f"{type(self).__name__} holds transformers models {left_out} that backbone_module_names "
                f"{self.backbone_module_names} leaves out: list every backbone of the method there"
            )
        return backbones

    @classmethod
    def from_pretrained_backbone(
        cls, name_or_path: str | os.PathLike, backbone_config: dict | None = None, **config_kwargs
    ) -> SslPreTrainedModel:
        """A new model of this method whose every backbone (student and EMA teacher alike) starts from the plain
        transformers vision model ``name_or_path``, a Hub id or a local folder; heads and predictors are initialised
        as usual. ``SimClrForPreTraining.from_pretrained_backbone("microsoft/resnet-50", projection_dim=128)``.

        Args:
            name_or_path: what ``AutoModel.from_pretrained`` loads (offline, a Hub id resolves from the local cache).
            backbone_config: backbone keys to change, e.g. ``{"num_channels": 4}`` (the RGB first layer is adapted,
                see ``hf_ssl.models.backbone.adapt_input_channels``) or ``{"image_size": 224}`` (the position
                embeddings are resampled); architecture keys must equal the pretrained model's.
            config_kwargs: the other arguments of the method's config (head sizes, loss settings...).

        See ``hf_ssl.models.backbone.load_pretrained_backbone`` for what is loaded and what raises.
        """
        backbone_config = pretrained_backbone_config(name_or_path, backbone_config)
        model = cls(cls.config_class(backbone_config=backbone_config, **config_kwargs))
        load_pretrained_backbone(model, name_or_path)
        return model

    def evaluation_backbone(self) -> PreTrainedModel:
        """The transformers backbone whose ``pooler_output`` k-NN measures and ``export_backbone`` saves."""
        return self.backbone

    def evaluation_backbone_config(self):
        """The config ``build_backbone`` rebuilds ``evaluation_backbone()`` from (an unsharded float32 copy)."""
        return self.evaluation_backbone().config

    def export_backbone(
        self,
        save_directory: str | os.PathLike,
        image_size: int | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        image_processor=None,
    ) -> str:
        """Save ``evaluation_backbone()`` under ``evaluation_backbone_config()`` as a plain transformers model with
        its image processor (``hf_ssl.models.backbone.export_backbone``): it then loads with
        ``AutoModel.from_pretrained`` without hf_ssl and returns the embedding of this model in ``pooler_output``."""
        return export_backbone(
            self.evaluation_backbone(),
            save_directory,
            image_size=image_size,
            image_mean=image_mean,
            image_std=image_std,
            image_processor=image_processor,
            config=self.evaluation_backbone_config(),
        )


class SslFeatureModel(SslPreTrainedModel):
    """The evaluated backbone of a method alone (``AutoModel``), under ``backbone.``; subclasses give the
    ``config_class``, the backbone config (``feature_backbone_config``) and which pretraining keys to skip."""

    def __init__(self, config):
        super().__init__(config)
        self.backbone = build_backbone(self.feature_backbone_config(config))
        self.backbone_forward_kwargs = backbone_forward_kwargs(type(self.backbone))
        self.post_init()

    @staticmethod
    def feature_backbone_config(config):
        return config.backbone_config

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) (C = the backbone's num_channels: 3 for RGB), normalised as the image processor
                saved beside the model does.
            output_hidden_states: also return the backbone's hidden states.

        Returns:
            `BaseModelOutputWithPooling` (see the module docstring): `pooler_output` (B, D) the method's embedding,
            `last_hidden_state` the backbone's own (what the exported model returns), `hidden_states` when asked.
        """
        backbone_kwargs = dict(self.backbone_forward_kwargs)
        if output_hidden_states is not None:
            backbone_kwargs["output_hidden_states"] = output_hidden_states
        outputs = self.backbone(pixel_values=pixel_values, **backbone_kwargs)
        embedding, _ = split_backbone_output(self.backbone, outputs)
        output = BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state, pooler_output=embedding, hidden_states=outputs.hidden_states
        )
        return output


def named_tensors(network: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers of ``network`` by name."""
    return {**dict(network.named_parameters()), **dict(network.named_buffers())}


def init_head_module(module: nn.Module) -> None:
    """PyTorch's default init for a Linear layer of a method's own head (Kaiming-uniform weight with a = sqrt(5),
    uniform bias in +-1/sqrt(fan_in)) and identity BatchNorm; other modules are left alone. The projection heads of
    SimCLR, BYOL and VICReg train with it, as lightly's and the official code do. Uses transformers' init
    functions, which skip tensors that ``from_pretrained`` already loaded."""
    if isinstance(module, nn.Linear):
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            bound = 1.0 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, nn.BatchNorm1d):
        init_batch_norm(module)


def init_batch_norm(module: nn.BatchNorm1d) -> None:
    """A head's BatchNorm as PyTorch builds it: the identity (weight 1, bias 0) and fresh running statistics."""
    init.ones_(module.weight)
    init.zeros_(module.bias)
    init.zeros_(module.running_mean)
    init.ones_(module.running_var)
    init.zeros_(module.num_batches_tracked)


def check_two_views(views: torch.Tensor, min_batch_size: int = 1, why: str = "") -> int:
    """The batch size B of ``views``, the ``(2, B, C, H, W)`` float views of a two-view method, or a ``ValueError``
    saying what is wrong (``why``: the reason a batch needs ``min_batch_size`` images)."""
    if views.ndim != 5 or views.shape[0] != 2 or views.shape[1] < 1:
        raise ValueError(
            f"views must be (2, batch, channels, H, W): the two views of at least one image, view-major; got "
            f"shape {tuple(views.shape)}"
        )
    if views.shape[1] < min_batch_size:
        raise ValueError(f"{why} (raise training.per_device_train_batch_size); got {views.shape[1]} image(s)")
    if not views.is_floating_point():
        raise ValueError(
            f"views must be a float tensor normalised for the backbone, got dtype {views.dtype} (uint8 crops "
            "go through the device augmentation first)"
        )
    return views.shape[1]
