"""Import a checkpoint of the official I-JEPA code (facebookresearch/ijepa) as an `IJepaForPreTraining`: to continue
pretraining it with hf_ssl, or to export one of its encoders as a plain transformers `IJepaModel`.

An official checkpoint is a dict saved with `torch.save` holding three state dicts, `encoder` (the context encoder),
`target_encoder` (its EMA copy) and `predictor`, whose keys carry a `module.` prefix when they were saved from
DistributedDataParallel, and the training state (`opt`, `scaler`, `epoch`, `loss`, `batch_size`, `world_size`,
`lr`), which is not converted.

Official names (timm-style ViT, no CLS token)            hf_ssl `IJepaForPreTraining` names
  encoder.pos_embed (1, N, D)                              context_encoder.embeddings.position_embeddings
  encoder.patch_embed.proj                                 context_encoder.embeddings.patch_embeddings.projection
  encoder.blocks.i.norm1 / norm2                           context_encoder.layers.i.layernorm_before / _after
  encoder.blocks.i.attn.qkv (3 D rows: q, k, v)            context_encoder.layers.i.attention.{q,k,v}_proj
  encoder.blocks.i.attn.proj                               context_encoder.layers.i.attention.o_proj
  encoder.blocks.i.mlp.fc1 / fc2                           context_encoder.layers.i.mlp.fc1 / fc2
  encoder.norm                                             context_encoder.layernorm
  target_encoder.*                                         target_encoder.* (the same renaming)
  predictor.predictor_embed / mask_token                   predictor.input_projection / mask_token
  predictor.predictor_pos_embed (1, N, P)                  predictor.position_embeddings (N, P)
  predictor.predictor_blocks.i.*                           predictor.layers.i.* (the block renaming above)
  predictor.predictor_norm / predictor_proj                predictor.layernorm / output_projection

The architecture is read from the weights (width, depth, MLP width, patch size, channels, image size from the
number of position embeddings, predictor width, depth and MLP width) except the number of attention heads, which
weights do not show: it defaults to the official ViT of that width (`OFFICIAL_NUM_ATTENTION_HEADS`).

Command line (from Python, `convert_official_checkpoint_to_folder`):

    python -m hf_ssl.models.ijepa.convert_ijepa_official --checkpoint IN1K-vit.h.14-300e.pth.tar \\
        --output_dir ijepa-vith14 [--num_attention_heads 16] [--export_backbone target|context] [--overwrite]

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

from ..official_checkpoints import (
    OFFICIAL_LAYER_NORM_EPS,
    OfficialSource,
    add_shared_arguments,
    check_output_folders,
    clear_output_folders,
    exit_with_error,
    num_blocks,
    official_tensors,
    read_checkpoint,
    refuse_other_methods_checkpoint,
    required_tensor,
    resolve_num_attention_heads,
    save_converted,
    strip_ddp_prefix,
    vit_architecture,
)
from .configuration_ijepa import IJepaPretrainingConfig
from .modeling_ijepa import ENCODERS, IJepaForPreTraining

logger = logging.getLogger(__name__)

# the state dicts of an official checkpoint, and where each goes in IJepaForPreTraining
MODEL_PREFIXES = {"encoder": "context_encoder.", "target_encoder": "target_encoder.", "predictor": "predictor."}
# what an official checkpoint holds besides the weights; read past, not converted
TRAINING_STATE_KEYS = ("opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr")
# attention heads of the official ViTs by width: vit_tiny 3, vit_small 6, vit_base 12, vit_large, vit_huge and
# vit_giant 16 (the predictor uses the encoder's number)
OFFICIAL_NUM_ATTENTION_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
METHOD = "I-JEPA"

# hf_ssl name -> official name, outside the blocks
ENCODER_NAMES = {
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
PREDICTOR_NAMES = {
    "input_projection.weight": "predictor_embed.weight",
    "input_projection.bias": "predictor_embed.bias",
    "mask_token": "mask_token",
    "position_embeddings": "predictor_pos_embed",
    "layernorm.weight": "predictor_norm.weight",
    "layernorm.bias": "predictor_norm.bias",
    "output_projection.weight": "predictor_proj.weight",
    "output_projection.bias": "predictor_proj.bias",
}
# inside block i: transformers IJepaLayer module -> official Block module (q, k and v come from the fused attn.qkv)
BLOCK_MODULES = {
    "layernorm_before": "norm1",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
QKV_PARTS = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


def official_source(name: str, state_dict_name: str) -> OfficialSource:
    """The official tensor that hf_ssl tensor `name` (relative to its module, e.g. `layers.3.mlp.fc1.weight`) comes
    from, in state dict `state_dict_name` ("encoder", "target_encoder" or "predictor")."""
    is_predictor = state_dict_name == "predictor"
    block_prefix = "predictor_blocks" if is_predictor else "blocks"
    block = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if block:
        index, module, tensor = block.groups()
        attention = re.fullmatch(r"attention\.([qkv]_proj)", module)
        if attention:
            return OfficialSource(f"{block_prefix}.{index}.attn.qkv.{tensor}", qkv_part=QKV_PARTS[attention[1]])
        if module in BLOCK_MODULES:
            return OfficialSource(f"{block_prefix}.{index}.{BLOCK_MODULES[module]}.{tensor}")
    names = PREDICTOR_NAMES if is_predictor else ENCODER_NAMES
    if name in names:
        return OfficialSource(names[name], leading_one=name == "position_embeddings")
    raise ValueError(
        f"the hf_ssl tensor {name!r} has no counterpart in the official {state_dict_name!r} state dict: the "
        "converter does not know this version of transformers' IJepaModel or of IJepaPredictor"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Reading the checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def read_official_checkpoint(
    checkpoint: str | os.PathLike | Mapping, weights_only: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of an official I-JEPA checkpoint, with any `module.` prefix removed.

    Args:
        checkpoint: a path to the file the official code saved (`.pth.tar` / `.pth`), or that dict already loaded.
        weights_only: load the file with `torch.load(weights_only=True)`, which refuses anything but tensors,
            numbers and containers (an official checkpoint holds nothing else). `False` runs the file's pickled code:
            only for files you trust.

    Returns:
        `{"encoder": ..., "target_encoder": ..., "predictor": ...}` with the state dicts the checkpoint has (at
        least one of the two encoders), each `{official key: tensor}`.

    Raises:
        FileNotFoundError: no file at `checkpoint`.
        ValueError: the file cannot be read (saying what it is: empty, cut short, text, ...), is an official DINO
            checkpoint, or is not an official I-JEPA checkpoint, naming what is wrong; a `PickledObjectsError` when it
            has the I-JEPA layout but pickles classes that `weights_only=True` refuses.
    """
    return read_checkpoint(checkpoint, weights_only, METHOD, _read_checkpoint)


def _read_checkpoint(checkpoint: object, source: str) -> dict[str, dict[str, torch.Tensor]]:
    refuse_other_methods_checkpoint(checkpoint, source, METHOD)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{source} is not an official I-JEPA checkpoint: expected a dict with 'encoder', 'predictor' and "
            f"'target_encoder' state dicts, got a {type(checkpoint).__name__}"
        )
    present = [name for name in MODEL_PREFIXES if checkpoint.get(name) is not None]
    if "encoder" not in present and "target_encoder" not in present:
        raise ValueError(
            f"{source} is not an official I-JEPA checkpoint: it has neither an 'encoder' nor a 'target_encoder' state "
            f"dict (its keys: {sorted(map(str, checkpoint))[:20]})"
        )
    ignored = sorted(set(checkpoint) - set(MODEL_PREFIXES) - set(TRAINING_STATE_KEYS), key=str)
    if ignored:
        logger.info("%s: ignoring entries that are not I-JEPA weights: %s", source, ignored)
    return {name: strip_ddp_prefix(checkpoint[name], f"{source}[{name!r}]") for name in present}


# ---------------------------------------------------------------------------------------------------------------------
# The architecture
# ---------------------------------------------------------------------------------------------------------------------


def official_pretraining_config(
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    num_attention_heads: int | None = None,
    **config_kwargs,
) -> IJepaPretrainingConfig:
    """The `IJepaPretrainingConfig` of the model the official state dicts fill.

    Args:
        state_dicts: `read_official_checkpoint`'s output. The encoder's architecture is read from `encoder` (else
            `target_encoder`), the predictor's from `predictor` when present.
        num_attention_heads: heads of the encoder's attention, which the weights do not show. `None` takes the
            official ViT of the encoder's width (`OFFICIAL_NUM_ATTENTION_HEADS`: 192 -> 3, 384 -> 6, 768 -> 12,
            1024, 1280 and 1408 -> 16); another width needs it.
        **config_kwargs: further `IJepaPretrainingConfig` arguments (`loss_type`, `normalize_targets`,
            `fixed_position_embeddings`, `predictor_num_attention_heads`, ...). The predictor sizes
            (`predictor_hidden_size`, `predictor_num_hidden_layers`, `predictor_mlp_ratio`) are read from the
            checkpoint's predictor and only apply when it has none; the backbone comes from the weights alone.

    Returns:
        The config: LayerNorm eps 1e-6, biased q/k/v, exact GELU, no dropout, as the official ViT.
    """
    if "backbone_config" in config_kwargs:
        raise ValueError(
            "`backbone_config` is read from the checkpoint's weights; pass `num_attention_heads` for the one number "
            "the weights do not show"
        )
    encoder_name = "encoder" if "encoder" in state_dicts else "target_encoder"
    architecture = vit_architecture(
        state_dicts[encoder_name], f"the {encoder_name!r} state dict", METHOD, num_prefix_tokens=0
    )
    backbone_config = {
        "model_type": "ijepa",
        **architecture,
        "num_attention_heads": resolve_num_attention_heads(
            architecture["hidden_size"], num_attention_heads, OFFICIAL_NUM_ATTENTION_HEADS, METHOD
        ),
        "layer_norm_eps": OFFICIAL_LAYER_NORM_EPS,
        # the official ViT's q/k/v always have biases; a checkpoint without them fails as incomplete
        "qkv_bias": True,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if "predictor" in state_dicts:
        config_kwargs.update(_predictor_sizes(state_dicts["predictor"], config_kwargs))
    return IJepaPretrainingConfig(backbone_config=backbone_config, **config_kwargs)


def _predictor_sizes(predictor: Mapping[str, torch.Tensor], config_kwargs: Mapping) -> dict:
    source = "the 'predictor' state dict"
    predictor_hidden_size = required_tensor(predictor, "predictor_embed.weight", source, 2, METHOD).shape[0]
    mlp_size = required_tensor(predictor, "predictor_blocks.0.mlp.fc1.weight", source, 2, METHOD).shape[0]
    sizes = {
        "predictor_hidden_size": predictor_hidden_size,
        "predictor_num_hidden_layers": num_blocks(predictor, "predictor_blocks", source, METHOD),
        "predictor_mlp_ratio": mlp_size / predictor_hidden_size,
    }
    if int(predictor_hidden_size * sizes["predictor_mlp_ratio"]) != mlp_size:
        raise ValueError(
            f"the predictor's MLP width {mlp_size} is not int(predictor_hidden_size * ratio) for any float ratio: "
            "IJepaPredictor cannot hold it"
        )
    for name, value in sizes.items():
        if name in config_kwargs and config_kwargs[name] != value:
            raise ValueError(
                f"{name}={config_kwargs[name]!r} differs from the checkpoint's predictor ({value!r}); leave it out, "
                "the predictor's sizes are read from its weights"
            )
    return sizes


# ---------------------------------------------------------------------------------------------------------------------
# Loading the weights
# ---------------------------------------------------------------------------------------------------------------------


def load_official_state_dicts(
    model: IJepaForPreTraining, state_dicts: Mapping[str, Mapping[str, torch.Tensor]]
) -> None:
    """Copy official state dicts into `model`, strictly.

    Every tensor of `model` under the prefix of a given state dict (`encoder` -> `context_encoder.`,
    `target_encoder` -> `target_encoder.`, `predictor` -> `predictor.`) is filled from it, and every key of that
    state dict is used; a part whose state dict is not given keeps its current values. Raises a `ValueError` naming
    the official key for a missing key, a shape that differs from the model's or a key the model has no place for.
    """
    model_state = model.state_dict()
    converted = {}
    for state_dict_name, official in state_dicts.items():
        if state_dict_name not in MODEL_PREFIXES:
            raise ValueError(f"unknown state dict {state_dict_name!r}: expected some of {list(MODEL_PREFIXES)}")
        prefix = MODEL_PREFIXES[state_dict_name]
        targets = {key.removeprefix(prefix): tensor for key, tensor in model_state.items() if key.startswith(prefix)}
        tensors = official_tensors(
            targets,
            official,
            lambda name: official_source(name, state_dict_name),
            f"the {state_dict_name!r} state dict",
            METHOD,
            unused_hint="Is it a checkpoint of the official I-JEPA ViT (biased q/k/v, no CLS token, no extra "
            "modules)?",
        )
        converted.update({prefix + name: tensor for name, tensor in tensors.items()})
    incompatible = model.load_state_dict(converted, strict=False)
    if incompatible.unexpected_keys:  # cannot happen: every converted key is a model key
        raise RuntimeError(f"unexpected keys while loading: {incompatible.unexpected_keys}")


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------


def convert_official_checkpoint(
    checkpoint: str | os.PathLike | Mapping,
    num_attention_heads: int | None = None,
    weights_only: bool = True,
    **config_kwargs,
) -> IJepaForPreTraining:
    """An `IJepaForPreTraining` holding the weights of an official I-JEPA checkpoint.

    Args:
        checkpoint: path to the official `.pth.tar` / `.pth` file, or the dict it holds.
        num_attention_heads: heads of the encoders (the weights do not show them); `None` takes the official ViT of
            the encoder's width (ViT-B 12, ViT-L / ViT-H / ViT-g 16, ...). The predictor takes the same number
            unless `predictor_num_attention_heads` is given, as the official code.
        weights_only: see `read_official_checkpoint`; `False` only for files you trust.
        **config_kwargs: further `IJepaPretrainingConfig` arguments (`official_pretraining_config`).

    Returns:
        The model in eval mode. The encoders keep the checkpoint's own position embeddings (frozen, with the default
        `fixed_position_embeddings=True`, as the official ones are), the predictor its own position table. When
        the checkpoint has only one of `encoder` / `target_encoder`, the other encoder is a copy of it; without
        `predictor`, the predictor is freshly initialised. Both cases log a warning.
    """
    state_dicts = read_official_checkpoint(checkpoint, weights_only=weights_only)
    config = official_pretraining_config(state_dicts, num_attention_heads=num_attention_heads, **config_kwargs)
    for missing, present in (("target_encoder", "encoder"), ("encoder", "target_encoder")):
        if missing not in state_dicts:
            logger.warning(
                "the checkpoint has no %r state dict: that encoder starts as a copy of %r", missing, present
            )
            state_dicts[missing] = state_dicts[present]
    if "predictor" not in state_dicts:
        logger.warning(
            "the checkpoint has no 'predictor' state dict: the predictor (width %d, %d blocks) is freshly initialised",
            config.predictor_hidden_size,
            config.predictor_num_hidden_layers,
        )
    model = IJepaForPreTraining(config)
    load_official_state_dicts(model, state_dicts)
    return model.eval()


def convert_official_checkpoint_to_folder(
    checkpoint: str | os.PathLike | Mapping,
    output_dir: str | os.PathLike,
    export_encoder: str | None = None,
    backbone_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    num_attention_heads: int | None = None,
    weights_only: bool = True,
    **config_kwargs,
) -> IJepaForPreTraining:
    """What the command line does: convert an official I-JEPA checkpoint, save the `IJepaForPreTraining` to
    `output_dir` (safetensors, with the image processor of the official recipes) and, when `export_encoder` names
    one, that encoder as a plain transformers `IJepaModel` to `backbone_dir`.

    Args:
        checkpoint, num_attention_heads, weights_only, **config_kwargs: as `convert_official_checkpoint`'s.
        output_dir: a new or empty folder, or with `overwrite` a previous model or run (see `check_output_folders`).
        export_encoder: "target" or "context", or `None` to export no encoder.
        backbone_dir: where the exported encoder goes; default `<output_dir>/backbone`.
        overwrite: delete the contents of a non-empty `output_dir` (and `backbone_dir`) before saving, so that no
            other run's files stay beside the converted model. They are deleted only once the conversion succeeded.

    Raises:
        FileExistsError: a non-empty folder without `overwrite`, or one `overwrite` does not clear; checked before
            the checkpoint is read, so that nothing is converted in vain.
        FileNotFoundError, ValueError: as `convert_official_checkpoint`.
    """
    if export_encoder is not None and export_encoder not in ENCODERS:
        raise ValueError(f"export_encoder must be one of {list(ENCODERS)} or None, got {export_encoder!r}")
    if export_encoder is None:
        backbone_dir = None
    elif backbone_dir is None:
        backbone_dir = os.path.join(output_dir, "backbone")
    entries_to_delete = check_output_folders(output_dir, backbone_dir, overwrite, checkpoint)
    model = convert_official_checkpoint(
        checkpoint, num_attention_heads=num_attention_heads, weights_only=weights_only, **config_kwargs
    )
    clear_output_folders(entries_to_delete)
    # the official recipes normalise with the ImageNet mean and std at the encoder's image size
    image_processor = save_converted(model, output_dir, "ijepa")
    if export_encoder is not None:
        model.export_backbone(backbone_dir, image_processor=image_processor, encoder=export_encoder)
        print(f"Saved the {export_encoder} encoder as a plain transformers IJepaModel to {backbone_dir}")
    return model


def main(argv: list[str] | None = None) -> IJepaForPreTraining:
    """Command line: `convert_official_checkpoint_to_folder`; a mistake ends it in one `error: ...` line, status 2."""
    parser = argparse.ArgumentParser(
        description="Convert an official I-JEPA checkpoint (facebookresearch/ijepa) into an hf_ssl "
        "IJepaForPreTraining."
    )
    parser.add_argument("--checkpoint", required=True, help="The official checkpoint file (.pth.tar / .pth).")
    parser.add_argument(
        "--output_dir",
        required=True,
        help="Where to save the converted model: a new or empty folder (see --overwrite).",
    )
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        default=None,
        help="Attention heads of the encoders. Default: the official ViT of the checkpoint's width "
        "(ViT-B 12; ViT-L, ViT-H and ViT-g 16; ViT-S 6; ViT-Ti 3).",
    )
    parser.add_argument(
        "--predictor_num_attention_heads",
        type=int,
        default=None,
        help="Attention heads of the predictor. Default: the encoders' number, as the official code.",
    )
    parser.add_argument(
        "--export_backbone",
        choices=ENCODERS,
        default=None,
        help="Also save this encoder as a plain transformers IJepaModel (AutoModel.from_pretrained loads it).",
    )
    parser.add_argument(
        "--backbone_dir", default=None, help="Where --export_backbone writes. Default: <output_dir>/backbone."
    )
    add_shared_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)

    config_kwargs = {}
    if args.predictor_num_attention_heads is not None:
        config_kwargs["predictor_num_attention_heads"] = args.predictor_num_attention_heads
    try:
        return convert_official_checkpoint_to_folder(
            args.checkpoint,
            args.output_dir,
            export_encoder=args.export_backbone,
            backbone_dir=args.backbone_dir,
            overwrite=args.overwrite,
            num_attention_heads=args.num_attention_heads,
            weights_only=not args.no_weights_only,
            **config_kwargs,
        )
    except (ValueError, OSError) as error:  # a bad file, folder or option: say what to change, no traceback
        exit_with_error(parser, error)


if __name__ == "__main__":
    main()
