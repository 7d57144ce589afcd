"""H-JEPA: hierarchical I-JEPA, with transformers `IJepaModel` encoders.

There is no reference implementation; this is hf_ssl's definition. H-JEPA is I-JEPA (`hf_ssl.models.ijepa`) whose
predictor is asked for the targets at L = `num_hierarchies` levels. With T target blocks per image of h x w patches
each (`masks_target` (T, B, h * w)), level l = 0 .. L - 1 is:

- target: the target encoder's tokens of the full image at depth `level_target_layers[l]` (None: the final,
  layer-normed output, I-JEPA's; k: `hidden_states[k]`, the output of layer k before the final LayerNorm), in
  float32, layer-normalised over the features without affine parameters (`normalize_targets`), gathered at each
  target block, laid out on the block's h x w patch grid and averaged over non-overlapping windows of s x s
  patches, s = `level_pool_sizes[l]` (`pool_windows`): ceil(h / s) x ceil(w / s) windows per block, a window at the
  block's bottom or right edge averaging the patches it has.
- prediction: the I-JEPA predictor trunk (its blocks and final LayerNorm) at the mask tokens, the same for every
  level, averaged over the same windows, then the level's linear head (P -> D). Averaging commutes with an affine
  map, so this equals the head applied to every token and then averaged; pooling first is cheaper.
- distance `loss_l` (`HJepaLoss`, `config.loss_type`): smooth L1 (beta 1, mean), mse (mean), contrastive (InfoNCE
  between the L2-normalised pooled predictions and pooled targets of the level in the micro-batch, the positive the
  target of the same block, image and window) or multiscale (mse, on a pyramid of distinct pool sizes).
- total loss = sum over l of `level_weights[l] * loss_l` (`forward(level_weights=...)`, by default
  `config.level_loss_weights`).

A level with pool size 1 and the final output is exactly I-JEPA's prediction task: with one such level, weight 1
and I-JEPA's distance, the loss is I-JEPA's (level head 0 in the place of I-JEPA's `output_projection`).

The block shape (h, w) is the same for every target block of a batch (`hf_ssl.data.MultiBlockMaskCollator` draws
one size per batch); `forward` infers it from the masks (`infer_target_block_size`) or takes it as its
`target_block_size` argument, and checks that every block is a full h x w rectangle of the patch grid listed
row-major (`check_target_blocks`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput, can_return_tuple

from ..backbone import build_backbone
from ..ijepa.modeling_ijepa import IJepaFeatureModel, IJepaForPreTraining, IJepaPredictor, gather_tokens
from .configuration_hjepa import HJepaConfig
from .loss_hjepa import HJepaLoss

# ---------------------------------------------------------------------------------------------------------------------
# Target blocks and windows
# ---------------------------------------------------------------------------------------------------------------------


def infer_target_block_size(masks_target: torch.Tensor, grid_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the target blocks, read from the first block `masks_target[0, 0]`.

    A block's indices are listed row-major, so its first row is the run of consecutive indices it starts with (cut
    at the grid's right edge: a block as wide as the grid continues on the next row); w is that run's length and
    h = K_tgt / w. Reads the block back to the host. Checks neither its other rows nor the other blocks: see
    `check_target_blocks`.

    Args:
        masks_target: (T, B, K_tgt) int64 patch indices, row-major on the patch grid.
        grid_size: (rows, columns) of the patch grid.
    """
    first_block = masks_target[0, 0].tolist()
    num_patches = len(first_block)
    grid_width = grid_size[1]
    row_end = min(num_patches, grid_width - first_block[0] % grid_width)
    width = 1
    while width < row_end and first_block[width] == first_block[width - 1] + 1:
        width += 1
    if num_patches % width or num_patches // width > grid_size[0]:
        raise ValueError(
            f"masks_target[0, 0] starts with a row of {width} consecutive patches but holds {num_patches} patches, "
            f"not a whole number of such rows within the {grid_size[0]} x {grid_width} patch grid: H-JEPA pools each "
            "target block on its patch grid, so every target block must be a full h x w rectangle listed row-major, "
            "indices ascending (as MultiBlockMaskCollator draws them)"
        )
    return num_patches // width, width


def check_target_blocks(masks_target: torch.Tensor, block_size: tuple[int, int], grid_size: tuple[int, int]) -> None:
    """Raise a ValueError unless every `masks_target[j, b]` is the h x w rectangle of the `grid_size` patch grid whose
    top-left patch is its first index, listed row-major: `top_left + r * grid_width + c`, r < h, c < w."""
    height, width = block_size
    grid_height, grid_width = grid_size
    num_patches = masks_target.shape[-1]
    if height * width != num_patches or not (1 <= height <= grid_height and 1 <= width <= grid_width):
        raise ValueError(
            f"a target block of {height} x {width} patches cannot hold the {num_patches} indices of each target "
            f"block on a {grid_height} x {grid_width} patch grid: target_block_size must be an (h, w) with "
            f"h * w = {num_patches}, within the grid"
        )
    if torch.compiler.is_compiling():
        return  # the check reads the masks back to the host: a graph break
    top_left = masks_target[..., 0]  # (T, B)
    offsets = (
        torch.arange(height, device=masks_target.device)[:, None] * grid_width
        + torch.arange(width, device=masks_target.device)
    ).flatten()  # (K_tgt,)
    is_rectangle = (masks_target == top_left[..., None] + offsets).all(dim=-1)
    is_rectangle &= (top_left % grid_width + width <= grid_width) & (top_left // grid_width + height <= grid_height)
    if not bool(is_rectangle.all()):
        block, image = (int(index) for index in (~is_rectangle).nonzero()[0])
        raise ValueError(
            f"masks_target[{block}, {image}] is not a {height} x {width} block of the {grid_height} x {grid_width} "
            f"patch grid listed row-major (got {masks_target[block, image].tolist()}): H-JEPA pools each target "
            "block over windows of its patch grid, so every target block of a batch must be a full rectangle of the "
            "same size, its indices ascending (as MultiBlockMaskCollator draws them)"
        )


def pool_windows(tokens: torch.Tensor, block_size: tuple[int, int], pool_size: int) -> torch.Tensor:
    r"""Average the tokens of each block over non-overlapping windows of `pool_size` x `pool_size` patches.

    The block's tokens, row-major, are laid out on its h x w grid; window (r, c) covers rows
    [r * s, min((r + 1) * s, h)) and columns [c * s, min((c + 1) * s, w)), s = `pool_size`, and is the mean of the
    patches it covers: a window at the bottom or right edge averages fewer patches (ceil mode), and a window larger
    than the block covers the whole block. `pool_size` 1 returns `tokens` itself.

    Args:
        tokens: (N, h * w, C), row-major within each block.
        block_size: (h, w).
        pool_size: s >= 1.

    Returns:
        (N, ceil(h / s) * ceil(w / s), C), windows row-major.
    """
    if pool_size == 1:
        return tokens
    height, width = block_size
    rows, columns = math.ceil(height / pool_size), math.ceil(width / pool_size)
    grid = tokens.unflatten(1, (height, width))  # (N, h, w, C)
    # zero-pad to whole windows, sum each window, divide by the number of real patches in it
    padded = F.pad(grid, (0, 0, 0, columns * pool_size - width, 0, rows * pool_size - height))
    sums = padded.unflatten(1, (rows, pool_size)).unflatten(3, (columns, pool_size)).sum(dim=(2, 4))  # (N, r, c, C)
    window_rows = (height - pool_size * torch.arange(rows, device=tokens.device)).clamp(max=pool_size)
    window_columns = (width - pool_size * torch.arange(columns, device=tokens.device)).clamp(max=pool_size)
    counts = (window_rows[:, None] * window_columns[None, :]).to(sums.dtype)  # (r, c)
    return (sums / counts[..., None]).flatten(1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------------------------------------------------


class HJepaPredictor(IJepaPredictor):
    r"""The I-JEPA predictor trunk (`input_projection`, `mask_token`, `position_embeddings`, `layers`, `layernorm`:
    I-JEPA's modules under I-JEPA's names) with one linear head per level, `level_projections.{l}` (P -> D), in
    place of I-JEPA's single `output_projection`."""

    def __init__(self, config: HJepaConfig, attn_implementation: str | None = None):
        super().__init__(config, attn_implementation=attn_implementation)
        del self.output_projection  # one head per level instead; an unused parameter would break DDP
        self.level_pool_sizes = tuple(config.level_pool_sizes)
        self.level_projections = nn.ModuleList(
            [
                nn.Linear(config.predictor_hidden_size, config.backbone_config.hidden_size)
                for _ in range(config.num_hierarchies)
            ]
        )

    def forward(
        self,
        context_tokens: torch.Tensor,
        masks_context: torch.Tensor,
        masks_target: torch.Tensor,
        block_size: tuple[int, int],
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            context_tokens: (B, K_ctx, D), the context encoder's output at `masks_context`.
            masks_context: (B, K_ctx) int64 patch indices of the context tokens.
            masks_target: (T, B, K_tgt) int64 patch indices of the T target blocks of each image, each an h x w
                block listed row-major.
            block_size: (h, w) of the target blocks.

        Returns:
            One (T * B, M_l, D) tensor per level, block-major (row `j * B + b`: block j of image b), the M_l =
            ceil(h / s_l) * ceil(w / s_l) windows of each block row-major: the level head on the trunk's output
            averaged over each window.
        """
        hidden_states = super().forward(context_tokens, masks_context, masks_target, project=False)  # (T * B, K, P)
        return tuple(
            head(pool_windows(hidden_states, block_size, pool_size))
            for head, pool_size in zip(self.level_projections, self.level_pool_sizes)
        )


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained models
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class HJepaForPreTrainingOutput(ModelOutput):
    """
    Output of `HJepaForPreTraining.forward`, L levels. Everything but `loss` is detached, for logging. A std over
    a single row (one image, one target block, one window at a level) is NaN.

    Args:
        loss: scalar H-JEPA loss (float32), sum over levels of `level_weights[l] * level_losses[l]`.
        level_losses: (L,) float32, each level's distance (unweighted).
        level_prediction_std: (L,) per level, std of the pooled predictions over all N_l pooled rows, averaged over
            the D features: ~0 when the predictor outputs the same vector everywhere.
        level_target_std: (L,) the same for the pooled targets: ~0 when the target encoder has collapsed.
        level_embeddings: L float32 (N_l, D) tensors, the pooled targets of each level, N_l = T * B * M_l rows (block
            major, windows of a block consecutive), for collapse metrics (effective rank, mean L2 norm).
        prediction_std: `level_prediction_std[0]`, for the fields an I-JEPA run logs.
        target_std: `level_target_std[0]`.
        embedding_std: std over the batch of the L2-normalised `embeddings`, averaged over dims (as I-JEPA reports).
        embeddings: (B, D) the target encoder's mean final patch token (un-normalised), what `HJepaFeatureModel`
            returns as `pooler_output`.
        level_predictions: L (T * B, M_l, D) pooled predictions, block-major.
        level_targets: L (T * B, M_l, D) float32 pooled targets, in the same order.
    """

    loss: torch.FloatTensor | None = None
    level_losses: torch.FloatTensor | None = None
    level_prediction_std: torch.FloatTensor | None = None
    level_target_std: torch.FloatTensor | None = None
    level_embeddings: tuple[torch.FloatTensor, ...] | None = None
    prediction_std: torch.FloatTensor | None = None
    target_std: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    level_predictions: tuple[torch.FloatTensor, ...] | None = None
    level_targets: tuple[torch.FloatTensor, ...] | None = None


class HJepaFeatureModel(IJepaFeatureModel):
    r"""The H-JEPA encoder alone, holding the target encoder weights: what `AutoModel` returns for an H-JEPA
    checkpoint. The same as `IJepaFeatureModel`: `pooler_output` (B, D) the mean patch token, `last_hidden_state`
    the encoder's own; `from_pretrained(..., encoder="context")` loads the context encoder instead."""

    config_class = HJepaConfig
    base_model_prefix = "hf_ssl_hjepa"


class HJepaForPreTraining(IJepaForPreTraining):
    r"""H-JEPA (see the module docstring): I-JEPA's context encoder, EMA target encoder and predictor trunk, with
    one head, one pool size, one target depth and one loss weight per level.

    Parameter names are I-JEPA's (`context_encoder.*`, `target_encoder.*`, `predictor.*`), the level heads under
    `predictor.level_projections.{l}.*`: EMA pairs, evaluation, export and checkpoints work as for
    `IJepaForPreTraining` (the target encoder exports as a plain transformers `IJepaModel`).
    """

    config_class = HJepaConfig
    base_model_prefix = "hf_ssl_hjepa"

    def __init__(self, config: HJepaConfig):
        # I-JEPA's modules with H-JEPA's predictor and loss; IJepaForPreTraining.__init__ would build I-JEPA's,
        # so the shared base is initialised directly.
        super(IJepaForPreTraining, self).__init__(config)
        self.context_encoder = build_backbone(config.encoder_backbone_config())
        self.target_encoder = build_backbone(config.encoder_backbone_config())
        self.predictor = HJepaPredictor(config, attn_implementation=self.context_encoder.config._attn_implementation)
        self.loss = HJepaLoss(config.loss_type, config.contrastive_temperature)
        self._freeze_untrained_parameters()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        masks_context: torch.Tensor,
        masks_target: torch.Tensor,
        level_weights: Sequence[float] | torch.Tensor | None = None,
        target_block_size: tuple[int, int] | None = None,
    ) -> HJepaForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) float, normalised, at the backbone's `image_size` (the masks index its grid).
            masks_context: (B, K_ctx) int64 patch indices the context encoder keeps.
            masks_target: (T, B, K_tgt) int64 patch indices of the T target blocks of each image, each a full h x w
                block of the grid listed row-major, the same (h, w) for every block (`MultiBlockMaskCollator`'s).
            level_weights: (L,) weight of each level's loss in `loss` (the training step's schedule), a sequence of
                finite numbers >= 0 or a tensor; `None` takes `config.level_loss_weights`.
            target_block_size: (h, w) of the target blocks; `None` infers it from `masks_target`
                (`infer_target_block_size`). Either way every block is checked (`check_target_blocks`).

        Returns:
            `HJepaForPreTrainingOutput`.
        """
        self._check_inputs(pixel_values, masks_context, masks_target)
        grid_size = self.config.patch_grid_size
        block_size = (
            infer_target_block_size(masks_target, grid_size)
            if target_block_size is None
            else _as_block_size(target_block_size)
        )
        check_target_blocks(masks_target, block_size, grid_size)
        weights = self._level_weights(level_weights, pixel_values.device)

        level_targets, embeddings = self.forward_level_targets(pixel_values, masks_target, block_size)
        context_tokens = self.forward_context(pixel_values, masks_context)
        level_predictions = self.predictor(context_tokens, masks_context, masks_target, block_size)
        level_losses = torch.stack(
            [self.loss(predictions, targets) for predictions, targets in zip(level_predictions, level_targets)]
        )
        loss = (weights * level_losses).sum()

        with torch.no_grad():
            level_predictions = tuple(predictions.detach() for predictions in level_predictions)
            level_embeddings = tuple(targets.flatten(0, 1) for targets in level_targets)
            level_prediction_std = torch.stack(
                [predictions.float().flatten(0, 1).std(dim=0).mean() for predictions in level_predictions]
            )
            level_target_std = torch.stack([targets.std(dim=0).mean() for targets in level_embeddings])
            embedding_std = F.normalize(embeddings.float(), dim=-1).std(dim=0).mean()

        output = HJepaForPreTrainingOutput(
            loss=loss,
            level_losses=level_losses.detach(),
            level_prediction_std=level_prediction_std,
            level_target_std=level_target_std,
            level_embeddings=level_embeddings,
            prediction_std=level_prediction_std[0],
            target_std=level_target_std[0],
            embedding_std=embedding_std,
            embeddings=embeddings,
            level_predictions=level_predictions,
            level_targets=level_targets,
        )
        return output

    @torch.no_grad()
    def forward_level_targets(
        self, pixel_values: torch.Tensor, masks_target: torch.Tensor, block_size: tuple[int, int]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The target encoder on the full images (once for every level), without gradient.

        Returns:
            level_targets: one (T * B, M_l, D) float32 tensor per level, block-major: the encoder's tokens at depth
                `level_target_layers[l]`, layer-normed over the features without affine parameters when
                `normalize_targets`, gathered at each target block (row `j * B + b`: image b at `masks_target[j, b]`)
                and averaged over the level's windows (`pool_windows`).
            embeddings: (B, D) the mean patch token of the encoder's final output.
        """
        layers = self.config.level_target_layers
        outputs = self.target_encoder(
            pixel_values=pixel_values,
            interpolate_pos_encoding=True,
            output_hidden_states=any(layer is not None for layer in layers),
        )
        embeddings = outputs.last_hidden_state.mean(dim=1)
        gathered = {}  # per depth: the normalised tokens of the target blocks, (T * B, K_tgt, D)
        for layer in dict.fromkeys(layers):
            hidden_states = outputs.last_hidden_state if layer is None else outputs.hidden_states[layer]
            hidden_states = hidden_states.float()
            if self.config.normalize_targets:
                hidden_states = F.layer_norm(hidden_states, (hidden_states.shape[-1],))
            gathered[layer] = gather_tokens(hidden_states, masks_target)
        level_targets = tuple(
            pool_windows(gathered[layer], block_size, pool_size)
            for layer, pool_size in zip(layers, self.config.level_pool_sizes)
        )
        return level_targets, embeddings

    def _level_weights(self, level_weights, device: torch.device) -> torch.Tensor:
        """(L,) float32 loss weights on `device`: `level_weights` checked, or the config's."""
        num_levels = self.config.num_hierarchies
        if level_weights is None:
            level_weights = self.config.level_loss_weights
        if isinstance(level_weights, torch.Tensor):
            if level_weights.shape != (num_levels,):
                raise ValueError(
                    f"level_weights must hold one weight per level ({num_levels}), got a tensor of shape "
                    f"{tuple(level_weights.shape)}"
                )
            return level_weights.to(device=device, dtype=torch.float32)
        level_weights = list(level_weights)
        valid = all(
            not isinstance(weight, bool) and isinstance(weight, numbers.Real) and math.isfinite(weight) and weight >= 0
            for weight in level_weights
        )
        if len(level_weights) != num_levels or not valid:
            raise ValueError(
                f"level_weights must be {num_levels} finite numbers >= 0, one per level (model.num_hierarchies), got "
                f"{level_weights!r}"
            )
        return torch.tensor(level_weights, dtype=torch.float32, device=device)


def _as_block_size(block_size) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in block_size)
    except (TypeError, ValueError):
        raise ValueError(f"target_block_size must be an (h, w) pair of patch counts, got {block_size!r}") from None
    return height, width


# The names before transformers' spelling (`ForPreTraining`), for code that imports them: the same classes. A
# checkpoint saved under the old name (`"architectures": ["HJepaForPretraining"]`) loads by its model_type.
HJepaForPretraining = HJepaForPreTraining
HJepaForPretrainingOutput = HJepaForPreTrainingOutput
