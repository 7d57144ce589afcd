"""SimCLR (Chen et al., 2020, arXiv:2002.05709) on top of any transformers vision backbone.

- `SimClrProjectionHead`: the MLP between the backbone embedding and the contrastive loss.
- `SimClrModel` (`AutoModel`): the backbone alone, for feature extraction and k-NN evaluation.
- `SimClrForPreTraining` (`AutoModelForPreTraining`): backbone, projection head and `NTXentLoss`; what the trainer
  optimises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.utils import ModelOutput, can_return_tuple

from ..backbone import (
    backbone_forward_kwargs,
    build_backbone,
    get_backbone_embed_dim,
    get_backbone_features,
)
from ..heads import MlpHead
from ..modeling_ssl import SslFeatureModel, SslPreTrainedModel, check_two_views, init_head_module
from .configuration_simclr import SimClrConfig
from .loss_simclr import NTXentLoss

# ---------------------------------------------------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------------------------------------------------


class SimClrProjectionHead(MlpHead):
    r"""SimCLR projection head g(.): `num_layers` linear layers, each hidden one followed by BatchNorm (optional)
    and ReLU; the output layer has neither, as in lightly's `SimCLRProjectionHead`. A linear layer followed by
    BatchNorm has no bias (the BatchNorm shift replaces it). Built by `hf_ssl.models.heads.build_mlp`.

    `num_layers=2` is SimCLR v1's Linear-BN-ReLU-Linear, `3` SimCLR v2's deeper head, `1` a linear projection.

    Input (N, in_dim) backbone embeddings -> output (N, out_dim) projections (not normalised: the loss does it).
    """

    def __init__(
        self, in_dim: int, out_dim: int = 128, hidden_dim: int = 2048, num_layers: int = 2, use_bn: bool = True
    ):
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be >= 1, got {num_layers}")
        super().__init__([in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim], batch_norm=use_bn)


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained models
# ---------------------------------------------------------------------------------------------------------------------


class SimClrPreTrainedModel(SslPreTrainedModel):
    """Shared base: config class and weight init of the SimCLR modules.

    `SimClrForPreTraining` and `SimClrModel` both keep the backbone under `backbone.`, so checkpoints of one load
    into the other key for key; `base_model_prefix = "simclr"` names no module and makes transformers add or strip
    no prefix.
    """

    config_class = SimClrConfig
    base_model_prefix = "simclr"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only our own modules reach here: transformers hands every backbone (itself a PreTrainedModel) and its
        # submodules to the backbone's own `_init_weights`.
        init_head_module(module)


@dataclass
class SimClrForPreTrainingOutput(ModelOutput):
    """
    Output of `SimClrForPreTraining.forward`. Everything but `loss` is detached, for logging.

    Args:
        loss: scalar NT-Xent loss (float32).
        positive_similarity: mean cosine similarity of the two projections of each image.
        negative_similarity: mean cosine similarity between projections of different images (all global
            negatives of this process's rows). Near `positive_similarity`: the projections do not tell images apart.
        accuracy: fraction of rows whose other view has the highest logit among all 2N - 1 global candidates.
        embedding_std: std over the batch of the L2-normalised backbone embeddings, averaged over dims:
            ~0 for a collapsed backbone, ~1/sqrt(D) for embeddings spread uniformly on the sphere.
        embeddings: the backbone embeddings of both views, (2 * B, D), view-major, detached: the trainers measure
            their effective rank and mean L2 norm when they log.
    """

    loss: torch.FloatTensor | None = None
    positive_similarity: torch.FloatTensor | None = None
    negative_similarity: torch.FloatTensor | None = None
    accuracy: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


class SimClrModel(SslFeatureModel, SimClrPreTrainedModel):
    r"""The SimCLR backbone alone: what `AutoModel` returns for a SimCLR checkpoint. Use it for features, k-NN
    evaluation or fine-tuning. Its outputs follow the convention of every hf_ssl feature model
    (`hf_ssl.models.modeling_ssl`): `pooler_output` (B, D) is the embedding SimCLR trains (the pooled feature map
    for CNNs, the final-normed CLS token for transformers), `last_hidden_state` the backbone's own, exactly as the
    exported plain backbone returns it.

    Loading a `SimClrForPreTraining` checkpoint picks its `backbone.*` tensors; the projection head is skipped
    without warnings (`_keys_to_ignore_on_load_unexpected`).
    """

    _keys_to_ignore_on_load_unexpected = [r"^projection_head\."]

    @staticmethod
    def feature_backbone_config(config: SimClrConfig) -> PretrainedConfig:
        return config.feature_backbone_config()


class SimClrForPreTraining(SimClrPreTrainedModel):
    r"""SimCLR: one backbone and projection head applied to two augmented views of each image, trained with the
    NT-Xent loss (`NTXentLoss`) to pick each view's partner among the other views of the global batch.

    The backbone uses `config.drop_path_rate` where it supports drop path. Checkpoints (`save_pretrained`) hold
    the backbone (`backbone.`) and the projection head (`projection_head.`); `evaluation_backbone()` (k-NN,
    `export_backbone`) is the backbone.
    """

    main_input_name = "views"
    evaluation_backbone_prefix = "backbone."

    def __init__(self, config: SimClrConfig):
        super().__init__(config)
        backbone_config = config.backbone_config_for_training()
        self.backbone = build_backbone(backbone_config)
        self.backbone_forward_kwargs = backbone_forward_kwargs(type(self.backbone))
        self.projection_head = SimClrProjectionHead(
            in_dim=get_backbone_embed_dim(backbone_config),
            out_dim=config.projection_dim,
            hidden_dim=config.projection_hidden_dim,
            num_layers=config.projection_num_layers,
            use_bn=config.projection_use_bn,
        )
        self.loss = NTXentLoss(config.temperature)
        self.post_init()

    @can_return_tuple
    def forward(self, views: torch.Tensor) -> SimClrForPreTrainingOutput | tuple:
        r"""
        Args:
            views: (2, B, C, H, W) float, normalised: the two augmented views of each image, view-major (as
                `ViewCropCollator` stacks global crops); `views[0, i]` and `views[1, i]` are the same image.

        The backbone runs once on all 2B views (so BatchNorm normalises over both views together) and the
        projection head once on all embeddings.

        Returns:
            `SimClrForPreTrainingOutput`.
        """
        batch_size = check_two_views(views)

        embeddings, _ = get_backbone_features(self.backbone, views.flatten(0, 1), self.backbone_forward_kwargs)
        projections = self.projection_head(embeddings)  # (2B, P): view a of every image, then view b
        contrastive = self.loss.forward_with_statistics(projections[:batch_size], projections[batch_size:])
        with torch.no_grad():
            embedding_std = F.normalize(embeddings.float(), dim=-1).std(dim=0).mean()

        output = SimClrForPreTrainingOutput(
            loss=contrastive.loss,
            positive_similarity=contrastive.positive_similarity,
            negative_similarity=contrastive.negative_similarity,
            accuracy=contrastive.accuracy,
            embedding_std=embedding_std,
            embeddings=embeddings.detach(),
        )
        return output

    def evaluation_backbone_config(self) -> PretrainedConfig:
        """The backbone's config with drop path 0, as `SimClrModel` builds it and `export_backbone` exports it (the
        training backbone's config carries `config.drop_path_rate`)."""
        return self.config.feature_backbone_config()


# The names before transformers' spelling (`ForPreTraining`), for code that imports them: the same classes. A
# checkpoint saved under the old name (`"architectures": ["SimClrForPretraining"]`) loads by its model_type.
SimClrForPretraining = SimClrForPreTraining
SimClrForPretrainingOutput = SimClrForPreTrainingOutput
