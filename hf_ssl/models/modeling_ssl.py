"""What every hf_ssl method model shares: the ``PreTrainedModel`` base and the feature model.

- ``SslPreTrainedModel``: base of a method's pretraining model (``AutoModelForPreTraining``) and feature model
  (``AutoModel``). A pretraining model names, with ``evaluation_backbone()``, the network whose features k-NN
  measures and that ``export_backbone`` writes (DINO: the teacher backbone; SimCLR: the backbone).
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

import os

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .backbone import backbone_forward_kwargs, build_backbone, export_backbone, split_backbone_output


class SslPreTrainedModel(PreTrainedModel):
    """Base of every hf_ssl model: images in, no token embeddings, attention implementation passed through to the
    backbone. Subclasses set ``config_class`` and ``base_model_prefix`` and implement ``evaluation_backbone``."""

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

    def get_input_embeddings(self) -> None:
        # Images, no token embeddings (accelerate's FSDP2 preparation asks; transformers' default would raise).
        return None

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
            self.evaluation_backbone(), save_directory, image_size=image_size, image_mean=image_mean,
            image_std=image_std, image_processor=image_processor, config=self.evaluation_backbone_config(),
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

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            pixel_values: (B, 3, H, W), normalised as the image processor saved beside the model does.
            output_hidden_states: also return the backbone's hidden states.

        Returns:
            `BaseModelOutputWithPooling` (see the module docstring): `pooler_output` (B, D) the method's embedding,
            `last_hidden_state` the backbone's own (what the exported model returns), `hidden_states` when asked.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        backbone_kwargs = dict(self.backbone_forward_kwargs)
        if output_hidden_states is not None:
            backbone_kwargs["output_hidden_states"] = output_hidden_states
        outputs = self.backbone(pixel_values=pixel_values, **backbone_kwargs)
        embedding, _ = split_backbone_output(self.backbone, outputs)
        output = BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state, pooler_output=embedding, hidden_states=outputs.hidden_states
        )
        return output if return_dict else output.to_tuple()


def named_tensors(network: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers of ``network`` by name."""
    return {**dict(network.named_parameters()), **dict(network.named_buffers())}
