"""Tiny backbone and head settings for the DINO model tests: a whole model builds in milliseconds."""

TINY_VIT = {
    "model_type": "vit",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 4,
    "image_size": 16,
}
TINY_DINOV2 = {**TINY_VIT, "model_type": "dinov2"}
TINY_DINOV2_WITH_REGISTERS = {**TINY_VIT, "model_type": "dinov2_with_registers", "num_register_tokens": 2}
TINY_RESNET = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}
TINY_HEAD = {"out_dim": 64, "head_hidden_dim": 48, "head_bottleneck_dim": 16}
