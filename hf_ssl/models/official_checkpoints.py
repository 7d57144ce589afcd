"""What the converters of official checkpoints share (`ijepa/convert_ijepa_official.py`,
`dino/convert_dino_official.py`): reading the file safely, removing DistributedDataParallel's `module.` prefix,
reading a timm-style ViT's architecture from its weights, and copying official tensors into a model strictly (every
model tensor filled, every official tensor used, errors naming the key at fault).

The official ViTs of both codebases are timm-style: `patch_embed.proj` (a Conv2d), `pos_embed` (1, tokens, D),
`blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}` and a final `norm`, all LayerNorms with eps 1e-6.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

DDP_PREFIX = "module."
# every official I-JEPA and DINO ViT normalises with LayerNorm(eps=1e-6)
OFFICIAL_LAYER_NORM_EPS = 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# Reading a file
# ----------------------------------------------------------------------------------------------------------------------


def load_checkpoint_file(
    path: str | os.PathLike, weights_only: bool, method: str, safe_globals: Sequence[type] = ()
) -> object:
    """What `torch.load` reads from `path`, on the CPU.

    Args:
        path: the checkpoint file.
        weights_only: refuse anything but tensors, numbers, containers and the classes in `safe_globals`; `False`
            runs the code pickled in the file.
        method: the method's name for error messages ("I-JEPA", "DINO").
        safe_globals: classes the official checkpoint pickles that are safe to rebuild (DINO's `argparse.Namespace`).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: `torch.load` fails, saying how to load a trusted file that holds other Python objects.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {method} checkpoint file at {os.fspath(path)!r}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:
        if weights_only:
            raise ValueError(
                f"cannot read {os.fspath(path)!r} with torch.load(weights_only=True): {type(error).__name__}: "
                f"{error}. An official {method} checkpoint holds only tensors, numbers and containers; if this file "
                "holds other Python objects and you trust where it comes from, pass weights_only=False "
                "(--no_weights_only on the command line), which runs the code pickled in the file"
            ) from error
        raise ValueError(
            f"cannot read {os.fspath(path)!r} as a torch checkpoint: {type(error).__name__}: {error}"
        ) from error


def strip_ddp_prefix(state_dict: object, source: str) -> dict[str, torch.Tensor]:
    """`state_dict` with the `module.` prefix DistributedDataParallel adds removed from its keys.

    `source` names the state dict in error messages ("checkpoint 'x.pth'['student']"). Raises a `ValueError` when it
    is not a mapping of names to tensors, or holds a name both with and without the prefix.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source} must be a state dict (a dict of tensors), got a {type(state_dict).__name__}")
    stripped = {}
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{source} must map names to tensors; its entry {key!r} is a {type(tensor).__name__}")
        name = key.removeprefix(DDP_PREFIX)
        if name in stripped:
            raise ValueError(f"{source} holds both {name!r} and {key!r}: which one to load is ambiguous")
        stripped[name] = tensor
    return stripped


# ----------------------------------------------------------------------------------------------------------------------
# Reading a ViT's architecture from its weights
# ----------------------------------------------------------------------------------------------------------------------


def required_tensor(
    state_dict: Mapping[str, torch.Tensor], key: str, source: str, ndim: int, method: str
) -> torch.Tensor:
    """`state_dict[key]`, or a `ValueError` when it is absent or has not `ndim` dimensions. `source` names the state
    dict in messages ("the 'encoder' state dict")."""
    if key not in state_dict:
        raise ValueError(f"{source} has no {key!r}: it is not the official {method} layout")
    tensor = state_dict[key]
    if tensor.ndim != ndim:
        raise ValueError(
            f"{source}'s {key!r} has shape {tuple(tensor.shape)}; the official layout has {ndim} dimensions"
        )
    return tensor


def num_blocks(state_dict: Mapping[str, torch.Tensor], block_prefix: str, source: str, method: str) -> int:
    """1 + the largest block index under `block_prefix` (a gap shows up as a missing key when loading)."""
    indices = {int(match[1]) for key in state_dict if (match := re.match(rf"{re.escape(block_prefix)}\.(\d+)\.", key))}
    if not indices:
        raise ValueError(f"{source} has no {block_prefix}.<i>.* keys: it is not the official {method} layout")
    return max(indices) + 1


def vit_architecture(
    state_dict: Mapping[str, torch.Tensor], source: str, method: str, num_prefix_tokens: int
) -> dict[str, int | bool]:
    """The architecture of the official timm-style ViT whose state dict is `state_dict`, as `ViTConfig` /
    `IJepaConfig` keyword arguments: `hidden_size`, `num_hidden_layers`, `intermediate_size`, `patch_size`,
    `image_size`, `num_channels` and `qkv_bias`.

    The image size comes from the number of position embeddings: `pos_embed` is (1, num_prefix_tokens + (image_size /
    patch_size) ** 2, D), `num_prefix_tokens` being 1 for a CLS token (DINO) and 0 without one (I-JEPA).
    """
    position_embeddings = required_tensor(state_dict, "pos_embed", source, ndim=3, method=method)
    _, num_positions, hidden_size = position_embeddings.shape
    patch_weight = required_tensor(state_dict, "patch_embed.proj.weight", source, ndim=4, method=method)
    patch_size = patch_weight.shape[-1]
    square_patches = patch_weight.shape[-2] == patch_size
    if position_embeddings.shape[0] != 1 or patch_weight.shape[0] != hidden_size or not square_patches:
        raise ValueError(
            f"{source}: 'pos_embed' must be (1, tokens, hidden_size) and 'patch_embed.proj.weight' (hidden_size, "
            f"channels, patch_size, patch_size), got {tuple(position_embeddings.shape)} and "
            f"{tuple(patch_weight.shape)}"
        )
    num_patches = num_positions - num_prefix_tokens
    grid_side = math.isqrt(max(num_patches, 0))
    if num_patches < 1 or grid_side * grid_side != num_patches:
        prefix = f" after the {num_prefix_tokens} CLS token" if num_prefix_tokens else ""
        raise ValueError(
            f"{source}: 'pos_embed' holds {num_positions} positions, not{prefix} a square grid of patches as the "
            f"official {method} ViT's"
        )
    return {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_blocks(state_dict, "blocks", source, method),
        "intermediate_size": required_tensor(state_dict, "blocks.0.mlp.fc1.weight", source, 2, method).shape[0],
        "patch_size": patch_size,
        "image_size": grid_side * patch_size,
        "num_channels": patch_weight.shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
    }


def resolve_num_attention_heads(
    hidden_size: int, num_attention_heads: int | None, official_heads: Mapping[int, int], method: str
) -> int:
    """`num_attention_heads`, or when `None` that of the official ViT of width `hidden_size` (`official_heads`);
    a `ValueError` when neither gives a positive divisor of `hidden_size`."""
    if num_attention_heads is None:
        if hidden_size not in official_heads:
            raise ValueError(
                f"no official {method} ViT has width {hidden_size} (known: {dict(official_heads)}), so the number "
                "of attention heads is unknown: pass num_attention_heads (--num_attention_heads)"
            )
        num_attention_heads = official_heads[hidden_size]
    if not isinstance(num_attention_heads, int) or num_attention_heads < 1 or hidden_size % num_attention_heads:
        raise ValueError(
            f"num_attention_heads must be a positive integer that divides the width {hidden_size}, got "
            f"{num_attention_heads!r}"
        )
    return num_attention_heads


# ----------------------------------------------------------------------------------------------------------------------
# Copying tensors strictly
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfficialSource:
    """Where one model tensor comes from in an official state dict."""

    key: str
    # 0, 1 or 2: the query, key or value third of the rows of the fused `attn.qkv` tensor
    qkv_part: int | None = None
    # the official tensor has one more leading dimension of size 1 (I-JEPA's predictor position table)
    leading_one: bool = False


def official_tensors(
    targets: Mapping[str, torch.Tensor],
    official: Mapping[str, torch.Tensor],
    source_of: Callable[[str], OfficialSource],
    source: str,
    method: str,
    unused_hint: str = "",
) -> dict[str, torch.Tensor]:
    """`{target name: official tensor}` for every tensor of `targets`, each checked against its target's shape.

    Args:
        targets: the model tensors to fill, by name (e.g. a backbone's state dict).
        official: the official state dict they come from.
        source_of: the `OfficialSource` of a target name.
        source: the official state dict in messages ("the 'encoder' state dict").
        method: the method's name for messages.
        unused_hint: appended to the message for official keys that no target uses.

    Raises:
        ValueError: a needed official key is missing, has another shape than its target needs, or an official key
            is used by no target; the message names the keys.
    """
    converted, used = {}, set()
    for name, target in targets.items():
        official_source = source_of(name)
        converted[name] = _official_tensor(official, official_source, source, name, target.shape, method)
        used.add(official_source.key)
    unused = sorted(set(official) - used)
    if unused:
        hint = f" {unused_hint}" if unused_hint else ""
        raise ValueError(f"{source} has keys with no place in the model: {unused}.{hint}")
    return converted


def _official_tensor(
    official: Mapping[str, torch.Tensor],
    official_source: OfficialSource,
    source: str,
    name: str,
    shape: torch.Size,
    method: str,
) -> torch.Tensor:
    """The official tensor for model tensor `name`, cut to its rows (q, k, v) or squeezed, checked against `shape`."""
    if official_source.key not in official:
        raise ValueError(
            f"{source} has no {official_source.key!r} (needed for {name}); the checkpoint is incomplete or not of the "
            f"official {method} layout"
        )
    tensor = official[official_source.key]
    if official_source.qkv_part is not None:
        expected = (3 * shape[0], *shape[1:])
    elif official_source.leading_one:
        expected = (1, *shape)
    else:
        expected = tuple(shape)
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"{source}'s {official_source.key!r} has shape {tuple(tensor.shape)}, the model needs {expected} (for "
            f"{name}): it does not match the architecture read from the checkpoint (or num_attention_heads)"
        )
    if official_source.qkv_part is not None:
        return tensor.chunk(3, dim=0)[official_source.qkv_part]
    return tensor.reshape(shape)


# ----- the command lines of the converters -----------------------------------------------------------------------------
def add_weights_only_argument(parser) -> None:
    """``--no_weights_only``: the converters load with ``torch.load(weights_only=True)`` unless it is given."""
    parser.add_argument(
        "--no_weights_only", action="store_true",
        help="Load the file with torch.load(weights_only=False), which runs the code pickled in it: only for files "
        "you trust, when the default safe loading refuses them.",
    )


def save_converted(model, output_dir: str, processor_family: str):
    """Save a converted hf_ssl model and, beside it, the image processor of the official recipes (ImageNet mean and
    std at the encoder's image size, ``processor_family``'s processor class); returns that processor."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from .image_processing import build_image_processor

    image_processor = build_image_processor(
        processor_family, image_size=model.config.backbone_config.image_size,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
    )
    model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    print(f"Saved the hf_ssl {type(model).__name__} to {output_dir}")
    return image_processor

