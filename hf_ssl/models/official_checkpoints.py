"""What the converters of official checkpoints share (`ijepa/convert_ijepa_official.py`,
`dino/convert_dino_official.py`): reading the file safely and saying what it is when it cannot be read, telling one
method's checkpoint from the other's, removing DistributedDataParallel's `module.` prefix, reading a timm-style ViT's
architecture from its weights, copying official tensors into a model strictly (every model tensor filled, every
official tensor used, errors naming the key at fault), and writing the result to a folder that holds no other run.

The official ViTs of both codebases are timm-style: `patch_embed.proj` (a Conv2d), `pos_embed` (1, tokens, D),
`blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}` and a final `norm`, all LayerNorms with eps 1e-6.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DDP_PREFIX = "module."
# every official I-JEPA and DINO ViT normalises with LayerNorm(eps=1e-6)
OFFICIAL_LAYER_NORM_EPS = 1e-6
# the module that converts each method's official checkpoints, named when a file goes to the other converter
CONVERTER_MODULES = {
    "DINO": "hf_ssl.models.dino.convert_dino_official",
    "I-JEPA": "hf_ssl.models.ijepa.convert_ijepa_official",
}


# ---------------------------------------------------------------------------------------------------------------------
# Reading a file
# ---------------------------------------------------------------------------------------------------------------------

# the legacy (pre-zip) torch.save format starts with this pickled number; the zip format with the zip signature
TORCH_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[2:-1]
ZIP_SIGNATURE = b"PK\x03\x04"
# how many classes safe loading may refuse before a file's layout is read without them (each costs one more load)
MAX_REFUSED_CLASSES = 32


class PickledObjectsError(ValueError):
    """A checkpoint that `torch.load(weights_only=True)` refuses because it pickles objects of other classes.

    `contents` is what the file holds with each refused object replaced by an empty stand-in (no code of the file
    runs), so that a converter can tell a file of another layout before advising `weights_only=False`; `None` when
    even that cannot be read. `classes` names the refused classes.
    """

    def __init__(self, message: str, contents: object, classes: Sequence[str]):
        super().__init__(message)
        self.contents = contents
        self.classes = list(classes)


class _RefusedObject:
    """Stands for an object of a class that safe loading refuses, to read a file's layout: it keeps nothing and runs
    nothing (the unpickler calls it, its `__new__` or its `__setstate__`)."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def read_checkpoint(
    checkpoint: str | os.PathLike | object,
    weights_only: bool,
    method: str,
    read: Callable[[object, str], dict],
    safe_globals: Sequence[type] = (),
) -> dict:
    """``read(contents, source)`` of a checkpoint file (`load_checkpoint_file`) or of an already loaded object. A file
    that safe loading refuses for the classes it pickles is first read with stand-ins for them, so that a file of
    another layout is told so (``read`` raises) rather than advised to load with ``weights_only=False``."""
    source = (
        f"checkpoint {os.fspath(checkpoint)!r}" if isinstance(checkpoint, (str, os.PathLike)) else "the checkpoint"
    )
    if isinstance(checkpoint, (str, os.PathLike)):
        try:
            checkpoint = load_checkpoint_file(checkpoint, weights_only, method, safe_globals=safe_globals)
        except PickledObjectsError as error:
            if error.contents is not None:
                read(error.contents, source)
            raise
    return read(checkpoint, source)


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
        FileNotFoundError: no file at `path`; IsADirectoryError: `path` is a folder.
        PickledObjectsError: a readable checkpoint that `weights_only=True` refuses for the classes it pickles; the
            message says how to load it when it is trusted.
        ValueError: any other file `torch.load` cannot read, saying what the file is instead (empty, cut short, a
            zip archive of other files, text, an HTML page, ...).
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {os.fspath(path)!r} is a folder: give the {method} checkpoint file in it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {method} checkpoint file at {os.fspath(path)!r}")
    # told from the first bytes, before torch.load fails on them with an error that does not say what the file is
    not_a_checkpoint = describe_non_checkpoint(path)
    if not_a_checkpoint is not None:
        what, detail = not_a_checkpoint
        raise ValueError(f"checkpoint {os.fspath(path)!r} {what}, not an official {method} checkpoint: {detail}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:
        raise _unreadable_checkpoint_error(path, error, weights_only, method, safe_globals) from error


def _unreadable_checkpoint_error(
    path: str | os.PathLike, error: Exception, weights_only: bool, method: str, safe_globals: Sequence[type]
) -> ValueError:
    """The error for a file that starts as a checkpoint but that `torch.load` failed on with `error`; it advises
    `--no_weights_only` only for a sound checkpoint that safe loading refuses for the classes it pickles."""
    source = f"checkpoint {os.fspath(path)!r}"
    cause = _first_line(error)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if weights_only and isinstance(error, pickle.UnpicklingError) and refused:
        contents, classes = _read_without_refused_classes(path, refused[1], safe_globals)
        return PickledObjectsError(
            f"{source} pickles Python objects that torch.load(weights_only=True) refuses to rebuild "
            f"({', '.join(classes)}). An official {method} checkpoint holds only tensors, numbers and containers; if "
            "you trust where this file comes from, pass weights_only=False (--no_weights_only on the command line), "
            "which runs the code pickled in the file",
            contents,
            classes,
        )
    if weights_only and isinstance(error, pickle.UnpicklingError):  # e.g. a call into a module torch blocks
        return ValueError(
            f"{source} is not a plain checkpoint of tensors: torch.load(weights_only=True) refuses it ({cause})"
        )
    if isinstance(error, (EOFError, RuntimeError, zipfile.BadZipFile)):  # how torch reports missing or bad bytes
        return ValueError(
            f"{source} is a PyTorch checkpoint that cannot be read: it is damaged or cut short ({cause}); download or "
            "copy it again"
        )
    return ValueError(f"{source} cannot be read as a torch checkpoint: {cause}")


def describe_non_checkpoint(path: str | os.PathLike) -> tuple[str, str] | None:
    """What the file at `path` is when it is not a PyTorch checkpoint that `torch.save` wrote, from its first bytes:
    `(what it is, what to do or what shows it)`, e.g. `("is empty (0 bytes)", "the download or copy did not finish;
    fetch the file again")`; `None` when it starts as a checkpoint (a zip archive holding `data.pkl`, or the legacy
    format)."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        head = file.read(1024)
    if size == 0:
        return "is empty (0 bytes)", "the download or copy did not finish; fetch the file again"
    if head.startswith(ZIP_SIGNATURE):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return (
                f"is a truncated or corrupt zip archive ({size:,} bytes, no readable table of contents at its end)",
                "the download or copy did not finish, or the file was damaged; fetch it again",
            )
        if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return None
        return f"is a zip archive of other files ({_first(sorted(names), 5)})", "torch.save writes a data.pkl in it"
    if TORCH_LEGACY_MAGIC in head[:32]:
        return None
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return "is a Python pickle that torch.save did not write", "it lacks the header torch.save writes"
    if head.startswith(b"\x1f\x8b"):
        return "is a gzip-compressed file", "extract the checkpoint from it first"
    if head[257:262] == b"ustar":
        return "is a tar archive", "extract the checkpoint from it first (tar -xf)"
    if head.startswith(b"\x93NUMPY"):
        return "is a NumPy array file (.npy)", "numpy.save wrote it"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return (
            "is a safetensors file",
            "a model saved by transformers or hf_ssl loads with from_pretrained on its folder, without conversion",
        )
    text = _as_text(head)
    if text is None:
        return f"is of an unknown format (its first bytes: {head[:8].hex(' ')})", "torch.save writes a zip archive"
    if text.startswith("version https://git-lfs"):
        return "is a Git LFS pointer", "it stands for the real file: fetch that with git lfs pull"
    if re.match(r"\s*<(!doctype html|html)", text, re.IGNORECASE):
        return "is an HTML page", "the download saved a web page (an error, login or other page) instead of the file"
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return "is a text file", f"it starts with {first_line[:60]!r}; torch.save writes binary files"


def _as_text(head: bytes) -> str | None:
    """`head` decoded as UTF-8 when it reads as text (no NUL, printable characters), else `None`."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # an invalid byte, not a character cut at the end of the 1024 bytes
            return None
        text = head[: error.start].decode("utf-8")
    if "\x00" in text or not all(character.isprintable() or character.isspace() for character in text):
        return None
    return text


def _read_without_refused_classes(
    path: str | os.PathLike, first_refused: str, safe_globals: Sequence[type]
) -> tuple[object, list[str]]:
    """What the file holds with every class that safe loading refuses replaced by an empty `_RefusedObject`
    (`None` when it still cannot be read), and the names of those classes, `first_refused` first."""
    refused = [first_refused]
    while len(refused) <= MAX_REFUSED_CLASSES:
        stand_ins = [(type(name.rsplit(".", 1)[-1], (_RefusedObject,), {}), name) for name in refused]
        try:
            with torch.serialization.safe_globals([*safe_globals, *stand_ins]):
                # memory-mapped where the format allows, so that reading the layout does not load the tensors
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)), refused
        except pickle.UnpicklingError as error:
            match = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            if match is None or match[1] in refused:
                break
            refused.append(match[1])
        except Exception:  # the stand-ins do not fit how the file uses the class: the layout stays unknown
            break
    return None, refused


def official_layout(checkpoint: object) -> tuple[str, str] | None:
    """`(method, description)` when `checkpoint` (what a file holds) is laid out as an official checkpoint of DINO or
    I-JEPA, e.g. `("I-JEPA", "'encoder', 'predictor' and 'target_encoder' state dicts")`; `None` otherwise."""
    if not isinstance(checkpoint, Mapping):
        return None
    # what the official code saves together: a lone 'encoder' or 'student' could come from anywhere
    if sum(isinstance(checkpoint.get(name), Mapping) for name in ("encoder", "predictor", "target_encoder")) >= 2:
        return "I-JEPA", "'encoder', 'predictor' and 'target_encoder' state dicts"
    if all(isinstance(checkpoint.get(name), Mapping) for name in ("student", "teacher")):
        return "DINO", "'student' and 'teacher' networks, as main_dino.py saves"
    tensors = {key.removeprefix(DDP_PREFIX): value for key, value in checkpoint.items() if isinstance(key, str)}
    classifier = any(
        key.startswith("head.") and isinstance(value, torch.Tensor) and value.numel() for key, value in tensors.items()
    )
    # a ViT backbone with a CLS token and no classifier; the official I-JEPA ViT has no CLS token
    if {"cls_token", "pos_embed"} <= set(tensors) and not classifier:
        return "DINO", "a ViT backbone with a CLS token, as dino_vits16_pretrain.pth"
    wrapped = [checkpoint[key] for key in ("state_dict", "model") if isinstance(checkpoint.get(key), Mapping)]
    return official_layout(wrapped[0]) if len(wrapped) == 1 else None


def refuse_other_methods_checkpoint(checkpoint: object, source: str, method: str) -> None:
    """A `ValueError` when `checkpoint` is laid out as the official checkpoint of another method than `method`,
    naming the converter that takes it."""
    layout = official_layout(checkpoint)
    if layout is not None and layout[0] != method:
        other, description = layout
        raise ValueError(
            f"{source} is an official {other} checkpoint ({description}), which the {method} converter does not "
            f"take: convert it with python -m {CONVERTER_MODULES[other]}"
        )


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _first(names: Sequence[str], count: int) -> str:
    return ", ".join(names[:count]) + (f" and {len(names) - count} more" if len(names) > count else "")


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


# ---------------------------------------------------------------------------------------------------------------------
# Reading a ViT's architecture from its weights
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Copying tensors strictly
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Writing the converted model
# ---------------------------------------------------------------------------------------------------------------------

# what a saved model or training run leaves at the top of its folder: overwriting deletes only a folder holding one
RUN_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "preprocessor_config.json",
)
RUN_CHECKPOINT_FOLDER = re.compile(r"checkpoint-\d+")


def check_output_folders(
    output_dir: str | os.PathLike,
    backbone_dir: str | os.PathLike | None,
    overwrite: bool,
    checkpoint: object = None,
) -> dict[Path, list[Path]]:
    """Before converting: the folders a conversion writes, each with the entries that `clear_output_folders` deletes
    before saving (none when the folder is new or empty).

    A folder holding anything is refused without `overwrite`: the conversion would replace another run's model and
    leave that run's recipe, model card and checkpoints beside it. With `overwrite` its whole contents go, so that no
    other run's files stay mixed in, but only where that cannot be a mistaken path: a folder with a saved model or run
    in it (one of `RUN_FILES` or a `checkpoint-<step>` folder at its top), not holding the file being converted nor a
    git repository, and not the current folder, one above it or the home folder.

    Args:
        output_dir: where the converted model goes.
        backbone_dir: where the plain backbone goes (`None`: not exported); when it lies inside `output_dir`, checking
            `output_dir` covers it.
        overwrite: delete the previous contents of the folders (see above).
        checkpoint: the file being converted (a path; anything else is not a file), never deleted.

    Raises:
        FileExistsError: a folder that is a file, that holds entries without `overwrite`, or that `overwrite` does not
            clear; `backbone_dir` that is `output_dir` or holds it. The message names the folder and what it holds.
    """
    output_folder = Path(output_dir)
    folders = {"output_dir": output_folder}
    if backbone_dir is not None:
        backbone_folder = Path(backbone_dir)
        if output_folder.resolve().is_relative_to(backbone_folder.resolve()):
            raise FileExistsError(
                f"backbone_dir {str(backbone_folder)!r} is or holds output_dir {str(output_folder)!r}: the plain "
                "backbone would replace the converted model's files; give it a folder of its own (the default is "
                "<output_dir>/backbone)"
            )
        if not backbone_folder.resolve().is_relative_to(output_folder.resolve()):
            folders["backbone_dir"] = backbone_folder
    return {folder: _entries_to_replace(folder, name, overwrite, checkpoint) for name, folder in folders.items()}


def clear_output_folders(entries_by_folder: Mapping[Path, Sequence[Path]]) -> None:
    """Delete the entries `check_output_folders` found (after converting, so that a failed conversion deletes
    nothing), saying so."""
    for folder, entries in entries_by_folder.items():
        if not entries:
            continue
        logger.warning("overwrite: deleting the previous contents of %s: %s", folder, _listing(entries))
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:  # a file, or a link, which goes without what it points to
                entry.unlink()


def _entries_to_replace(folder: Path, name: str, overwrite: bool, checkpoint: object) -> list[Path]:
    """The entries of `folder` (`name`: its argument), once `check_output_folders`' rules allow deleting them."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{name} {str(folder)!r} is a file, not a folder: choose another {name}")
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if not entries:
        return []
    holds = f"{name} {str(folder)!r} holds {_listing(entries)}"
    if not overwrite:
        raise FileExistsError(
            f"{name} {str(folder)!r} is not empty: it holds {_listing(entries)}. Saving the converted model there "
            f"would replace files of another model or run and leave the rest beside it: choose a new or empty {name}, "
            "or pass overwrite=True (--overwrite on the command line) to delete its contents first"
        )
    resolved = folder.resolve()
    if resolved in (Path.home().resolve(), Path(resolved.anchor)) or Path.cwd().resolve().is_relative_to(resolved):
        raise FileExistsError(
            f"{name} {str(folder)!r} is the current folder, a folder above it or the home folder: overwrite does not "
            "delete its contents; choose a folder of its own for the converted model"
        )
    if isinstance(checkpoint, (str, os.PathLike)) and Path(checkpoint).resolve().is_relative_to(resolved):
        raise FileExistsError(
            f"{name} {str(folder)!r} holds the checkpoint being converted ({os.fspath(checkpoint)!r}), which "
            f"overwrite would delete: choose another {name}"
        )
    if (folder / ".git").exists():
        raise FileExistsError(
            f"{holds}, a git repository: overwrite does not delete it; empty it yourself or choose another {name}"
        )
    if not any(entry.name in RUN_FILES or RUN_CHECKPOINT_FOLDER.fullmatch(entry.name) for entry in entries):
        raise FileExistsError(
            f"{holds}, but no saved model or run ({', '.join(RUN_FILES[:2])}, checkpoint-<step>, ...): overwrite "
            f"deletes only a previous model or run, not other files; empty it yourself or choose another {name}"
        )
    return entries


def _listing(entries: Sequence[Path], count: int = 8) -> str:
    return _first([entry.name + ("/" if entry.is_dir() else "") for entry in entries], count)


def save_converted(model, output_dir: str | os.PathLike, processor_family: str):
    """Save a converted hf_ssl model and, beside it, the image processor of the official recipes (ImageNet mean and
    std at the encoder's image size, ``processor_family``'s processor class); returns that processor."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from .image_processing import build_image_processor

    image_processor = build_image_processor(
        processor_family,
        image_size=model.config.backbone_config.image_size,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )
    model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    print(f"Saved the hf_ssl {type(model).__name__} to {output_dir}")
    return image_processor


# ----- the command lines of the converters ---------------------------------------------------------------------------
def add_shared_arguments(parser) -> None:
    """The options both converters end with: ``--overwrite`` and ``--no_weights_only``."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Delete the contents of a non-empty --output_dir (and --backbone_dir) before saving: a previous model or "
        "run, never another kind of folder. Without it, a non-empty folder is refused.",
    )
    parser.add_argument(
        "--no_weights_only",
        action="store_true",
        help="Load the file with torch.load(weights_only=False), which runs the code pickled in it: only for files "
        "you trust, when the default safe loading refuses them.",
    )


def exit_with_error(parser, error: Exception) -> None:
    """End the command line on `error` as ``error: <message>`` on one line, exit status 2, without a traceback."""
    parser.exit(2, f"error: {' '.join(str(error).split())}\n")
