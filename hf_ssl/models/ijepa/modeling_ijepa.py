"""I-JEPA (Assran et al., 2023, arXiv:2301.08243) with transformers `IJepaModel` encoders.

- `IJepaPredictor`: the narrow ViT that predicts the target encoder's representations of the target blocks from
  the context tokens, a learned mask token and fixed 2-D sin-cos position embeddings.
- `IJepaFeatureModel` (`AutoModel`): the target encoder alone, for feature extraction and k-NN evaluation.
- `IJepaForPreTraining` (`AutoModelForPreTraining`): context encoder, EMA target encoder, predictor and `IJepaLoss`;
  what the trainer optimises.

Masks are patch indices on the encoder's grid of `image_size // patch_size` patches per side, row-major (as the ViT
flattens its patch tokens and `hf_ssl.data.MultiBlockMaskCollator` draws them): `masks_context` (B, K_ctx) the
patches the context encoder sees, `masks_target` (T, B, K_tgt) the T target blocks of each image. Everything built
per target block is block-major: row `j * B + b` of a (T * B, ...) tensor is target block j of image b (the official
`apply_masks` / `repeat_interleave_batch` order with its single context block).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import IJepaConfig, IJepaModel, PretrainedConfig
from transformers import initialization as init
from transformers.core_model_loading import WeightRenaming
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.ijepa.modeling_ijepa import IJepaLayer
from transformers.utils import ModelOutput, can_return_tuple

from ..backbone import build_backbone, export_backbone
from ..modeling_ssl import SslFeatureModel, SslPreTrainedModel, named_tensors
from .configuration_ijepa import IJepaPretrainingConfig, as_pair
from .loss_ijepa import IJepaLoss

# LayerNorm eps of the official predictor (`vit_predictor`: norm_layer=partial(nn.LayerNorm, eps=1e-6))
PREDICTOR_LAYER_NORM_EPS = 1e-6
ENCODERS = ("target", "context")


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


def sincos_position_embeddings_2d(embed_dim: int, grid_size: tuple[int, int]) -> torch.Tensor:
    r"""The fixed 2-D sin-cos position embeddings of I-JEPA (and MAE), float32 (rows * columns, embed_dim).

    Patch `n = row * columns + column` gets `[sin(column * w), cos(column * w), sin(row * w), cos(row * w)]`, each
    part embed_dim / 4 channels, with `w_k = 10000 ** (-k / (embed_dim / 4))`, k = 0 .. embed_dim / 4 - 1: the
    column comes first, as in the official `get_2d_sincos_pos_embed` (whose `np.meshgrid(grid_w, grid_h)` puts the
    column coordinate in its first half). Computed in float64 and cast, as the official numpy code.
    """
    if embed_dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs embed_dim a multiple of 4, got {embed_dim}")
    rows, columns = grid_size
    quarter = embed_dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    row_index, column_index = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(columns, dtype=torch.float64), indexing="ij"
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, D/2)
        angles = positions.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(column_index), encode(row_index)], dim=1).float()


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The tokens at `indices`, image by image (the official `apply_masks`).

    Args:
        tokens: (B, N, D).
        indices: (B, K) or (T, B, K) int64 token indices in [0, N).

    Returns:
        (B, K, D) for (B, K) indices; (T * B, K, D) for (T, B, K) indices, block-major: row `j * B + b` holds
        `tokens[b, indices[j, b]]`.
    """
    hidden_size = tokens.shape[-1]
    if indices.ndim == 2:
        return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, hidden_size))
    num_blocks = indices.shape[0]
    # expand is a view: the T copies of the tokens are never materialised
    expanded = tokens.unsqueeze(0).expand(num_blocks, -1, -1, -1)
    return torch.gather(expanded, 2, indices.unsqueeze(-1).expand(-1, -1, -1, hidden_size)).flatten(0, 1)


def forward_kept_tokens(encoder: IJepaModel, pixel_values: torch.Tensor, token_indices: torch.Tensor) -> torch.Tensor:
    """Run a transformers `IJepaModel` on the patches at `token_indices` only, dropping the others (the official
    context encoder; transformers' own `bool_masked_pos` would replace them by a mask token instead).

    The same modules as `encoder.forward`, in the same order: patch and position embeddings of the full image
    (interpolated at another resolution), the kept tokens gathered, then every layer and the final LayerNorm. With
    every index kept in order the result is `encoder(pixel_values).last_hidden_state`.

    Args:
        encoder: a transformers `IJepaModel`.
        pixel_values: (B, C, H, W).
        token_indices: (B, K) int64 patch indices in [0, N), row-major on the patch grid.

    Returns:
        (B, K, D): the final-normed tokens of the kept patches, in the order of `token_indices`.
    """
    pixel_values = pixel_values.to(encoder.embeddings.patch_embeddings.projection.weight.dtype)
    embeddings = encoder.embeddings(pixel_values, interpolate_pos_encoding=True)  # (B, N, D)
    hidden_states = gather_tokens(embeddings, token_indices)
    attention_mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden_states, attention_mask=None)
    for layer in encoder.layers:
        hidden_states = layer(hidden_states, attention_mask)
    return encoder.layernorm(hidden_states)


class IJepaPredictor(nn.Module):
    r"""The I-JEPA predictor: from the context tokens of each image, predict the target encoder's representation of
    every patch of each of its target blocks.

    Linear (D -> P), fixed 2-D sin-cos position embeddings of the patch grid at width P, a learned mask token,
    `predictor_num_hidden_layers` transformers `IJepaLayer` blocks of width P, LayerNorm, Linear (P -> D), as the
    official `VisionTransformerPredictor`. The position table `position_embeddings` (N, P) is a persistent buffer (the
    official code keeps it as a frozen parameter): saved with the model, never trained.

    Its blocks use the attention implementation given at construction (`IJepaForPreTraining` passes its encoders').
    """

    def __init__(self, config: IJepaPretrainingConfig, attn_implementation: str | None = None):
        super().__init__()
        backbone = config.backbone_config
        hidden_size, predictor_size = backbone.hidden_size, config.predictor_hidden_size
        self.grid_size = config.patch_grid_size
        # IJepaLayer reads its sizes, activation and attention implementation from an IJepaConfig
        self.layer_config = IJepaConfig(
            hidden_size=predictor_size,
            num_hidden_layers=config.predictor_num_hidden_layers,
            num_attention_heads=config.predictor_num_attention_heads,
            intermediate_size=int(predictor_size * config.predictor_mlp_ratio),
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            layer_norm_eps=PREDICTOR_LAYER_NORM_EPS,
            qkv_bias=True,
            image_size=backbone.image_size,
            patch_size=backbone.patch_size,
            num_channels=backbone.num_channels,
        )
        self.layer_config._attn_implementation = attn_implementation
        self.input_projection = nn.Linear(hidden_size, predictor_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_size))
        self.register_buffer(
            "position_embeddings", sincos_position_embeddings_2d(predictor_size, self.grid_size), persistent=True
        )
        self.layers = nn.ModuleList([IJepaLayer(self.layer_config) for _ in range(config.predictor_num_hidden_layers)])
        self.layernorm = nn.LayerNorm(predictor_size, eps=PREDICTOR_LAYER_NORM_EPS)
        self.output_projection = nn.Linear(predictor_size, hidden_size)

    def forward(
        self,
        context_tokens: torch.Tensor,
        masks_context: torch.Tensor,
        masks_target: torch.Tensor,
        project: bool = True,
    ) -> torch.Tensor:
        """
        Args:
            context_tokens: (B, K_ctx, D), the context encoder's output at `masks_context`.
            masks_context: (B, K_ctx) int64 patch indices of the context tokens.
            masks_target: (T, B, K_tgt) int64 patch indices of the T target blocks of each image.
            project: apply `output_projection`. `False` returns the final-normed hidden states at the mask tokens,
                (T * B, K_tgt, P), for heads of one's own (H-JEPA's per-level heads).

        Returns:
            (T * B, K_tgt, D) predictions, block-major (row `j * B + b`: block j of image b).

        Each (image, target block) pair is one sequence: the image's K_ctx projected context tokens plus their
        position embeddings, then K_tgt mask tokens, each plus the position embedding of the patch it stands for.
        The blocks see the whole sequence; the outputs at the mask tokens are the predictions.
        """
        num_blocks = masks_target.shape[0]
        num_context = context_tokens.shape[1]
        context = self.input_projection(context_tokens) + self.position_embeddings[masks_context]  # (B, K_ctx, P)
        context = context.repeat(num_blocks, 1, 1)  # (T * B, K_ctx, P): row j * B + b is image b
        queries = self.mask_token + self.position_embeddings[masks_target.flatten(0, 1)]  # (T * B, K_tgt, P)
        hidden_states = torch.cat([context, queries.to(context.dtype)], dim=1)
        attention_mask = create_bidirectional_mask(
            config=self.layer_config, inputs_embeds=hidden_states, attention_mask=None
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        hidden_states = self.layernorm(hidden_states)
        if not project:
            return hidden_states[:, num_context:]
        return self.output_projection(hidden_states[:, num_context:])


def _init_ijepa_module(module: nn.Module) -> None:
    """The official I-JEPA init (`src/helper.py` `init_model`) for one of our own (non-encoder) modules: truncated
    normal (std 0.02) linears with zero biases, LayerNorm weight 1 / bias 0, mask token truncated normal (std 0.02).
    Other modules are left alone.

    The official predictor also divides its blocks' output projections by sqrt(2 * depth) at construction, but
    `init_model` re-initialises every linear afterwards, which undoes it: not reproduced. Uses transformers' init
    functions, which skip tensors that `from_pretrained` already loaded.
    """
    if isinstance(module, nn.Linear):
        init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, IJepaPredictor):
        init.trunc_normal_(module.mask_token, std=0.02)
        init.copy_(
            module.position_embeddings,
            sincos_position_embeddings_2d(module.position_embeddings.shape[1], module.grid_size),
        )


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained models
# ---------------------------------------------------------------------------------------------------------------------


class IJepaSslPreTrainedModel(SslPreTrainedModel):
    """Shared base: config class and weight init of the I-JEPA modules (the predictor; both encoders are transformers
    `IJepaModel`s with their own init: truncated normal std `initializer_range` (0.02) linears and patch embedding,
    zero biases, LayerNorm 1 / 0, as the official encoder).

    Named apart from transformers' `IJepaPreTrainedModel`, the base of `IJepaModel`: the hf_ssl (`Ssl`) I-JEPA base,
    as `SslPreTrainedModel` is every method's (it was `IJepaPretrainingPreTrainedModel`, still importable under that
    name; `IJepaPreTrainingPreTrainedModel` would repeat itself). `IJepaForPreTraining` keeps its
    encoders under `context_encoder.` and `target_encoder.`, `IJepaFeatureModel` its encoder under `backbone.` (it
    renames the checkpoint keys it loads); `base_model_prefix` names no module, so transformers adds or strips no
    prefix.
    """

    config_class = IJepaPretrainingConfig
    base_model_prefix = "hf_ssl_ijepa"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only our own modules reach here: transformers hands every encoder (itself a PreTrainedModel) and its
        # submodules to the encoder's own `_init_weights`.
        _init_ijepa_module(module)


@dataclass
class IJepaForPreTrainingOutput(ModelOutput):
    """
    Output of `IJepaForPreTraining.forward`. Everything but `loss` is detached, for logging.

    Args:
        loss: scalar I-JEPA loss (float32).
        prediction_std: std of the predictions over all predicted patches (T * B * K_tgt rows), averaged over the
            D features: ~0 when the predictor outputs the same vector for every patch.
        target_std: the same for the targets: ~0 when the target encoder has collapsed (with `normalize_targets`
            each target has mean 0 and variance 1 over its features, so this measures how patches differ).
        embedding_std: std over the batch of the L2-normalised `embeddings`, averaged over dims (as DINO and
            SimCLR report): ~0 for a collapsed encoder, ~1/sqrt(D) for embeddings spread uniformly on the sphere.
        embeddings: (B, D) the target encoder's mean patch token (un-normalised): the embedding `IJepaFeatureModel`
            returns, whose effective rank and mean L2 norm the trainers measure when they log.
        predictions: (T * B, K_tgt, D) the predictor's output, block-major (row `j * B + b`: block j of image b).
        targets: (T * B, K_tgt, D) float32 target representations of the same patches, in the same order.
    """

    loss: torch.FloatTensor | None = None
    prediction_std: torch.FloatTensor | None = None
    target_std: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    targets: torch.FloatTensor | None = None


class IJepaFeatureModel(SslFeatureModel, IJepaSslPreTrainedModel):
    r"""The I-JEPA encoder alone, holding the target encoder weights (the EMA encoder): what `AutoModel` returns for
    an I-JEPA checkpoint. Use it for features, k-NN evaluation or fine-tuning. Its outputs follow the convention of
    every hf_ssl feature model (`hf_ssl.models.modeling_ssl`): `pooler_output` (B, D) is the mean of the patch tokens
    (an `IJepaModel` has no CLS token), `last_hidden_state` (B, N, D) the encoder's own, exactly as the exported
    plain `IJepaModel` returns it (whose own `pooler_output` is None: take the mean of `last_hidden_state`).

    Loading an `IJepaForPreTraining` checkpoint picks its `target_encoder.*` tensors (renamed to `backbone.*`), or
    with `from_pretrained(..., encoder="context")` its `context_encoder.*` ones; the other encoder and the predictor
    are skipped without warnings.
    """

    _keys_to_ignore_on_load_unexpected = [r"^context_encoder\.", r"^target_encoder\.", r"^predictor\."]

    @staticmethod
    def feature_backbone_config(config: IJepaPretrainingConfig) -> PretrainedConfig:
        return config.encoder_backbone_config()

    @classmethod
    def from_pretrained(cls, *args, encoder: str = "target", **kwargs):
        """`PreTrainedModel.from_pretrained`; `encoder` ("target" or "context") chooses which encoder of an
        `IJepaForPreTraining` checkpoint to load (a feature model checkpoint has only its `backbone.`)."""
        _check_encoder_name(encoder)
        encoder_pattern = rf"^{encoder}_encoder\."
        key_mapping = {encoder_pattern: "backbone.", **(kwargs.pop("key_mapping", None) or {})}
        loaded = super().from_pretrained(*args, key_mapping=key_mapping, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # `save_pretrained` reverts the renamings a model was loaded with; this one is for loading only, so the
        # model saves as what it is (`backbone.*`), whichever encoder it was loaded from
        conversions = getattr(model, "_weight_conversions", None)
        if conversions:
            model._weight_conversions = [
                conversion
                for conversion in conversions
                if not (isinstance(conversion, WeightRenaming) and conversion.source_patterns == [encoder_pattern])
            ]
        return loaded


class IJepaForPreTraining(IJepaSslPreTrainedModel):
    r"""I-JEPA: a context encoder sees one large block of each image (the patches of `masks_context`; the others are
    dropped, not replaced); the predictor predicts, from its output, the target encoder's representations of T
    target blocks (`masks_target`), computed on the full image; the loss (`IJepaLoss`) compares the two.

    - The context encoder and the target encoder are two transformers `IJepaModel`s built from `backbone_config`
      (`context_encoder.*`, `target_encoder.*`, matching names), so each exports as a plain `IJepaModel`.
    - The target encoder starts as an exact copy of the context encoder and never gets gradients
      (`requires_grad=False`); the trainer moves it with `ema_update_(*model.teacher_student_parameter_pairs(), m)`.
    - With `config.fixed_position_embeddings` both encoders' position embeddings are the 2-D sin-cos table, frozen.
    - `evaluation_backbone()` (k-NN, `export_backbone`, `IJepaFeatureModel`) is the target encoder, as the paper
      evaluates; `export_backbone(..., encoder="context")` exports the context encoder instead (the public
      transformers I-JEPA checkpoints were converted from the official context encoder, `encoder`).
    - Checkpoints (`save_pretrained`) hold both encoders and the predictor.
    """

    main_input_name = "pixel_values"
    evaluation_backbone_prefix = "target_encoder."
    backbone_module_names = ("context_encoder", "target_encoder")

    def __init__(self, config: IJepaPretrainingConfig):
        super().__init__(config)
        self.context_encoder = build_backbone(config.encoder_backbone_config())
        self.target_encoder = build_backbone(config.encoder_backbone_config())
        self.predictor = IJepaPredictor(config, attn_implementation=self.context_encoder.config._attn_implementation)
        self.loss = IJepaLoss(config.loss_type)
        self._freeze_untrained_parameters()
        self.post_init()

    def initialize_weights(self) -> None:
        """Initialise every module, give the context encoder the sin-cos position table (with
        `fixed_position_embeddings`), then make the target encoder an exact copy of the context encoder.

        transformers calls this at construction and again after `from_pretrained` for weights the checkpoint lacks;
        the guarded `init.copy_` leaves loaded tensors untouched, and a checkpoint without `target_encoder.*` weights
        gets a target encoder copied from its loaded context encoder.
        """
        super().initialize_weights()
        with torch.no_grad():
            if self.config.fixed_position_embeddings:
                position_embeddings = self.context_encoder.embeddings.position_embeddings  # (1, N, D)
                table = sincos_position_embeddings_2d(position_embeddings.shape[-1], self.config.patch_grid_size)
                init.copy_(position_embeddings, table.unsqueeze(0))
            context_tensors = named_tensors(self.context_encoder)
            for name, target_tensor in named_tensors(self.target_encoder).items():
                init.copy_(target_tensor, context_tensors[name])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # transformers loads every weight as a fresh `requires_grad=True` parameter: freeze the target encoder and
        # the fixed position embeddings again.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model._freeze_untrained_parameters()
        return loaded

    def _freeze_untrained_parameters(self) -> None:
        """The target encoder learns only through the EMA; fixed position embeddings never learn."""
        self.target_encoder.requires_grad_(False)
        if self.config.fixed_position_embeddings:
            self.context_encoder.embeddings.position_embeddings.requires_grad_(False)

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, masks_context: torch.Tensor, masks_target: torch.Tensor
    ) -> IJepaForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) float, normalised, at the backbone's `image_size` (the masks index its grid).
            masks_context: (B, K_ctx) int64 patch indices the context encoder keeps (one context block per image).
            masks_target: (T, B, K_tgt) int64 patch indices of the T target blocks of each image
                (`masks_target[j, b]` is block j of image b, as `MultiBlockMaskCollator` gives them).

        Returns:
            `IJepaForPreTrainingOutput`; `predictions` and `targets` are (T * B, K_tgt, D), block-major.
        """
        self._check_inputs(pixel_values, masks_context, masks_target)

        targets, embeddings = self.forward_target(pixel_values, masks_target)
        context_tokens = self.forward_context(pixel_values, masks_context)
        predictions = self.predictor(context_tokens, masks_context, masks_target)
        loss = self.loss(predictions, targets)

        with torch.no_grad():
            prediction_std = predictions.detach().float().flatten(0, 1).std(dim=0).mean()
            target_std = targets.flatten(0, 1).std(dim=0).mean()
            embedding_std = F.normalize(embeddings.float(), dim=-1).std(dim=0).mean()

        output = IJepaForPreTrainingOutput(
            loss=loss,
            prediction_std=prediction_std,
            target_std=target_std,
            embedding_std=embedding_std,
            embeddings=embeddings,
            predictions=predictions.detach(),
            targets=targets,
        )
        return output

    def forward_context(self, pixel_values: torch.Tensor, masks_context: torch.Tensor) -> torch.Tensor:
        """(B, K_ctx, D): the context encoder's output on the patches of `masks_context` only
        (`forward_kept_tokens`)."""
        return forward_kept_tokens(self.context_encoder, pixel_values, masks_context)

    @torch.no_grad()
    def forward_target(
        self, pixel_values: torch.Tensor, masks_target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The target encoder on the full images, without gradient.

        Returns:
            targets: (T * B, K_tgt, D) float32, block-major: the encoder's final-normed patch tokens, layer-normed
                again over the features without affine parameters when `normalize_targets`, gathered at each target
                block (row `j * B + b` holds image b's tokens at `masks_target[j, b]`).
            embeddings: (B, D) the mean patch token of the encoder's output (before that normalisation).
        """
        hidden_states = self.target_encoder(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
        embeddings = hidden_states.mean(dim=1)
        hidden_states = hidden_states.float()
        if self.config.normalize_targets:
            hidden_states = F.layer_norm(hidden_states, (hidden_states.shape[-1],))
        return gather_tokens(hidden_states, masks_target), embeddings

    def _check_inputs(
        self, pixel_values: torch.Tensor, masks_context: torch.Tensor, masks_target: torch.Tensor
    ) -> None:
        """Raise a ValueError saying what is wrong with the inputs."""
        if pixel_values.ndim != 4 or not pixel_values.is_floating_point() or pixel_values.shape[0] < 1:
            raise ValueError(
                "pixel_values must be a float (batch, channels, height, width) tensor of at least one normalised "
                f"image, got shape {tuple(pixel_values.shape)} and dtype {pixel_values.dtype}"
            )
        batch_size = pixel_values.shape[0]
        backbone = self.config.backbone_config
        grid = self.config.patch_grid_size
        if tuple(pixel_values.shape[-2:]) != as_pair(backbone.image_size):
            raise ValueError(
                f"pixel_values must be images of the backbone's image_size {backbone.image_size} (the "
                f"{grid[0]} x {grid[1]} patch grid the masks index), got {tuple(pixel_values.shape[-2:])}"
            )
        for name, mask, shape in (
            ("masks_context", masks_context, "(batch, num_context_patches)"),
            ("masks_target", masks_target, "(num_targets, batch, num_target_patches)"),
        ):
            expected_ndim = 2 if name == "masks_context" else 3
            if mask.dtype != torch.int64 or mask.ndim != expected_ndim:
                raise ValueError(
                    f"{name} must be an int64 {shape} tensor of patch indices, got shape {tuple(mask.shape)} and "
                    f"dtype {mask.dtype}"
                )
            if mask.shape[-2] != batch_size or mask.numel() == 0:
                raise ValueError(
                    f"{name} must be {shape} with the batch size of pixel_values ({batch_size}) and at least one "
                    f"patch, got shape {tuple(mask.shape)}"
                )
        if torch.compiler.is_compiling():
            return  # the range check reads the masks back to the host: a graph break
        num_patches = grid[0] * grid[1]
        low, high = torch.stack(
            [
                torch.minimum(masks_context.min(), masks_target.min()),
                torch.maximum(masks_context.max(), masks_target.max()),
            ]
        ).tolist()
        if low < 0 or high >= num_patches:
            raise ValueError(
                f"mask indices must be patch indices in [0, {num_patches}) (a {grid[0]} x {grid[1]} grid), got values "
                f"from {low} to {high}: do the collator's input_size and patch_size match the backbone's?"
            )

    def teacher_student_parameter_pairs(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(target encoder parameters, context encoder parameters), aligned by name, for the EMA update (the
        official code averages parameters only; an `IJepaModel` has no buffers)."""
        target_named = dict(self.target_encoder.named_parameters())
        context_named = dict(self.context_encoder.named_parameters())
        if target_named.keys() != context_named.keys():
            raise RuntimeError(
                "context and target encoder parameter names differ: "
                f"{sorted(target_named.keys() ^ context_named.keys())}"
            )
        names = list(target_named)
        return [target_named[name] for name in names], [context_named[name] for name in names]

    def evaluation_backbone(self, encoder: str = "target") -> IJepaModel:
        """The target encoder (what I-JEPA evaluates, k-NN and `export_backbone`), or with `encoder="context"` the
        context encoder."""
        _check_encoder_name(encoder)
        return self.target_encoder if encoder == "target" else self.context_encoder

    def evaluation_backbone_config(self) -> PretrainedConfig:
        """The config both encoders are built from (the same for either)."""
        return self.config.encoder_backbone_config()

    def export_backbone(
        self,
        save_directory: str | os.PathLike,
        image_size: int | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        image_processor=None,
        encoder: str = "target",
    ) -> str:
        """`SslPreTrainedModel.export_backbone`: one encoder saved as a plain transformers `IJepaModel` with its
        image processor; `encoder` is "target" (the default, what `IJepaFeatureModel` loads) or "context"."""
        return export_backbone(
            self.evaluation_backbone(encoder),
            save_directory,
            image_size=image_size,
            image_mean=image_mean,
            image_std=image_std,
            image_processor=image_processor,
            config=self.evaluation_backbone_config(),
        )


def _check_encoder_name(encoder: str) -> None:
    if encoder not in ENCODERS:
        raise ValueError(f"`encoder` must be one of {ENCODERS}, got {encoder!r}")


# The names before transformers' spelling (`ForPreTraining`), for code that imports them: the same classes. A
# checkpoint saved under the old name (`"architectures": ["IJepaForPretraining"]`) loads by its model_type.
IJepaForPretraining = IJepaForPreTraining
IJepaForPretrainingOutput = IJepaForPreTrainingOutput
IJepaPretrainingPreTrainedModel = IJepaSslPreTrainedModel  # the base's old name (see IJepaSslPreTrainedModel)
