"""Import a checkpoint of the official DINO code (facebookresearch/dino) as a `DinoForPreTraining`, to continue
pretraining it with hf_ssl, or as a plain transformers `ViTModel`, for features and fine-tuning without hf_ssl.

Two layouts are read, told apart by their keys:

- the training checkpoint of `main_dino.py` (`checkpoint.pth`, and the released `*_full_checkpoint.pth` files): a
  dict with the `student` and `teacher` state dicts, each of a MultiCropWrapper (`backbone.*` and `head.*`; a
  `module.` prefix when saved from DistributedDataParallel), `dino_loss` (the teacher `center`, imported into
  `DinoLoss.center`), and the training state (`optimizer`, `epoch`, `args`, `fp16_scaler`), which is not converted;
- a backbone alone (the released `dino_vits16_pretrain.pth`, `dino_vitb16_pretrain.pth`, ...): the state dict of
  the official VisionTransformer, the teacher's in the released files. It fills both backbones; the heads start
  fresh.

A dict holding one state dict under `state_dict` or `model` is read as that state dict.

Official names (timm-style ViT with a CLS token)   transformers ViTModel (its state_dict)
  cls_token (1, 1, D)                              embeddings.cls_token
  pos_embed (1, 1 + N, D)                          embeddings.position_embeddings
  patch_embed.proj                                 embeddings.patch_embeddings.projection
  blocks.i.norm1 / norm2                           layers.i.layernorm_before / layernorm_after
  blocks.i.attn.qkv (3 D rows: q, k, v)            layers.i.attention.q_proj / k_proj / v_proj
  blocks.i.attn.proj                               layers.i.attention.o_proj
  blocks.i.mlp.fc1 / fc2                           layers.i.mlp.fc1 / fc2
  norm                                             layernorm

transformers 5 saves a ViT (`model.safetensors`) under the names of its earlier versions, those of published ViT
checkpoints: `layers.i` as `encoder.layer.i`, `attention.{q,k,v}_proj` as `attention.attention.{query,key,value}`,
`attention.o_proj` as `attention.output.dense`, `mlp.fc1` / `mlp.fc2` as `intermediate.dense` / `output.dense`.

In `DinoForPreTraining` the backbones sit under `student.backbone.` and `teacher.backbone.`, and the heads:

Official DINOHead (head.*)                       hf_ssl DinoHead ({student,teacher}.head.*)
  mlp.0, mlp.2, mlp.4 (Linear, GELU between)     mlp.0, mlp.2, mlp.4
  mlp.0, mlp.1 (BatchNorm1d), mlp.3, ...         the same indices (use_bn_in_head)
  mlp (one Linear, when nlayers is 1)            mlp.0
  last_layer.weight_g / weight_v                 last_layer.parametrizations.weight.original0 / original1
    (last_layer.parametrizations.weight.original0 / original1 when saved by newer PyTorch)
dino_loss: center (1, out_dim)                   loss.center

Both heads are weight-normalised the same way (weight = g * v / ||v|| row by row), so g and v are copied as they are.
The architecture is read from the weights (width, depth, MLP width, patch size, channels, q/k/v biases, image size
from the number of position embeddings; the head's layers, widths, BatchNorm and number of prototypes) except the
number of attention heads, which weights do not show: it defaults to the official ViT of that width
(`OFFICIAL_NUM_ATTENTION_HEADS`). `norm_last_layer` is true when the student's g is 1 everywhere, as the official
code keeps it.

Command line (writes `DinoForPreTraining` to output_dir and the plain `ViTModel` of the teacher, or of the student, to
output_dir/backbone; from Python, `convert_dino_checkpoint_to_folder`):

    python -m hf_ssl.models.dino.convert_dino_official --checkpoint dino_vits16_pretrain.pth \\
        --output_dir dino-vits16 [--num_attention_heads 6] [--export_backbone teacher|student] [--overwrite]

A non-empty output_dir is refused unless `--overwrite`, which deletes its contents (a previous model or run) once the
conversion succeeded, so that no other run's files stay beside the converted model.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping

import torch
from transformers import ViTConfig, ViTModel

from ..backbone import export_backbone
from ..official_checkpoints import (
    OFFICIAL_LAYER_NORM_EPS,
    OfficialSource,
    add_shared_arguments,
    check_output_folders,
    clear_output_folders,
    exit_with_error,
    official_tensors,
    read_checkpoint,
    refuse_other_methods_checkpoint,
    resolve_num_attention_heads,
    save_converted,
    strip_ddp_prefix,
    vit_architecture,
)
from .configuration_dino import DinoConfig
from .modeling_dino import DinoForPreTraining

logger = logging.getLogger(__name__)

METHOD = "DINO"
# the two networks of a training checkpoint, under these names in the official dict and in DinoForPreTraining
NETWORKS = ("student", "teacher")
LOSS_STATE_KEY = "dino_loss"
# what a training checkpoint holds besides the weights; read past, not converted
TRAINING_STATE_KEYS = ("optimizer", "epoch", "args", "fp16_scaler")
# keys under which other code keeps a state dict; a dict with one of them is read as the state dict inside
WRAPPER_KEYS = ("state_dict", "model")
# attention heads of the official DINO ViTs by width: vit_tiny 3, vit_small 6, vit_base 12
OFFICIAL_NUM_ATTENTION_HEADS = {192: 3, 384: 6, 768: 12}
BACKBONE_PREFIX, HEAD_PREFIX = "backbone.", "head."

# transformers ViTModel name -> official name, outside the blocks
VIT_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# inside block i: transformers ViTLayer module -> official Block module (q, k and v come from the fused attn.qkv)
BLOCK_MODULES = {
    "layernorm_before": "norm1",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
QKV_PARTS = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
# hf_ssl DinoHead name -> the official names it may have: the weight norm's g and v by the PyTorch API that saved them
LAST_LAYER_NAMES = {
    f"last_layer.parametrizations.weight.original{index}": (
        f"last_layer.weight_{name}",
        f"last_layer.parametrizations.weight.original{index}",
    )
    for index, name in ((0, "g"), (1, "v"))
}
UNUSED_HINT = "Is it a checkpoint of the official DINO ViT and DINOHead (no extra modules)? Only ViT backbones convert"


def vit_source(name: str) -> OfficialSource:
    """The official VisionTransformer tensor that transformers `ViTModel` tensor `name` comes from."""
    block = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if block:
        index, module, tensor = block.groups()
        attention = re.fullmatch(r"attention\.([qkv]_proj)", module)
        if attention:
            return OfficialSource(f"blocks.{index}.attn.qkv.{tensor}", qkv_part=QKV_PARTS[attention[1]])
        if module in BLOCK_MODULES:
            return OfficialSource(f"blocks.{index}.{BLOCK_MODULES[module]}.{tensor}")
    if name in VIT_NAMES:
        return OfficialSource(VIT_NAMES[name])
    raise ValueError(
        f"the transformers ViTModel tensor {name!r} has no counterpart in the official DINO VisionTransformer: the "
        "converter does not know this version of transformers' ViTModel"
    )


def head_source(name: str, official_head: Mapping[str, torch.Tensor]) -> OfficialSource:
    """The official DINOHead tensor (a name in `official_head`, the head's state dict) that hf_ssl `DinoHead` tensor
    `name` comes from."""
    if name in LAST_LAYER_NAMES:
        candidates = LAST_LAYER_NAMES[name]
        return OfficialSource(next((key for key in candidates if key in official_head), candidates[0]))
    if name.startswith("mlp.0.") and "mlp.weight" in official_head:  # nlayers=1: the official mlp is one Linear
        return OfficialSource("mlp." + name.removeprefix("mlp.0."))
    return OfficialSource(name)


def network_source(name: str, official_network: Mapping[str, torch.Tensor]) -> OfficialSource:
    """The official MultiCropWrapper tensor that `DinoNetwork` tensor `name` (`backbone.*` or `head.*`) comes from."""
    if name.startswith(BACKBONE_PREFIX):
        source = vit_source(name.removeprefix(BACKBONE_PREFIX))
        return OfficialSource(BACKBONE_PREFIX + source.key, qkv_part=source.qkv_part)
    if name.startswith(HEAD_PREFIX):
        head = _sub_state_dict(official_network, HEAD_PREFIX)
        return OfficialSource(HEAD_PREFIX + head_source(name.removeprefix(HEAD_PREFIX), head).key)
    raise ValueError(f"the DinoNetwork tensor {name!r} is neither a backbone nor a head tensor")


# ---------------------------------------------------------------------------------------------------------------------
# Reading the checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def read_dino_checkpoint(
    checkpoint: str | os.PathLike | Mapping, weights_only: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of an official DINO checkpoint, in the official MultiCropWrapper names, `module.` removed.

    Args:
        checkpoint: a path to the file the official code saved (`.pth`), or the dict it holds: a training checkpoint
            of `main_dino.py`, a backbone state dict (`dino_vits16_pretrain.pth`), the state dict of one
            MultiCropWrapper, or a dict with one of them under `state_dict` or `model`.
        weights_only: load the file with `torch.load(weights_only=True)`, which refuses anything but tensors,
            numbers, containers and the `argparse.Namespace` of `args` (an official checkpoint holds nothing else).
            `False` runs the file's pickled code: only for files you trust.

    Returns:
        `{"student": ..., "teacher": ..., "dino_loss": ...}` with the entries the checkpoint has (at least one
        network): each network `{"backbone.<official ViT key>": tensor, "head.<official DINOHead key>": tensor}`,
        `dino_loss` `{"center": tensor}`. A backbone alone (or one MultiCropWrapper) comes back as the `teacher`.

    Raises:
        FileNotFoundError: no file at `checkpoint`.
        ValueError: the file cannot be read (saying what it is: empty, cut short, text, ...), is an official I-JEPA
            checkpoint, or has neither layout, naming its top-level keys; a `PickledObjectsError` when it has a DINO
            layout but pickles classes that `weights_only=True` refuses.
    """
    return read_checkpoint(checkpoint, weights_only, METHOD, _read_checkpoint, safe_globals=(argparse.Namespace,))


def _read_checkpoint(checkpoint: object, source: str) -> dict[str, dict[str, torch.Tensor]]:
    refuse_other_methods_checkpoint(checkpoint, source, METHOD)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{source} is not an official DINO checkpoint: expected a dict (a training checkpoint with 'student' and "
            f"'teacher' state dicts, or a backbone state dict), got a {type(checkpoint).__name__}"
        )
    return _read_layout(checkpoint, source)


def _read_layout(checkpoint: Mapping, source: str) -> dict[str, dict[str, torch.Tensor]]:
    if any(checkpoint.get(name) is not None for name in NETWORKS):
        return _read_training_checkpoint(checkpoint, source)
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        logger.info("%s is a single network's state dict: reading it as the teacher", source)
        return {"teacher": _multicrop_state_dict(checkpoint, source)}
    wrapped = [key for key in WRAPPER_KEYS if isinstance(checkpoint.get(key), Mapping)]
    if len(wrapped) == 1:
        ignored = sorted(set(checkpoint) - set(wrapped), key=str)
        if ignored:
            logger.info("%s: ignoring entries beside %r: %s", source, wrapped[0], ignored)
        return _read_layout(checkpoint[wrapped[0]], f"{source}[{wrapped[0]!r}]")
    raise ValueError(
        f"{source} is not an official DINO checkpoint: expected a training checkpoint of main_dino.py (a dict with "
        "'student' and 'teacher' state dicts) or the state dict of a DINO ViT backbone ('cls_token', 'pos_embed', "
        f"'patch_embed.proj.weight', 'blocks.<i>.*', as in dino_vits16_pretrain.pth); its top-level keys: "
        f"{_first(sorted(map(str, checkpoint)))}"
    )


def _read_training_checkpoint(checkpoint: Mapping, source: str) -> dict[str, dict[str, torch.Tensor]]:
    state_dicts = {
        name: _multicrop_state_dict(checkpoint[name], f"{source}[{name!r}]")
        for name in NETWORKS
        if checkpoint.get(name) is not None
    }
    if checkpoint.get(LOSS_STATE_KEY) is not None:
        state_dicts[LOSS_STATE_KEY] = strip_ddp_prefix(checkpoint[LOSS_STATE_KEY], f"{source}[{LOSS_STATE_KEY!r}]")
    ignored = sorted(set(checkpoint) - set(NETWORKS) - {LOSS_STATE_KEY} - set(TRAINING_STATE_KEYS), key=str)
    if ignored:
        logger.info("%s: ignoring entries that are not DINO weights: %s", source, ignored)
    return state_dicts


def _multicrop_state_dict(state_dict: object, source: str) -> dict[str, torch.Tensor]:
    """A network's state dict in the names of the official MultiCropWrapper (`backbone.*`, `head.*`): as it is when
    it has them, else read as a VisionTransformer alone, whose keys move under `backbone.`."""
    state_dict = strip_ddp_prefix(state_dict, source)
    if any(key.startswith((BACKBONE_PREFIX, HEAD_PREFIX)) for key in state_dict) and "pos_embed" not in state_dict:
        return state_dict
    if "pos_embed" not in state_dict and "cls_token" not in state_dict:
        raise ValueError(
            f"{source} is not the state dict of an official DINO network: it has neither 'backbone.*' keys (a "
            f"MultiCropWrapper) nor 'cls_token' and 'pos_embed' (a ViT backbone); its keys: "
            f"{_first(sorted(state_dict))}. Only the ViT checkpoints of DINO convert"
        )
    # the official backbone's classifier is an nn.Identity (num_classes=0): at most empty tensors, which hold nothing
    classifier = sorted(key for key in state_dict if key.startswith(HEAD_PREFIX))
    if any(state_dict[key].numel() for key in classifier):
        raise ValueError(
            f"{source} holds a classifier {classifier} beside the ViT backbone; DINO has none there (the official "
            "backbone's head is an nn.Identity): remove these keys to convert the backbone"
        )
    if classifier:
        logger.info("%s: dropping the empty classifier tensors %s", source, classifier)
    return {BACKBONE_PREFIX + key: tensor for key, tensor in state_dict.items() if key not in classifier}


def _sub_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): tensor for key, tensor in state_dict.items() if key.startswith(prefix)}


def _has_head(network: Mapping[str, torch.Tensor]) -> bool:
    return any(key.startswith(HEAD_PREFIX) for key in network)


def _first(keys: list[str], count: int = 20) -> str:
    return f"{keys[:count]}{f' and {len(keys) - count} more' if len(keys) > count else ''}"


# ---------------------------------------------------------------------------------------------------------------------
# The architecture
# ---------------------------------------------------------------------------------------------------------------------


def dino_vit_config(
    network: Mapping[str, torch.Tensor], num_attention_heads: int | None = None, source: str = "the network"
) -> ViTConfig:
    """The transformers `ViTConfig` of the official ViT in `network` (a `read_dino_checkpoint` network).

    Args:
        network: `{"backbone.<official key>": tensor, ...}`.
        num_attention_heads: the heads, which the weights do not show; `None` takes the official DINO ViT of that
            width (`OFFICIAL_NUM_ATTENTION_HEADS`: 192 -> 3, 384 -> 6, 768 -> 12); another width needs it.
        source: the network in error messages.

    Returns:
        The config: LayerNorm eps 1e-6, exact GELU, no dropout, as the official ViT.
    """
    architecture = vit_architecture(
        _sub_state_dict(network, BACKBONE_PREFIX),
        f"{source}'s backbone ({BACKBONE_PREFIX}*)",
        METHOD,
        num_prefix_tokens=1,
    )
    return ViTConfig(
        **architecture,
        num_attention_heads=resolve_num_attention_heads(
            architecture["hidden_size"], num_attention_heads, OFFICIAL_NUM_ATTENTION_HEADS, METHOD
        ),
        layer_norm_eps=OFFICIAL_LAYER_NORM_EPS,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def dino_pretraining_config(
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    num_attention_heads: int | None = None,
    **config_kwargs,
) -> DinoConfig:
    """The `DinoConfig` of the model the official state dicts fill.

    Args:
        state_dicts: `read_dino_checkpoint`'s output. The backbone is read from the `teacher` (else the `student`),
            the head from the `student` (else the `teacher`) when the networks have heads.
        num_attention_heads: see `dino_vit_config`.
        **config_kwargs: further `DinoConfig` arguments (`teacher_temperature`, `center_momentum`, ...). The head
            sizes (`out_dim`, `head_hidden_dim`, `head_bottleneck_dim`, `head_num_layers`, `head_use_bn`) are read
            from a checkpoint's head and only apply when it has none; `norm_last_layer` defaults to whether the
            head's g is 1 everywhere. The backbone comes from the weights alone.

    Raises:
        ValueError: a head that `DinoHead` cannot hold, a `config_kwargs` head size that differs from the
            checkpoint's, `norm_last_layer=True` with a g that is not 1, or a `backbone_config`.
    """
    if "backbone_config" in config_kwargs:
        raise ValueError(
            "`backbone_config` is read from the checkpoint's weights; pass `num_attention_heads` for the one number "
            "the weights do not show"
        )
    backbone_name = "teacher" if "teacher" in state_dicts else "student"
    backbone_config = dino_vit_config(
        state_dicts[backbone_name], num_attention_heads, f"the {backbone_name!r} network"
    )
    head_name = next((name for name in NETWORKS if name in state_dicts and _has_head(state_dicts[name])), None)
    if head_name is not None:
        head = _sub_state_dict(state_dicts[head_name], HEAD_PREFIX)
        config_kwargs.update(_head_sizes(head, f"the {head_name!r} head", config_kwargs))
    return DinoConfig(backbone_config=backbone_config, **config_kwargs)


def _head_sizes(head: Mapping[str, torch.Tensor], source: str, config_kwargs: Mapping) -> dict:
    """The `DinoConfig` head arguments of an official DINOHead state dict."""
    linear_weights = {}
    for key, tensor in head.items():
        match = re.fullmatch(r"mlp(?:\.(\d+))?\.weight", key)
        if match and tensor.ndim == 2:  # a BatchNorm1d's weight has 1 dimension
            linear_weights[int(match[1] or 0)] = tensor
    magnitude_key = head_source("last_layer.parametrizations.weight.original0", head).key
    direction_key = head_source("last_layer.parametrizations.weight.original1", head).key
    if not linear_weights or direction_key not in head or magnitude_key not in head:
        raise ValueError(
            f"{source} is not an official DINOHead: it needs 'mlp.<i>.weight' Linear layers and a weight-normalised "
            "'last_layer' ('weight_g' and 'weight_v', or 'parametrizations.weight.original0' and 'original1'); its "
            f"keys: {_first(sorted(head))}"
        )
    layers = [linear_weights[index] for index in sorted(linear_weights)]
    direction, magnitude = head[direction_key], head[magnitude_key]
    if direction.ndim != 2 or magnitude.shape != (direction.shape[0], 1):
        raise ValueError(
            f"{source}: the last layer's v ({direction_key!r}) must be (out_dim, bottleneck_dim) and g "
            f"({magnitude_key!r}) (out_dim, 1), got {tuple(direction.shape)} and {tuple(magnitude.shape)}"
        )
    sizes = {
        "out_dim": direction.shape[0],
        "head_bottleneck_dim": layers[-1].shape[0],
        "head_num_layers": len(layers),
        "head_use_bn": any(re.fullmatch(r"mlp\.\d+\.running_mean", key) for key in head),
    }
    if len(layers) > 1:  # with one layer there is no hidden width
        sizes["head_hidden_dim"] = layers[0].shape[0]
    for name, value in sizes.items():
        if name in config_kwargs and config_kwargs[name] != value:
            raise ValueError(
                f"{name}={config_kwargs[name]!r} differs from the checkpoint's head ({value!r}); leave it out, the "
                "head's sizes are read from its weights"
            )
    unit_magnitude = bool((magnitude == 1).all())
    norm_last_layer = config_kwargs.get("norm_last_layer", unit_magnitude)
    if norm_last_layer and not unit_magnitude:
        raise ValueError(
            f"norm_last_layer=True keeps the last layer's g at 1, but {source}'s g ({magnitude_key!r}) is not 1 "
            "everywhere: it was trained with norm_last_layer false; leave norm_last_layer out or set it to False"
        )
    sizes["norm_last_layer"] = norm_last_layer
    return sizes


# ---------------------------------------------------------------------------------------------------------------------
# Loading the weights
# ---------------------------------------------------------------------------------------------------------------------


def load_dino_state_dicts(model: DinoForPreTraining, state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Copy official state dicts into `model`, strictly.

    Every tensor of `model.student` / `model.teacher` is filled from the official network of that name (the head
    only when that network has one), and every key of it is used; `dino_loss` fills `model.loss.center`. A part
    whose state dict is not given keeps its current values. Raises a `ValueError` naming the official key for a
    missing key, a shape that differs from the model's or a key the model has no place for.
    """
    model_state = model.state_dict()
    converted = {}
    for name, official in state_dicts.items():
        if name == LOSS_STATE_KEY:
            targets = {"center": model_state["loss.center"]}
            tensors = official_tensors(targets, official, OfficialSource, f"the {name!r} state dict", METHOD)
            converted["loss.center"] = tensors["center"]
            continue
        if name not in NETWORKS:
            raise ValueError(f"unknown state dict {name!r}: expected some of {[*NETWORKS, LOSS_STATE_KEY]}")
        prefix = f"{name}."
        targets = _sub_state_dict(model_state, prefix)
        if not _has_head(official):
            targets = {key: tensor for key, tensor in targets.items() if not key.startswith(HEAD_PREFIX)}
        tensors = official_tensors(
            targets,
            official,
            lambda key: network_source(key, official),
            f"the {name!r} state dict",
            METHOD,
            unused_hint=UNUSED_HINT,
        )
        converted.update({prefix + key: tensor for key, tensor in tensors.items()})
    incompatible = model.load_state_dict(converted, strict=False)
    if incompatible.unexpected_keys:  # cannot happen: every converted key is a model key
        raise RuntimeError(f"unexpected keys while loading: {incompatible.unexpected_keys}")


def _fill_missing_network(state_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
    """A checkpoint with one network (a backbone file): the other network starts as a copy of it."""
    for missing, present in (("student", "teacher"), ("teacher", "student")):
        if missing not in state_dicts and present in state_dicts:
            logger.warning("the checkpoint has no %r network: it starts as a copy of the %r", missing, present)
            state_dicts[missing] = state_dicts[present]


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------


def convert_dino_checkpoint(
    checkpoint: str | os.PathLike | Mapping,
    num_attention_heads: int | None = None,
    weights_only: bool = True,
    **config_kwargs,
) -> DinoForPreTraining:
    """A `DinoForPreTraining` holding the weights of an official DINO checkpoint, to continue pretraining it.

    Args:
        checkpoint: path to the official `.pth` file (a training checkpoint or a backbone), or the dict it holds.
        num_attention_heads: heads of the ViT (the weights do not show them); `None` takes the official ViT of that
            width (ViT-S 6, ViT-B 12, ViT-Ti 3).
        weights_only: see `read_dino_checkpoint`; `False` only for files you trust.
        **config_kwargs: further `DinoConfig` arguments (`dino_pretraining_config`); for a backbone alone, also the
            sizes of the fresh heads (the defaults are the official ones: out_dim 65536, 2048, 256, 3 layers).

    Returns:
        The model in eval mode: student, teacher (frozen) and the loss center as in the checkpoint. A checkpoint with
        one network (a backbone file) fills both networks with it; networks without heads get fresh heads, and a
        checkpoint with heads but no `dino_loss` a zero center. Each case logs a warning.
    """
    state_dicts = read_dino_checkpoint(checkpoint, weights_only=weights_only)
    _fill_missing_network(state_dicts)
    heads = {name: _has_head(state_dicts[name]) for name in NETWORKS}
    if heads["student"] != heads["teacher"]:
        with_head = "student" if heads["student"] else "teacher"
        raise ValueError(
            f"the checkpoint's {with_head!r} network has a head and the other none: convert both heads or neither"
        )
    config = dino_pretraining_config(state_dicts, num_attention_heads=num_attention_heads, **config_kwargs)
    if not heads["student"]:
        logger.warning(
            "the checkpoint has no DINO heads: both heads are freshly initialised (out_dim %d, %d layers, bottleneck "
            "%d) and the loss center starts at zero",
            config.out_dim,
            config.head_num_layers,
            config.head_bottleneck_dim,
        )
    elif LOSS_STATE_KEY not in state_dicts:
        logger.warning("the checkpoint has no %r: the loss center starts at zero", LOSS_STATE_KEY)
    model = DinoForPreTraining(config)
    load_dino_state_dicts(model, state_dicts)
    return model.eval()


def dino_checkpoint_to_vit(
    checkpoint: str | os.PathLike | Mapping,
    network: str = "teacher",
    num_attention_heads: int | None = None,
    weights_only: bool = True,
) -> ViTModel:
    """The backbone of an official DINO checkpoint as a plain transformers `ViTModel` (no pooling layer).

    Args:
        checkpoint: as `convert_dino_checkpoint`'s.
        network: "teacher" (the one the official code evaluates) or "student"; a backbone file serves both.
        num_attention_heads, weights_only: as `convert_dino_checkpoint`'s.

    Returns:
        The model in eval mode; `last_hidden_state[:, 0]` is the official output (the final-normed CLS token). The
        heads and the other network are not read. `model.save_pretrained` writes a folder any transformers user
        loads; the command line exports an identity pooler as well (hf_ssl's `export_backbone`), so that
        `ViTModel.from_pretrained` finds every weight and `pooler_output` is the same CLS token.
    """
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {list(NETWORKS)}, got {network!r}")
    state_dicts = read_dino_checkpoint(checkpoint, weights_only=weights_only)
    if network not in state_dicts:
        present = next(name for name in NETWORKS if name in state_dicts)
        logger.warning("the checkpoint has no %r network: taking the %r backbone", network, present)
        network = present
    official = {key: tensor for key, tensor in state_dicts[network].items() if key.startswith(BACKBONE_PREFIX)}
    config = dino_vit_config(official, num_attention_heads, f"the {network!r} network")
    model = ViTModel(config, add_pooling_layer=False)
    targets = {BACKBONE_PREFIX + key: tensor for key, tensor in model.state_dict().items()}
    tensors = official_tensors(
        targets,
        official,
        lambda key: network_source(key, official),
        f"the {network!r} state dict",
        METHOD,
        unused_hint=UNUSED_HINT,
    )
    model.load_state_dict(_sub_state_dict(tensors, BACKBONE_PREFIX), strict=True)
    return model.eval()


def convert_dino_checkpoint_to_folder(
    checkpoint: str | os.PathLike | Mapping,
    output_dir: str | os.PathLike,
    export_network: str = "teacher",
    backbone_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    num_attention_heads: int | None = None,
    weights_only: bool = True,
    **config_kwargs,
) -> DinoForPreTraining:
    """What the command line does: convert an official DINO checkpoint, save the `DinoForPreTraining` to `output_dir`
    (safetensors, with the image processor of the official evaluation) and the `export_network` backbone as a plain
    transformers `ViTModel` to `backbone_dir`.

    Args:
        checkpoint, num_attention_heads, weights_only, **config_kwargs: as `convert_dino_checkpoint`'s.
        output_dir: a new or empty folder, or with `overwrite` a previous model or run (see `check_output_folders`).
        export_network: "teacher" (the one the official code evaluates) or "student".
        backbone_dir: where the plain ViTModel goes; default `<output_dir>/backbone`.
        overwrite: delete the contents of a non-empty `output_dir` (and `backbone_dir`) before saving, so that no
            other run's files stay beside the converted model. They are deleted only once the conversion succeeded.

    Raises:
        FileExistsError: a non-empty folder without `overwrite`, or one `overwrite` does not clear; checked before
            the checkpoint is read, so that nothing is converted in vain.
        FileNotFoundError, ValueError: as `convert_dino_checkpoint`.
    """
    if export_network not in NETWORKS:
        raise ValueError(f"export_network must be one of {list(NETWORKS)}, got {export_network!r}")
    backbone_dir = backbone_dir if backbone_dir is not None else os.path.join(output_dir, "backbone")
    entries_to_delete = check_output_folders(output_dir, backbone_dir, overwrite, checkpoint)
    model = convert_dino_checkpoint(
        checkpoint, num_attention_heads=num_attention_heads, weights_only=weights_only, **config_kwargs
    )
    clear_output_folders(entries_to_delete)
    # the official evaluation normalises with the ImageNet mean and std, at 224 pixels for the released ViTs
    image_processor = save_converted(model, output_dir, "vit")
    # saved under the config without drop path, whichever network: the plain model is for inference and fine-tuning
    export_backbone(
        getattr(model, export_network).backbone,
        backbone_dir,
        image_processor=image_processor,
        config=model.config.teacher_backbone_config(),
    )
    print(f"Saved the {export_network} backbone as a plain transformers ViTModel to {backbone_dir}")
    return model


def main(argv: list[str] | None = None) -> DinoForPreTraining:
    """Command line: `convert_dino_checkpoint_to_folder`; a mistake ends it with one `error: ...` line, status 2."""
    parser = argparse.ArgumentParser(
        description="Convert an official DINO checkpoint (facebookresearch/dino) into an hf_ssl DinoForPreTraining "
        "and a plain transformers ViTModel."
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="The official file: a main_dino.py training checkpoint (checkpoint.pth, *_full_checkpoint.pth) or a "
        "backbone (dino_vits16_pretrain.pth, ...).",
    )
    parser.add_argument(
        "--output_dir",
        required=True,
        help="Where to save the converted DinoForPreTraining: a new or empty folder (see --overwrite).",
    )
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        default=None,
        help="Attention heads of the ViT. Default: the official ViT of the checkpoint's width (ViT-S 6, ViT-B 12, "
        "ViT-Ti 3).",
    )
    parser.add_argument(
        "--export_backbone",
        choices=NETWORKS,
        default="teacher",
        help="The backbone saved as a plain transformers ViTModel (AutoModel.from_pretrained loads it). Default: the "
        "teacher, which the official code evaluates.",
    )
    parser.add_argument(
        "--backbone_dir", default=None, help="Where the plain ViTModel goes. Default: <output_dir>/backbone."
    )
    add_shared_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        return convert_dino_checkpoint_to_folder(
            args.checkpoint,
            args.output_dir,
            export_network=args.export_backbone,
            backbone_dir=args.backbone_dir,
            overwrite=args.overwrite,
            num_attention_heads=args.num_attention_heads,
            weights_only=not args.no_weights_only,
        )
    except (ValueError, OSError) as error:  # a bad file, folder or option: say what to change, no traceback
        exit_with_error(parser, error)


if __name__ == "__main__":
    main()
