"""I-JEPA's multi-block masks: per image, ``num_targets`` target blocks for the predictor and one context block for
the encoder, as patch indices, drawn by the collator in the DataLoader workers.

    collator = MultiBlockMaskCollator(input_size=224, patch_size=16)  # a 14 x 14 grid of patches
    loader = DataLoader(dataset, batch_size=64, collate_fn=collator, num_workers=8)
    for batch in loader:
        batch["image"]  # (1, 64, 3, 224, 224) uint8, from the inner ViewCropCollator
        batch["masks_context"], batch["masks_target"]  # (64, K_ctx), (4, 64, K_tgt) int64 patch indices

A patch index is ``row * grid_width + column`` on the grid of ``input_size // patch_size`` patches, row-major, as a
ViT flattens its patch tokens. The drawing follows ``MaskCollator`` of facebookresearch/ijepa
(``src/masks/multiblock.py``) step by step, quirks included (see `MultiBlockMaskCollator`); the defaults are the
mask section of its ViT-H/14 recipe (``configs/in1k_vith14_ep300.yaml``), not its constructor's defaults.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .crops import ViewCropCollator

logger = logging.getLogger(__name__)

# Example fields that identify an example for seeding (the first one present is used); dropped before collation.
KEY_FIELDS = ("key", "index")
MASK_KEYS = ("masks_context", "masks_target")
# Points of [0, 1) at which __init__ evaluates the block sizes a config can draw.
_SIZE_PROBES = 1 << 16
_MAX_KEY = 2**63


class ImageMasks(NamedTuple):
    """The masks of one image, before the batch cuts them to a common length.

    ``targets``: ``num_targets`` int64 arrays of the ``h * w`` patch indices of each target block, ascending.
    ``context``: int64 array of the context block's patch indices outside the target blocks, ascending.
    ``num_relaxed``: how many target blocks (the last ones) the context was allowed to overlap because no
    placement avoiding them all kept more than ``min_keep`` patches; 0 almost always, and with ``allow_overlap``.
    """

    targets: tuple[np.ndarray, ...]
    context: np.ndarray
    num_relaxed: int


class MultiBlockMasks(NamedTuple):
    """The masks of one batch of ``B`` images.

    ``context``: int64 ``(B, K_ctx)``; ``target``: int64 ``(num_targets, B, K_tgt)`` (``target[j, b]`` is block ``j``
    of image ``b``). Each row is the ascending index list of its mask cut to the shortest one in the batch, so it
    keeps the smallest indices. ``target_size`` and ``context_size`` are the ``(h, w)`` blocks in patches, drawn
    once for the batch; ``num_relaxed`` holds `ImageMasks.num_relaxed` per image.
    """

    context: torch.Tensor
    target: torch.Tensor
    target_size: tuple[int, int]
    context_size: tuple[int, int]
    num_relaxed: tuple[int, ...]


def rectangle_indices(top: int, left: int, height: int, width: int, grid_width: int) -> np.ndarray:
    """int64 ``(height * width,)``: the row-major patch indices of the ``height x width`` block whose top-left patch
    is ``(top, left)`` on a grid ``grid_width`` patches wide, ascending."""
    rows = np.arange(top, top + height, dtype=np.int64)
    columns = np.arange(left, left + width, dtype=np.int64)
    return (rows[:, None] * grid_width + columns[None, :]).reshape(-1)


class MultiBlockMaskCollator:
    """Collate examples with an inner collator and add I-JEPA's multi-block masks of the kept images.

    Returns the inner collator's batch (default `ViewCropCollator`: one uint8 ``(number, B, 3, size, size)``
    tensor per view group, ``labels``, ``num_skipped``) plus ``masks_context`` int64 ``(B, K_ctx)`` and
    ``masks_target`` int64 ``(num_targets, B, K_tgt)`` (see `MultiBlockMasks`), where ``B`` counts the examples with
    ``valid`` true (missing means valid): the images the inner collator keeps. Every mask holds more than
    ``min_keep`` patches.

    The grid is ``input_size // patch_size`` patches (``input_size`` in pixels, an int or ``(height, width)``); it
    must match the backbone's (the ViT-H/14 recipe: ``input_size=224, patch_size=14``, 16 x 16 patches).

    Per batch, one target block size and then one context block size (`block_size`). Per image (`sample_image_masks`):
    ``num_targets`` target blocks of the target size at uniform top-left corners, then one context block of the
    context size whose patches inside any target block are removed (unless ``allow_overlap``); a context placement
    that keeps ``min_keep`` patches or fewer is drawn again, and after ``tries_per_relaxation`` failures the last
    target block still excluded is let back in. The masks are then cut to the shortest in the batch so they stack.

    As upstream's ``MaskCollator``:

    - One uniform number ``u`` drives both the area and the aspect ratio (height / width) of a block:
      ``scale[0] + u * (scale[1] - scale[0])`` and ``aspect[0] + u * (aspect[1] - aspect[0])``, so large targets
      are also the tall ones.
    - A block is shrunk until it is strictly smaller than the grid, and its top-left corner is drawn from
      ``[0, grid_height - h)`` x ``[0, grid_width - w)``: the last row and column of patches are in no block.
      On a square grid the default context block is (H - 1) x (W - 1), so it always sits at the top-left corner.
    - Upstream's defaults differ (context scale (0.2, 0.8), target scale (0.2, 0.8), aspect (0.3, 3.0), 2 targets,
      ``min_keep=4``); the ones here are its ViT-H/14 recipe's. Upstream's context aspect ratio is fixed to 1.

    Unlike upstream, every draw (block sizes and positions) comes from one numpy generator per batch, there is one
    context block per image (upstream's ``nenc``, 1 in its recipes), and a config under which some block could never
    hold more than ``min_keep`` patches (upstream loops forever there) is a ``ValueError`` here.

    Seeding: when the examples carry an integer ``key`` (or ``index``) field, the batch's generator is seeded by
    ``(seed, keys of all its examples in order)``, invalid ones included: the masks are then a function of the
    sampler's batch alone, the same with any number of DataLoader workers and after a resume (`EpochShuffleSampler`
    keys ``epoch * len + index`` also give every epoch new masks). The field is dropped before the inner collator
    sees the examples. Without such a field one ``torch.randint`` draw from torch's global RNG seeds the generator,
    so ``torch.manual_seed`` makes it reproducible and DataLoader workers, which torch seeds apart, draw
    different masks. Either all examples of a batch carry the field or none does.
    """

    def __init__(
        self,
        input_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        *,
        num_targets: int = 4,
        target_scale: Sequence[float] = (0.15, 0.2),
        target_aspect_ratio: Sequence[float] = (0.75, 1.5),
        context_scale: Sequence[float] = (0.85, 1.0),
        context_aspect_ratio: Sequence[float] = (1.0, 1.0),
        min_keep: int = 10,
        allow_overlap: bool = False,
        seed: int = 0,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
        tries_per_relaxation: int = 20,
    ):
        patch_size = _integer("patch_size", patch_size, minimum=1)
        sides = _input_sides(input_size)
        for side_name, side in zip(("height", "width"), sides):
            if side % patch_size:
                raise ValueError(
                    f"input_size {side_name} {side} is not a multiple of patch_size {patch_size}: the patch grid "
                    "would drop pixels"
                )
        self.input_size = sides
        self.patch_size = patch_size
        self.height, self.width = (side // patch_size for side in sides)
        if self.height < 2 or self.width < 2:
            raise ValueError(
                f"the patch grid is {self.height} x {self.width} (input_size {sides} // patch_size {patch_size}); a "
                "block must be smaller than the grid in both directions, so the grid needs at least 2 x 2 patches"
            )
        self.num_targets = _integer("num_targets", num_targets, minimum=1)
        self.target_scale = _range("target_scale", target_scale, fraction=True)
        self.target_aspect_ratio = _range("target_aspect_ratio", target_aspect_ratio, fraction=False)
        self.context_scale = _range("context_scale", context_scale, fraction=True)
        self.context_aspect_ratio = _range("context_aspect_ratio", context_aspect_ratio, fraction=False)
        self.min_keep = _integer("min_keep", min_keep, minimum=0)
        if not isinstance(allow_overlap, bool):
            raise ValueError(f"allow_overlap must be True or False, got {allow_overlap!r}")
        self.allow_overlap = allow_overlap
        self.seed = _integer("seed", seed, minimum=0, maximum=_MAX_KEY - 1)
        self.tries_per_relaxation = _integer("tries_per_relaxation", tries_per_relaxation, minimum=1)
        if collator is not None and not callable(collator):
            raise ValueError(f"collator must be a callable taking a list of examples, got {type(collator).__name__}")
        self.collator = collator if collator is not None else ViewCropCollator()
        # A block that can hold no more than min_keep patches makes the draw loop forever: refuse such configs here,
        # not at some random batch of a long run.
        self._check_block_area("target", self.target_scale, self.target_aspect_ratio)
        self._check_block_area("context", self.context_scale, self.context_aspect_ratio)

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    # ----- pure drawing functions -------------------------------------------------------------------------
    def block_size(
        self, draw: float, scale: tuple[float, float], aspect_ratio: tuple[float, float]
    ) -> tuple[int, int]:
        """The ``(h, w)`` block, in patches, of the uniform number ``draw`` in [0, 1): about ``scale`` of the grid's
        patches with height / width about ``aspect_ratio``, both interpolated by ``draw``, rounded and shrunk to be
        strictly smaller than the grid."""
        fraction = scale[0] + draw * (scale[1] - scale[0])
        area = int(self.num_patches * fraction)
        ratio = aspect_ratio[0] + draw * (aspect_ratio[1] - aspect_ratio[0])
        h = int(round(math.sqrt(area * ratio)))
        w = int(round(math.sqrt(area / ratio)))
        return min(h, self.height - 1), min(w, self.width - 1)

    def sample_block_sizes(self, rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(target_size, context_size)`` of one batch, from two draws of ``rng``, targets first."""
        target_size = self.block_size(float(rng.random()), self.target_scale, self.target_aspect_ratio)
        context_size = self.block_size(float(rng.random()), self.context_scale, self.context_aspect_ratio)
        return target_size, context_size

    def sample_image_masks(
        self, target_size: tuple[int, int], context_size: tuple[int, int], rng: np.random.Generator
    ) -> ImageMasks:
        """The full (uncut) masks of one image: ``num_targets`` target blocks, then the context block (see
        `ImageMasks`).

        ``rng`` needs ``integers(low, high)`` (high excluded), as a ``numpy.random.Generator`` has; each placement
        draws the top row, then the left column.
        """
        if target_size[0] * target_size[1] <= self.min_keep:
            raise RuntimeError(f"a {target_size} target block cannot hold more than min_keep={self.min_keep} patches")
        targets = tuple(
            rectangle_indices(*self._place(target_size, rng), *target_size, self.width)
            for _ in range(self.num_targets)
        )
        excluded = 0 if self.allow_overlap else self.num_targets  # the first `excluded` targets are kept out
        failures = 0
        keep = self._outside(targets[:excluded])
        while True:
            context = rectangle_indices(*self._place(context_size, rng), *context_size, self.width)
            if keep is not None:
                context = context[keep[context]]
            if len(context) > self.min_keep:
                return ImageMasks(targets, context, (self.num_targets - excluded) if not self.allow_overlap else 0)
            failures += 1
            if failures == self.tries_per_relaxation:
                if excluded == 0:  # unreachable after __init__'s check: the bare block failed
                    raise RuntimeError(
                        f"a {context_size} context block cannot hold more than min_keep={self.min_keep} patches"
                    )
                # upstream's relaxation: drop the last target block still excluded and start counting again
                excluded -= 1
                failures = 0
                keep = self._outside(targets[:excluded])
                logger.debug(
                    "No context block of %s patches avoids all target blocks; now avoiding %d of them",
                    context_size,
                    excluded,
                )

    def sample_masks(self, batch_size: int, rng: np.random.Generator) -> MultiBlockMasks:
        """The masks of a batch of ``batch_size`` images: `sample_block_sizes`, then `sample_image_masks` for each
        image in turn, all from ``rng``, then every mask cut to the shortest of its kind in the batch (see
        `MultiBlockMasks`)."""
        batch_size = _integer("batch_size", batch_size, minimum=0)
        target_size, context_size = self.sample_block_sizes(rng)
        images = [self.sample_image_masks(target_size, context_size, rng) for _ in range(batch_size)]
        if not images:
            empty = torch.zeros((self.num_targets, 0, 0), dtype=torch.int64)
            return MultiBlockMasks(empty[0], empty, target_size, context_size, ())
        target_length = min(len(block) for image in images for block in image.targets)
        context_length = min(len(image.context) for image in images)
        target = np.stack(
            [np.stack([image.targets[j][:target_length] for image in images]) for j in range(self.num_targets)]
        )
        context = np.stack([image.context[:context_length] for image in images])
        return MultiBlockMasks(
            torch.from_numpy(context),
            torch.from_numpy(target),
            target_size,
            context_size,
            tuple(image.num_relaxed for image in images),
        )

    # ----- collation ----------------------------------------------------------------------------------------
    def batch_generator(self, examples: Sequence[dict[str, Any]]) -> np.random.Generator:
        """The generator of a batch's masks: seeded by ``seed`` and the examples' keys, or by torch's global RNG when
        they carry none (see the class docstring)."""
        keys = [_example_key(example, position) for position, example in enumerate(examples)]
        missing = sum(key is None for key in keys)
        if missing == len(keys):
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        if missing:
            raise ValueError(
                f"{len(keys) - missing} examples of the batch carry a seeding key ({' or '.join(KEY_FIELDS)}) and "
                f"{missing} do not: the masks would be seeded by part of the batch; give every example a key or none"
            )
        # Fixed-width 32-bit words with the count first: numpy's SeedSequence splits big ints into words and
        # ignores trailing zero words, so a plain (seed, *keys) tuple could give two batches one seed.
        values = [self.seed, len(keys), *keys]
        words = np.array([part for value in values for part in (value & 0xFFFFFFFF, value >> 32)], dtype=np.uint32)
        return np.random.default_rng(words)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("MultiBlockMaskCollator got an empty list of examples")
        rng = self.batch_generator(examples)
        batch = self.collator(
            [{name: value for name, value in example.items() if name not in KEY_FIELDS} for example in examples]
        )
        clashing = [key for key in MASK_KEYS if key in batch]
        if clashing:
            raise ValueError(f"the inner collator's batch already has {clashing}: rename that view group or field")
        num_kept = sum(1 for example in examples if example.get("valid", True))
        masks = self.sample_masks(num_kept, rng)
        batch["masks_context"] = masks.context
        batch["masks_target"] = masks.target
        return batch

    # ----- helpers --------------------------------------------------------------------------------------------
    def _place(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
        top = int(rng.integers(0, self.height - size[0]))
        left = int(rng.integers(0, self.width - size[1]))
        return top, left

    def _outside(self, blocks: Sequence[np.ndarray]) -> np.ndarray | None:
        """Boolean ``(H * W,)``: True for the patches in none of ``blocks``; None when there is no block to avoid."""
        if not blocks:
            return None
        keep = np.ones(self.num_patches, dtype=bool)
        for block in blocks:
            keep[block] = False
        return keep

    def _check_block_area(self, kind: str, scale: tuple[float, float], aspect_ratio: tuple[float, float]) -> None:
        # The same arithmetic as block_size, vectorised over a dense sweep of draws (numpy rounds half to even, as
        # Python's round does), plus the largest draw below 1.
        draws = np.append(np.arange(_SIZE_PROBES) / _SIZE_PROBES, np.nextafter(1.0, 0.0))
        areas = np.floor(self.num_patches * (scale[0] + draws * (scale[1] - scale[0])))
        ratios = aspect_ratio[0] + draws * (aspect_ratio[1] - aspect_ratio[0])
        h = np.minimum(np.round(np.sqrt(areas * ratios)), self.height - 1)
        w = np.minimum(np.round(np.sqrt(areas / ratios)), self.width - 1)
        smallest = int(np.argmin(h * w))
        if h[smallest] * w[smallest] <= self.min_keep:
            raise ValueError(
                f"{kind} blocks of {kind}_scale {scale} and {kind}_aspect_ratio {aspect_ratio} on a {self.height} x "
                f"{self.width} patch grid can be {int(h[smallest])} x {int(w[smallest])} = "
                f"{int(h[smallest] * w[smallest])} patches, not more than min_keep={self.min_keep}: no such block "
                f"could ever be kept; raise {kind}_scale or lower min_keep"
            )


def _integer(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be an integer {bound}, got {value}")
    return value


def _input_sides(input_size: Any) -> tuple[int, int]:
    if isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool):
        side = _integer("input_size", input_size, minimum=1)
        return side, side
    try:
        sides = tuple(input_size)
    except TypeError:
        raise ValueError(
            f"input_size must be a positive integer or a (height, width) pair of them, in pixels, got {input_size!r}"
        ) from None
    if len(sides) != 2:
        raise ValueError(
            f"input_size must be a positive integer or a (height, width) pair of them, in pixels, got {input_size!r}"
        )
    return _integer("input_size height", sides[0], minimum=1), _integer("input_size width", sides[1], minimum=1)


def _range(name: str, value: Any, fraction: bool) -> tuple[float, float]:
    """A ``(min, max)`` pair: fractions of the grid's patches in (0, 1], or aspect ratios (height / width) > 0."""
    allowed = (
        "0 < min <= max <= 1 (fractions of the grid's patches)"
        if fraction
        else "0 < min <= max (height / width ratios)"
    )
    try:
        low, high = (float(item) for item in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair with {allowed}, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high and (high <= 1 or not fraction)):
        raise ValueError(f"{name} must be a (min, max) pair with {allowed}, got {value!r}")
    return low, high


def _example_key(example: dict[str, Any], position: int) -> int | None:
    """The example's seeding key (the first of `KEY_FIELDS` it has) as a non-negative int, or None."""
    for name in KEY_FIELDS:
        if name in example:
            value = example[name]
            break
    else:
        return None
    if (
        isinstance(value, torch.Tensor)
        and value.numel() == 1
        and not value.is_floating_point()
        and value.dtype != torch.bool
    ):
        value = int(value.item())
    if isinstance(value, (bool, np.bool_)):
        value = None  # a flag is not a key; reported below
    try:
        key = operator.index(value)
    except TypeError:
        raise ValueError(
            f"the {name!r} of example {position} of the batch must be an integer (its sampler key), got "
            f"{example[name]!r}"
        ) from None
    if not 0 <= key < _MAX_KEY:
        raise ValueError(f"the {name!r} of example {position} of the batch must be in [0, 2**63), got {key}")
    return key
