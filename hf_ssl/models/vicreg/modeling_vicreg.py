"""VICReg (Bardes et al., 2022, arXiv:2105.04906) on top of any transformers vision backbone.

- `VicRegExpander`: the MLP between the backbone embedding and the loss.
- `VicRegModel` (`AutoModel`): the backbone alone, for feature extraction and k-NN evaluation.
- `VicRegForPreTraining` (`AutoModelForPreTraining`): backbone, expander and `VicRegLoss`; what the trainer optimises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.utils import ModelOutput, can_return_tuple

from ..backbone import backbone_forward_kwargs, build_backbone, get_backbone_embed_dim, get_backbone_features
from ..heads import MlpHead
from ..modeling_ssl import SslFeatureModel, SslPreTrainedModel, check_two_views, init_head_module
from .configuration_vicreg import VicRegConfig
from .loss_vicreg import VicRegLoss

# ---------------------------------------------------------------------------------------------------------------------
# Expander
# ---------------------------------------------------------------------------------------------------------------------


class VicRegExpander(MlpHead):
    r"""VICReg's expander: one linear layer per size of `dims`, each but the last followed by BatchNorm and ReLU.
    No linear layer has a bias, as in the official code's last layer: a hidden layer's bias is replaced by the
    BatchNorm shift, and the last layer's would get no gradient (every term of the loss is unchanged by a shift of
    all embeddings). Built by `hf_ssl.models.heads.build_mlp`.

    Input (N, in_dim) backbone embeddings -> output (N, dims[-1]) expanded embeddings.
    """

    def __init__(self, in_dim: int, dims: Sequence[int]):
        if not dims:
            raise ValueError("`dims` must hold at least one layer size")
        super().__init__([in_dim, *dims], output_bias=False)


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained models
# ---------------------------------------------------------------------------------------------------------------------


class VicRegPreTrainedModel(SslPreTrainedModel):
    """Shared base: config class and weight init of the VICReg modules.

    `VicRegForPreTraining` and `VicRegModel` both keep the backbone under `backbone.`, so checkpoints of one load
    into the other key for key; `base_model_prefix = "vicreg"` names no module and makes transformers add or strip
    no prefix.
    """

    config_class = VicRegConfig
    base_model_prefix = "vicreg"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only our own modules reach here: transformers hands every backbone (itself a PreTrainedModel) and its
        # submodules to the backbone's own `_init_weights`.
        init_head_module(module)


@dataclass
class VicRegForPreTrainingOutput(ModelOutput):
    """
    Output of `VicRegForPreTraining.forward`. Everything but `loss` is detached, for logging.

    Args:
        loss: scalar VICReg loss (float32), the weighted sum of the three terms over the global batch.
        invariance: the invariance term (unweighted): mean squared difference of the two views' embeddings.
        variance: the variance term (unweighted), in [0, 1]: 1 when every expanded dimension has collapsed.
        covariance: the covariance term (unweighted): squared off-diagonal covariances / D, both views summed.
        embedding_std: std over the batch of the L2-normalised backbone embeddings, averaged over dims:
            ~0 for a collapsed backbone, ~1/sqrt(D) for embeddings spread uniformly on the sphere.
        embeddings: the backbone embeddings of both views, (2 * B, D), view-major, detached: the trainers measure
            their effective rank and mean L2 norm when they log.
    """

    loss: torch.FloatTensor | None = None
    invariance: torch.FloatTensor | None = None
    variance: torch.FloatTensor | None = None
    covariance: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


class VicRegModel(SslFeatureModel, VicRegPreTrainedModel):
    r"""The VICReg backbone alone: what `AutoModel` returns for a VICReg checkpoint. Use it for features, k-NN
    evaluation or fine-tuning. Its outputs follow the convention of every hf_ssl feature model
    (`hf_ssl.models.modeling_ssl`): `pooler_output` (B, D) is the embedding VICReg trains (the pooled feature map
    for CNNs, the final-normed CLS token for transformers), `last_hidden_state` the backbone's own, exactly as the
    exported plain backbone returns it.

    Loading a `VicRegForPreTraining` checkpoint picks its `backbone.*` tensors; the expander is skipped without
    warnings (`_keys_to_ignore_on_load_unexpected`).
    """

    _keys_to_ignore_on_load_unexpected = [r"^expander\."]

    @staticmethod
    def feature_backbone_config(config: VicRegConfig) -> PretrainedConfig:
        return config.feature_backbone_config()


class VicRegForPreTraining(VicRegPreTrainedModel):
    r"""VICReg: one backbone and expander applied to two augmented views of each image, trained with `VicRegLoss` to
    make the two views' embeddings agree (invariance) while every dimension keeps a spread over the global batch
    (variance) and the dimensions stay decorrelated (covariance).

    The backbone uses `config.drop_path_rate` where it supports drop path. Checkpoints (`save_pretrained`) hold
    the backbone (`backbone.`) and the expander (`expander.`); `evaluation_backbone()` (k-NN, `export_backbone`)
    is the backbone.
    """

    main_input_name = "views"
    evaluation_backbone_prefix = "backbone."

    def __init__(self, config: VicRegConfig):
        super().__init__(config)
        backbone_config = config.backbone_config_for_training()
        self.backbone = build_backbone(backbone_config)
        self.backbone_forward_kwargs = backbone_forward_kwargs(type(self.backbone))
        self.expander = VicRegExpander(get_backbone_embed_dim(backbone_config), config.expander_dims)
        self.loss = VicRegLoss(
            invariance_weight=config.invariance_weight,
            variance_weight=config.variance_weight,
            covariance_weight=config.covariance_weight,
            variance_epsilon=config.variance_epsilon,
        )
        self.post_init()

    @can_return_tuple
    def forward(self, views: torch.Tensor) -> VicRegForPreTrainingOutput | tuple:
        r"""
        Args:
            views: (2, B, C, H, W) float, normalised: the two augmented views of each image, view-major;
                `views[0, i]` and `views[1, i]` are the same image.

        Each view goes through the backbone and the expander in a pass of its own, as in the official code, so
        BatchNorm normalises each view over the batch separately (in training, B must be at least 2).

        Returns:
            `VicRegForPreTrainingOutput`.
        """
        check_two_views(
            views,
            2 if self.training else 1,
            "VICReg needs at least 2 images per batch in training: the expander's BatchNorm layers normalise each "
            "view over the batch",
        )

        embeddings_a, _ = get_backbone_features(self.backbone, views[0], self.backbone_forward_kwargs)
        embeddings_b, _ = get_backbone_features(self.backbone, views[1], self.backbone_forward_kwargs)
        terms = self.loss.forward_with_statistics(self.expander(embeddings_a), self.expander(embeddings_b))
        with torch.no_grad():
            embeddings = torch.cat([embeddings_a, embeddings_b]).detach()
            embedding_std = F.normalize(embeddings.float(), dim=-1).std(dim=0).mean()

        output = VicRegForPreTrainingOutput(
            loss=terms.loss,
            invariance=terms.invariance,
            variance=terms.variance,
            covariance=terms.covariance,
            embedding_std=embedding_std,
            embeddings=embeddings,
        )
        return output

    def evaluation_backbone_config(self) -> PretrainedConfig:
        """The backbone's config with drop path 0, as `VicRegModel` builds it and `export_backbone` exports it."""
        return self.config.feature_backbone_config()


# The names before transformers' spelling (`ForPreTraining`), for code that imports them: the same classes. A
# checkpoint saved under the old name (`"architectures": ["VicRegForPretraining"]`) loads by its model_type.
VicRegForPretraining = VicRegForPreTraining
VicRegForPretrainingOutput = VicRegForPreTrainingOutput
