"""BYOL (Grill et al., 2020, arXiv:2006.07733) on top of any transformers vision backbone.

- `ByolMlp`: the projector and the predictor (Linear-BN-ReLU-Linear).
- `ByolNetwork`: backbone + projector; the online and the target network are two instances of it, so their
  parameter names match and the EMA (`hf_ssl.training.optim.ema.ema_update_`) pairs them by name.
- `ByolModel` (`AutoModel`): the online backbone alone, for feature extraction and k-NN evaluation.
- `ByolForPreTraining` (`AutoModelForPreTraining`): online network, predictor, EMA target network and `ByolLoss`;
  what the trainer optimises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from ..backbone import backbone_forward_kwargs, build_backbone, get_backbone_embed_dim, get_backbone_features
from ..heads import MlpHead
from ..modeling_ssl import SslFeatureModel, SslPreTrainedModel, check_two_views, init_head_module, named_tensors
from .configuration_byol import ByolConfig
from .loss_byol import ByolLoss

# ---------------------------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------------------------


class ByolMlp(MlpHead):
    r"""BYOL's projector and predictor (Grill et al., 2020, Sec. 3.3): Linear, BatchNorm, ReLU, Linear. The hidden
    linear layer has no bias (the BatchNorm shift replaces it); the output layer has a bias and no BatchNorm.
    Built by `hf_ssl.models.heads.build_mlp`.

    Input (N, in_dim) -> output (N, out_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__([in_dim, hidden_dim, out_dim])


class ByolNetwork(nn.Module):
    """Backbone + projector. The online and the target network are two instances, so parameter names match."""

    def __init__(self, backbone_config: PretrainedConfig, config: ByolConfig):
        super().__init__()
        self.backbone = build_backbone(backbone_config)
        self.backbone_forward_kwargs = backbone_forward_kwargs(type(self.backbone))
        embed_dim = get_backbone_embed_dim(backbone_config)
        self.projector = ByolMlp(embed_dim, config.projection_hidden_dim, config.projection_dim)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            pixel_values: (B, C, H, W), one view of each image.

        Returns:
            embeddings (B, D): the backbone's global embeddings.
            projections (B, projection_dim): the projector's output.
        """
        embeddings, _ = get_backbone_features(self.backbone, pixel_values, self.backbone_forward_kwargs)
        return embeddings, self.projector(embeddings)


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained models
# ---------------------------------------------------------------------------------------------------------------------


class ByolPreTrainedModel(SslPreTrainedModel):
    """Shared base: config class, weight init of the BYOL modules, and how checkpoints map onto the base model.

    `base_model_prefix = "online"`: `ByolForPreTraining` keeps its online backbone under `online.backbone.`, while
    `ByolModel` keeps the same backbone under `backbone.`; when `ByolModel` loads a `ByolForPreTraining`
    checkpoint, transformers strips the `online.` prefix, so it gets the online backbone.
    """

    config_class = ByolConfig
    base_model_prefix = "online"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only our own modules reach here: transformers hands every backbone (itself a PreTrainedModel) and its
        # submodules to the backbone's own `_init_weights`.
        init_head_module(module)


@dataclass
class ByolForPreTrainingOutput(ModelOutput):
    """
    Output of `ByolForPreTraining.forward`. Everything but `loss` is detached, for logging.

    Args:
        loss: scalar BYOL loss (float32), in [0, 4]: 2 - 2 x the mean cosine similarity of predictions and targets.
        embedding_std: std over the batch of the L2-normalised online backbone embeddings, averaged over dims:
            ~0 for a collapsed backbone, ~1/sqrt(D) for embeddings spread uniformly on the sphere.
        target_projection_std: the same measure on the target projections. Near 0 while the loss is near 0: the
            target network collapsed to a constant, the failure BYOL's predictor and EMA are there to prevent.
        embeddings: the online backbone embeddings of both views, (2 * B, D), view-major, detached: the trainers
            measure their effective rank and mean L2 norm when they log.
    """

    loss: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    target_projection_std: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


class ByolModel(SslFeatureModel, ByolPreTrainedModel):
    r"""The BYOL online backbone alone: what `AutoModel` returns for a BYOL checkpoint. Use it for features, k-NN
    evaluation or fine-tuning. Its outputs follow the convention of every hf_ssl feature model
    (`hf_ssl.models.modeling_ssl`): `pooler_output` (B, D) is the embedding BYOL trains (the pooled feature map for
    CNNs, the final-normed CLS token for transformers), `last_hidden_state` the backbone's own, exactly as the
    exported plain backbone returns it.

    Loading a `ByolForPreTraining` checkpoint picks its `online.backbone.*` tensors; the projector, the predictor
    and the target network are skipped without warnings (`_keys_to_ignore_on_load_unexpected`).
    """

    _keys_to_ignore_on_load_unexpected = [r"^target\.", r"^predictor\.", r"^(online\.)?projector\."]

    @staticmethod
    def feature_backbone_config(config: ByolConfig) -> PretrainedConfig:
        return config.feature_backbone_config()


class ByolForPreTraining(ByolPreTrainedModel):
    r"""BYOL: an online network (backbone, projector, predictor) learns to predict, from one view of an image, the
    target network's projection of another view; the target network (backbone, projector) is an exponential moving
    average of the online one.

    - The target starts as an exact copy of the online backbone and projector and never gets gradients
      (`requires_grad=False`); the trainer moves it with `ema_update_(*model.teacher_student_parameter_pairs(), m)`,
      m on a cosine from `training.teacher_momentum` to 1. Its BatchNorm statistics are its own (buffers are not
      averaged, as in lightly).
    - The online backbone uses `config.drop_path_rate` where it supports drop path; the target none.
    - `evaluation_backbone()` (k-NN, `export_backbone`, `ByolModel`) is the online backbone, as in the paper (and
      lightly), which evaluates the online encoder.
    - Checkpoints (`save_pretrained`) hold the online network (`online.`), the predictor (`predictor.`) and the
      target network (`target.`).
    """

    main_input_name = "views"
    evaluation_backbone_prefix = "online.backbone."
    backbone_module_names = ("online.backbone", "target.backbone")

    def __init__(self, config: ByolConfig):
        super().__init__(config)
        self.online = ByolNetwork(config.backbone_config_for_training(), config)
        self.target = ByolNetwork(config.feature_backbone_config(), config)
        self.predictor = ByolMlp(config.projection_dim, config.prediction_hidden_dim, config.projection_dim)
        self.loss = ByolLoss()
        self.target.requires_grad_(False)
        self.post_init()

    def initialize_weights(self) -> None:
        """Initialise every module, then make the target network an exact copy of the online one (as BYOL starts).

        transformers calls this at construction and again after `from_pretrained` for weights the checkpoint
        lacks; the guarded `init.copy_` leaves loaded target tensors untouched, and a target missing from the
        checkpoint starts from the loaded online network.
        """
        super().initialize_weights()
        with torch.no_grad():
            online_tensors = named_tensors(self.online)
            for name, target_tensor in named_tensors(self.target).items():
                init.copy_(target_tensor, online_tensors[name])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # transformers loads every weight as a fresh `requires_grad=True` parameter: freeze the target again.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.target.requires_grad_(False)
        return loaded

    @can_return_tuple
    def forward(self, views: torch.Tensor) -> ByolForPreTrainingOutput | tuple:
        r"""
        Args:
            views: (2, B, C, H, W) float, normalised: the two augmented views of each image, view-major;
                `views[0, i]` and `views[1, i]` are the same image.

        Each view goes through each network in a pass of its own, as in the official implementation, so BatchNorm
        normalises each view over the batch separately (in training, B must be at least 2). The target network
        runs without gradient.

        Returns:
            `ByolForPreTrainingOutput`.
        """
        check_two_views(
            views,
            2 if self.training else 1,
            "BYOL needs at least 2 images per batch in training: its BatchNorm layers normalise each view over the "
            "batch",
        )

        embeddings_a, projections_a = self.online(views[0])
        embeddings_b, projections_b = self.online(views[1])
        predictions_a, predictions_b = self.predictor(projections_a), self.predictor(projections_b)
        with torch.no_grad():
            _, targets_a = self.target(views[0])
            _, targets_b = self.target(views[1])
        loss = self.loss(predictions_a, predictions_b, targets_a, targets_b)

        with torch.no_grad():
            embeddings = torch.cat([embeddings_a, embeddings_b]).detach()
            embedding_std = F.normalize(embeddings.float(), dim=-1).std(dim=0).mean()
            target_projection_std = F.normalize(torch.cat([targets_a, targets_b]).float(), dim=-1).std(dim=0).mean()

        output = ByolForPreTrainingOutput(
            loss=loss, embedding_std=embedding_std, target_projection_std=target_projection_std, embeddings=embeddings
        )
        return output

    def teacher_student_parameter_pairs(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(target parameters, online parameters), aligned by name, for the EMA update: the backbones and the
        projectors (the predictor has no target counterpart). Parameters only: BatchNorm statistics are not
        averaged."""
        target_named = dict(self.target.named_parameters())
        online_named = dict(self.online.named_parameters())
        if target_named.keys() != online_named.keys():
            raise RuntimeError(
                f"online and target parameter names differ: {sorted(target_named.keys() ^ online_named.keys())}"
            )
        names = list(target_named)
        return [target_named[name] for name in names], [online_named[name] for name in names]

    def evaluation_backbone(self):
        """The online backbone: BYOL evaluates (k-NN) and exports the online encoder, as the paper does."""
        return self.online.backbone

    def evaluation_backbone_config(self) -> PretrainedConfig:
        """The backbone's config with drop path 0, as `ByolModel` builds it and `export_backbone` exports it."""
        return self.config.feature_backbone_config()


# The names before transformers' spelling (`ForPreTraining`), for code that imports them: the same classes. A
# checkpoint saved under the old name (`"architectures": ["ByolForPretraining"]`) loads by its model_type.
ByolForPretraining = ByolForPreTraining
ByolForPretrainingOutput = ByolForPreTrainingOutput
