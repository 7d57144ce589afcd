"""DINO (Caron et al., 2021, arXiv:2104.14294) on top of any transformers vision backbone.

- `DinoHead`: the projection head (MLP, L2-normalised bottleneck, weight-normalised prototypes).
- `DinoNetwork`: backbone + head; the student and the teacher are two instances of it, so their parameter
  names match and the EMA (`hf_ssl.training.optim.ema.ema_update_`) pairs them by name.
- `DinoModel` (`AutoModel`): the teacher backbone alone, for feature extraction and k-NN evaluation.
- `DinoForPreTraining` (`AutoModelForPreTraining`): student, teacher and `DinoLoss`; what the trainer optimises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.parametrize import ParametrizationList, is_parametrized
from transformers import PretrainedConfig
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from ..backbone import backbone_forward_kwargs, build_backbone, get_backbone_embed_dim, get_backbone_features
from ..heads import build_mlp
from ..modeling_ssl import SslFeatureModel, SslPreTrainedModel, init_batch_norm, named_tensors
from .configuration_dino import DinoConfig
from .loss_dino import DinoLoss

# ---------------------------------------------------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------------------------------------------------


class DinoHead(nn.Module):
    r"""DINO projection head: `num_layers` linear layers (GELU between them, optional BatchNorm) down to the
    bottleneck, L2 normalisation, then a weight-normalised linear layer without bias onto the `out_dim` prototypes.

    The last layer is `torch.nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim))`: its weight is
    `g * v / ||v||` row by row, stored as `last_layer.parametrizations.weight.original0` (g, (out_dim, 1)) and
    `...original1` (v, (out_dim, bottleneck_dim)); both save and load through safetensors and `from_pretrained`.
    g starts at 1; with `norm_last_layer` it stays fixed at 1 (`requires_grad=False`), so every prototype has norm 1.

    Init as in DINO: truncated normal (std 0.02) for the MLP linears, zero biases; the last layer keeps PyTorch's
    default Linear init for v (DINO builds it after its init pass) and g = 1.

    Input (N, in_dim) -> output (N, out_dim) logits.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be >= 1, got {num_layers}")
        # DINO keeps the hidden biases under BatchNorm too (the official DINOHead does; its checkpoints have them)
        self.mlp = build_mlp(
            [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim],
            batch_norm=use_bn,
            activation=nn.GELU,
            hidden_bias=True,
        )
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.norm_last_layer = norm_last_layer
        self.last_layer_magnitude.requires_grad_(not norm_last_layer)
        self.reset_parameters()

    @property
    def last_layer_magnitude(self) -> nn.Parameter:
        """g of the weight norm, (out_dim, 1)."""
        return self.last_layer.parametrizations.weight.original0

    @property
    def last_layer_direction(self) -> nn.Parameter:
        """v of the weight norm, (out_dim, bottleneck_dim)."""
        return self.last_layer.parametrizations.weight.original1

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in self.modules():
            _init_dino_module(module)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        bottleneck = F.normalize(self.mlp(embeddings), dim=-1, p=2)
        return self.last_layer(bottleneck)


def _init_dino_module(module: nn.Module) -> None:
    """DINO's init for one of our own (non-backbone) modules; other modules are left alone.

    Uses transformers' init functions, which skip tensors that `from_pretrained` already loaded. Works leaf by
    leaf because transformers initialises module by module (a module without direct parameters, like `DinoHead`
    itself or the weight-normed `last_layer`, is never handed to `_init_weights` for custom models).
    """
    if isinstance(module, ParametrizationList) and hasattr(module, "original1"):
        # weight norm of DinoHead.last_layer: v as nn.Linear's default init (DINO builds this layer after its
        # init pass), g = 1
        init.kaiming_uniform_(module.original1, a=math.sqrt(5))
        init.ones_(module.original0)
    elif isinstance(module, nn.Linear) and not is_parametrized(module):
        init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        init_batch_norm(module)
    elif isinstance(module, DinoLoss):
        init.zeros_(module.center)
        # not saved (persistent=False), so never loaded: without this it holds whatever memory it was given
        init.zeros_(module.pending_center_statistics)


class DinoNetwork(nn.Module):
    """Backbone + `DinoHead`. The student and the teacher are two instances, so parameter names match."""

    def __init__(self, backbone_config: PretrainedConfig, config: DinoConfig):
        super().__init__()
        self.backbone = build_backbone(backbone_config)
        self.backbone_forward_kwargs = backbone_forward_kwargs(type(self.backbone))
        self.head = DinoHead(
            in_dim=get_backbone_embed_dim(backbone_config),
            out_dim=config.out_dim,
            hidden_dim=config.head_hidden_dim,
            bottleneck_dim=config.head_bottleneck_dim,
            num_layers=config.head_num_layers,
            use_bn=config.head_use_bn,
            norm_last_layer=config.norm_last_layer,
        )

    def forward(self, crops_by_resolution: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            crops_by_resolution: one (N_r, 3, H_r, W_r) tensor per crop resolution; each goes through the
                backbone in a single pass.

        Returns:
            embeddings (sum N_r, D): the backbone's global embeddings, in input order.
            logits (sum N_r, out_dim): the head output, from one head pass over all embeddings.
        """
        embeddings = torch.cat(
            [
                get_backbone_features(self.backbone, crops, self.backbone_forward_kwargs)[0]
                for crops in crops_by_resolution
            ]
        )
        return embeddings, self.head(embeddings)


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained models
# ---------------------------------------------------------------------------------------------------------------------


class DinoPreTrainedModel(SslPreTrainedModel):
    """Shared base: config class, weight init of the DINO modules, and how checkpoints map onto the base model.

    `base_model_prefix = "teacher"`: `DinoForPreTraining` keeps its teacher under `teacher.` and the teacher
    backbone under `teacher.backbone.`, while `DinoModel` keeps the same backbone under `backbone.`; when
    `DinoModel` loads a `DinoForPreTraining` checkpoint, transformers strips the `teacher.` prefix, so it gets
    the teacher backbone.
    """

    config_class = DinoConfig
    base_model_prefix = "teacher"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only our own modules reach here: transformers hands every backbone (itself a PreTrainedModel) and its
        # submodules to the backbone's own `_init_weights`.
        _init_dino_module(module)


@dataclass
class DinoForPreTrainingOutput(ModelOutput):
    """
    Output of `DinoForPreTraining.forward`. Everything but `loss` is detached, for logging.

    Args:
        loss: scalar DINO loss (float32).
        teacher_entropy: mean entropy of the centred, sharpened teacher distribution (before this step's
            center update). Near `max_entropy` = uniform collapse, near 0 = one-hot collapse.
        student_entropy: mean entropy of the student distribution over all crops.
        max_entropy: ln(out_dim), for comparison: a loss stuck at ln(out_dim) is the classic collapse.
        embedding_std: std over the batch of the L2-normalised teacher CLS embeddings, averaged over dims:
            ~0 for a collapsed backbone, ~1/sqrt(D) for embeddings spread uniformly on the sphere.
        teacher_temperature: the teacher temperature used for this step.
        center_norm: L2 norm of the center after this step.
        teacher_embeddings: the teacher CLS embeddings of the global crops, (G * B, D), detached: the trainers
            measure their effective rank and mean L2 norm when they log.
    """

    loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    student_entropy: torch.FloatTensor | None = None
    max_entropy: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    teacher_temperature: torch.FloatTensor | None = None
    center_norm: torch.FloatTensor | None = None
    teacher_embeddings: torch.FloatTensor | None = None


class DinoModel(SslFeatureModel, DinoPreTrainedModel):
    r"""The DINO backbone alone, holding the teacher weights (the ones DINO evaluates): what `AutoModel` returns
    for a DINO checkpoint. Use it for features, k-NN evaluation or fine-tuning. Its outputs follow the convention of
    every hf_ssl feature model (`hf_ssl.models.modeling_ssl`): `pooler_output` (B, D) is the DINO embedding (the
    final-normed CLS token for transformers, the pooled feature map for CNNs), `last_hidden_state` the backbone's
    own, CLS token included, exactly as the exported plain backbone returns it.

    Loading a `DinoForPreTraining` checkpoint picks its `teacher.backbone.*` tensors; the student, the heads
    and the center are skipped without warnings (`_keys_to_ignore_on_load_unexpected`).
    """

    _keys_to_ignore_on_load_unexpected = [r"^student\.", r"^teacher\.head\.", r"^loss\."]

    @staticmethod
    def feature_backbone_config(config: DinoConfig) -> PretrainedConfig:
        return config.teacher_backbone_config()


class DinoForPreTraining(DinoPreTrainedModel):
    r"""DINO self-distillation: a student and an EMA teacher (`DinoNetwork` each) and the `DinoLoss`.

    - The teacher starts as an exact copy of the student and never gets gradients (`requires_grad=False`);
      the trainer moves it with `ema_update_(*model.teacher_student_parameter_pairs(), momentum)`.
    - The student uses `config.student_drop_path_rate` where the backbone supports it; the teacher none.
    - Checkpoints (`save_pretrained`) hold the student, the teacher and the loss center (`loss.center`).
    """

    main_input_name = "global_crops"
    evaluation_backbone_prefix = "teacher.backbone."
    backbone_module_names = ("student.backbone", "teacher.backbone")

    def __init__(self, config: DinoConfig):
        super().__init__(config)
        self.student = DinoNetwork(config.student_backbone_config(), config)
        self.teacher = DinoNetwork(config.teacher_backbone_config(), config)
        self.loss = DinoLoss(config.out_dim, config.student_temperature, config.center_momentum)
        self._freeze_untrained_parameters()
        self.post_init()

    def initialize_weights(self) -> None:
        """Initialise every module, then make the teacher an exact copy of the student (as DINO starts).

        transformers calls this at construction and again after `from_pretrained` for weights the checkpoint
        lacks; the guarded `init.copy_` leaves loaded teacher tensors untouched, and a teacher missing from the
        checkpoint starts from the loaded student.
        """
        super().initialize_weights()
        with torch.no_grad():
            student_tensors = named_tensors(self.student)
            for name, teacher_tensor in named_tensors(self.teacher).items():
                init.copy_(teacher_tensor, student_tensors[name])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # transformers loads every weight as a fresh `requires_grad=True` parameter: freeze the teacher and a
        # norm-fixed last layer again.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model._freeze_untrained_parameters()
        return loaded

    def _freeze_untrained_parameters(self) -> None:
        """The teacher learns only through the EMA; with `norm_last_layer` the last layer's g stays at 1."""
        self.teacher.requires_grad_(False)
        self.student.head.last_layer_magnitude.requires_grad_(not self.config.norm_last_layer)

    @can_return_tuple
    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        teacher_temperature: float | torch.Tensor | None = None,
        update_center: bool = True,
    ) -> DinoForPreTrainingOutput | tuple:
        r"""
        Args:
            global_crops: (G, B, C, H, W) float; the teacher sees these, the student too.
            local_crops: (L, B, 3, h, w) float or None; the student only.
            teacher_temperature: defaults to `config.teacher_temperature`; the trainer passes the scheduled value.
            update_center: False defers this batch's center update to `loss.apply_pending_center_update()` (the
                trainers call it once per optimizer step, so gradient accumulation matches one large batch).

        The student runs its backbone once per resolution (G * B global crops in one pass, L * B local crops in
        another) and its head once on all embeddings; the teacher runs once on the global crops, without grad.
        In training mode the loss center is updated after the loss.

        Returns:
            `DinoForPreTrainingOutput`.
        """
        if teacher_temperature is None:
            teacher_temperature = self.config.teacher_temperature
        num_global_crops = self._check_crops(global_crops, local_crops)

        global_flat = global_crops.flatten(0, 1)  # (G * B, C, H, W), crop-major
        student_inputs = [global_flat] if local_crops is None else [global_flat, local_crops.flatten(0, 1)]
        _, student_logits = self.student(student_inputs)
        with torch.no_grad():
            teacher_embeddings, teacher_logits = self.teacher([global_flat])
            teacher_entropy = self.loss.teacher_entropy(teacher_logits, teacher_temperature)
            student_entropy = self.loss.student_entropy(student_logits)
            embedding_std = F.normalize(teacher_embeddings.float(), dim=-1).std(dim=0).mean()

        loss = self.loss(student_logits, teacher_logits, num_global_crops, teacher_temperature, update_center)

        output = DinoForPreTrainingOutput(
            loss=loss,
            teacher_entropy=teacher_entropy,
            student_entropy=student_entropy,
            max_entropy=torch.tensor(self.loss.max_entropy, device=loss.device),
            embedding_std=embedding_std,
            teacher_temperature=torch.as_tensor(teacher_temperature, dtype=torch.float32, device=loss.device),
            center_norm=self.loss.center.detach().float().norm(),
            teacher_embeddings=teacher_embeddings.detach(),
        )
        return output

    @staticmethod
    def _check_crops(global_crops: torch.Tensor, local_crops: torch.Tensor | None) -> int:
        if global_crops.ndim != 5:
            raise ValueError(
                "global_crops must be (num_global_crops, batch, channels, H, W), got shape "
                f"{tuple(global_crops.shape)}"
            )
        if local_crops is not None and (local_crops.ndim != 5 or local_crops.shape[1] != global_crops.shape[1]):
            raise ValueError(
                f"local_crops must be (num_local_crops, batch, 3, h, w) with the batch size of global_crops "
                f"({global_crops.shape[1]}), got shape {tuple(local_crops.shape)}"
            )
        return global_crops.shape[0]

    def teacher_student_parameter_pairs(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(teacher parameters, student parameters), aligned by name, for the EMA update. Parameters only:
        buffers (BatchNorm statistics, the center) are not averaged, as in DINO."""
        teacher_named = dict(self.teacher.named_parameters())
        student_named = dict(self.student.named_parameters())
        if teacher_named.keys() != student_named.keys():
            raise RuntimeError(
                f"student and teacher parameter names differ: {sorted(teacher_named.keys() ^ student_named.keys())}"
            )
        names = list(teacher_named)
        return [teacher_named[name] for name in names], [student_named[name] for name in names]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The student's last head layer (weight-norm g and v): DINO drops their gradients in the first epoch."""
        return list(self.student.head.last_layer.parameters())

    def evaluation_backbone(self):
        """The teacher backbone: DINO evaluates (k-NN) and exports the teacher."""
        return self.teacher.backbone

    def evaluation_backbone_config(self) -> PretrainedConfig:
        return self.config.teacher_backbone_config()


# The names before transformers' spelling (`ForPreTraining`), for code that imports them: the same classes. A
# checkpoint saved under the old name (`"architectures": ["DinoForPretraining"]`) loads by its model_type.
DinoForPretraining = DinoForPreTraining
DinoForPretrainingOutput = DinoForPreTrainingOutput
