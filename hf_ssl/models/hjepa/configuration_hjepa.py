"""Configuration of H-JEPA: I-JEPA whose predictor is asked for the targets at several levels of a hierarchy.

The definition is hf_ssl's own (there is no reference implementation); see `hf_ssl.models.hjepa.modeling_hjepa`.
"""

from __future__ import annotations

import math
import numbers

from ..ijepa.configuration_ijepa import LOSS_TYPES as IJEPA_LOSS_TYPES
from ..ijepa.configuration_ijepa import IJepaPretrainingConfig
from ..validation import check_integer, check_number

LOSS_TYPES = (*IJEPA_LOSS_TYPES, "contrastive", "multiscale")
DEFAULT_NUM_HIERARCHIES = 3


class HJepaConfig(IJepaPretrainingConfig):
    r"""
    Everything needed to rebuild an H-JEPA model: every argument of `IJepaPretrainingConfig` (the encoder, the
    predictor trunk, `normalize_targets`, `fixed_position_embeddings`; same defaults, the official I-JEPA ViT-H/14
    run) plus the levels. Level `l` (0 .. `num_hierarchies` - 1) predicts the target encoder's tokens from depth
    `level_target_layers[l]`, averaged over windows of `level_pool_sizes[l]` x `level_pool_sizes[l]` patches of each
    target block, with loss weight `level_loss_weights[l]`.

    Every argument is validated when the config is built; a bad value raises a `ValueError` naming the argument. The
    per-level lists are stored resolved (defaults filled in), as lists of length `num_hierarchies`.

    Args:
        num_hierarchies (`int`, defaults to 3): number of levels L, >= 1.
        level_pool_sizes (`list[int]` or `None`, defaults to `None`): side of the square window, in patches, that
            level l averages over; each >= 1. `None` gives `2 ** l`: [1, 2, 4] for 3 levels. A window at a block's
            edge averages the patches it has; a window larger than the block covers the whole block.
        level_target_layers (`list[int | None]` or `None`, defaults to `None`): depth of the target encoder each
            level's targets come from. `None` (for the list or an entry) is the encoder's final output, after its
            final LayerNorm (I-JEPA's target). An integer k in [1, num_hidden_layers - 1] is the output of layer k
            (`hidden_states[k]`), before any final LayerNorm. `hidden_states[0]`, the patch embedding, is refused: a
            linear map of the pixels is not a representation to predict.
        level_loss_weights (`list[float]` or `None`, defaults to `None`): weight of each level's loss in the total,
            each finite and >= 0, at least one > 0. `None` gives `0.5 ** l`: [1.0, 0.5, 0.25] for 3 levels. The
            training step may pass a schedule of its own to `forward(level_weights=...)`; these are the default.
        loss_type (`str`, defaults to `"smooth_l1"`): the distance of every level: `"smooth_l1"` (beta 1, mean),
            `"mse"` (mean), `"contrastive"` (InfoNCE between the L2-normalised pooled predictions and pooled targets
            of the micro-batch, temperature `contrastive_temperature`) or `"multiscale"` (the `"mse"` distance on a
            pyramid of pool sizes: needs at least two distinct `level_pool_sizes`). See `HJepaLoss`.
        contrastive_temperature (`float`, defaults to 0.1): temperature of the `"contrastive"` distance, > 0
            (unused by the other distances).
    """

    model_type = "hf_ssl_hjepa"
    supported_loss_types = LOSS_TYPES

    num_hierarchies: int = DEFAULT_NUM_HIERARCHIES
    level_pool_sizes: list[int] | None = None
    level_target_layers: list[int | None] | None = None
    level_loss_weights: list[float] | None = None
    contrastive_temperature: float = 0.1

    def __post_init__(self, **kwargs):
        # I-JEPA's checks first: they resolve the backbone config the target layers are checked against.
        super().__post_init__(**kwargs)
        check_integer("num_hierarchies", self.num_hierarchies, minimum=1)
        num_levels = self.num_hierarchies
        self.level_pool_sizes = self._level_list("level_pool_sizes", [2**level for level in range(num_levels)])
        self.level_target_layers = self._level_list("level_target_layers", [None] * num_levels)
        self.level_loss_weights = self._level_list("level_loss_weights", [0.5**level for level in range(num_levels)])

        for level, pool_size in enumerate(self.level_pool_sizes):
            if isinstance(pool_size, bool) or not isinstance(pool_size, numbers.Integral) or pool_size < 1:
                raise ValueError(
                    f"`level_pool_sizes[{level}]` must be an integer >= 1 (the side of a window, in patches), got "
                    f"{pool_size!r}"
                )
        self.level_pool_sizes = [int(pool_size) for pool_size in self.level_pool_sizes]

        num_layers = self.backbone_config.num_hidden_layers
        for level, layer in enumerate(self.level_target_layers):
            valid = layer is None or (
                not isinstance(layer, bool) and isinstance(layer, numbers.Integral) and 1 <= layer < num_layers
            )
            if not valid:
                intermediate = (
                    f"or an integer in [1, {num_layers - 1}] (the output of that layer, before the final LayerNorm)"
                    if num_layers > 1
                    else "(a backbone of one layer has no intermediate layer)"
                )
                raise ValueError(
                    f"`level_target_layers[{level}]` must be None (the encoder's final, layer-normed output) "
                    f"{intermediate} for the backbone's num_hidden_layers={num_layers}, got {layer!r}"
                )
        self.level_target_layers = [None if layer is None else int(layer) for layer in self.level_target_layers]

        for level, weight in enumerate(self.level_loss_weights):
            check_number(f"level_loss_weights[{level}]", weight, low=0.0, high=None, allowed="a finite number >= 0")
            if not math.isfinite(weight):
                raise ValueError(f"`level_loss_weights[{level}]` must be a finite number >= 0, got {weight!r}")
        self.level_loss_weights = [float(weight) for weight in self.level_loss_weights]
        if not any(self.level_loss_weights):
            raise ValueError(
                f"`level_loss_weights` must give at least one level a weight > 0, got {self.level_loss_weights}"
            )

        check_number(
            "contrastive_temperature",
            self.contrastive_temperature,
            low=0.0,
            high=None,
            low_inclusive=False,
            allowed="> 0",
        )
        if self.loss_type == "multiscale" and len(set(self.level_pool_sizes)) < 2:
            raise ValueError(
                f"`loss_type` 'multiscale' compares the levels of a pyramid of pool sizes, but `level_pool_sizes` "
                f"{self.level_pool_sizes} has a single size: give the levels different pool sizes, or use "
                "loss_type 'mse'"
            )

    def _level_list(self, name: str, default: list) -> list:
        """The per-level list `name`: `default` for None, else a copy as a list of length `num_hierarchies`."""
        values = getattr(self, name)
        if values is None:
            return default
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
            raise ValueError(
                f"`{name}` must be None or a list of {self.num_hierarchies} values (one per level), got {values!r}"
            )
        if len(values) != self.num_hierarchies:
            raise ValueError(
                f"`{name}` has {len(values)} values but `num_hierarchies` is {self.num_hierarchies}: give one value "
                f"per level, or None for the defaults"
            )
        return list(values)
