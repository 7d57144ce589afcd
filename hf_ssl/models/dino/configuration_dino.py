"""Configuration of DINO: self-distillation with no labels (Caron et al., 2021, arXiv:2104.14294)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..backbone import backbone_config_for_training, resolve_backbone_config
from ..validation import check_integer, check_number

# ViT-S/16 as trained in the DINO paper. DINO uses LayerNorm eps 1e-6 (ViTConfig's default is 1e-12).
VIT_SMALL_PATCH16_KWARGS = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "patch_size": 16,
    "image_size": 224,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
}


class DinoConfig(PretrainedConfig):
    r"""
    Everything needed to rebuild a DINO student/teacher pair: the backbone (a nested transformers config)
    plus the projection head and loss hyper-parameters. Defaults are those of the official ViT-S/16 run.

    Every argument is validated when the config is built; a bad value raises a `ValueError` naming the argument.

    Args:
        backbone_config (`dict`, `PretrainedConfig` or `None`):
            Config of any transformers vision model that `AutoModel` can build (ViT, DeiT, Dinov2,
            Dinov2WithRegisters, IJepa, ResNet, ConvNext, ...). A dict must carry its `"model_type"`.
            `None` gives ViT-S/16 (`VIT_SMALL_PATCH16_KWARGS`). Stored nested (a dict inside `config.json`).
        out_dim (`int`, defaults to 65536): number of prototypes K, the size of the head output.
        head_hidden_dim (`int`, defaults to 2048): width of the head's hidden layers.
        head_bottleneck_dim (`int`, defaults to 256): size of the L2-normalised bottleneck before the last layer.
        head_num_layers (`int`, defaults to 3): number of linear layers before the bottleneck output (at least 1).
        head_use_bn (`bool`, defaults to `False`): BatchNorm after each hidden linear layer of the head.
        norm_last_layer (`bool`, defaults to `True`):
            Fix the magnitude of the weight-normalised last layer to 1 (not trained). The official "boosted"
            recipe sets it to `False`.
        student_temperature (`float`, defaults to 0.1): softmax temperature of the student, > 0.
        teacher_temperature (`float`, defaults to 0.04):
            Teacher softmax temperature after warm-up, > 0. The forward pass uses it unless a
            `teacher_temperature` is passed explicitly (the trainer passes the scheduled value).
        warmup_teacher_temperature (`float`, defaults to 0.04): teacher temperature at the start of training, > 0.
        warmup_teacher_temperature_epochs (`int`, defaults to 0):
            Epochs of linear warm-up from `warmup_teacher_temperature` to `teacher_temperature` (the schedule
            itself lives in the trainer; the config records it so a checkpoint says how it was trained).
        center_momentum (`float`, defaults to 0.9): momentum m of the teacher center, in [0, 1).
        student_drop_path_rate (`float`, defaults to 0.1):
            Stochastic depth of the student backbone, in [0, 1). It is applied only when the backbone config
            has a `drop_path_rate` field (e.g. Dinov2, ConvNext); `ViTConfig` has none, so a ViT student
            runs without drop path. The teacher always runs with drop path 0, whatever `backbone_config` says.

    Student and teacher backbones are built from `student_backbone_config()` / `teacher_backbone_config()`: copies of
    `backbone_config` with the drop path rate above and, where the backbone has one, `use_mask_token=False`
    (DINO never masks patches).
    """

    model_type = "hf_ssl_dino"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig, model_type="vit", init_kwargs=VIT_SMALL_PATCH16_KWARGS
        )
    }

    backbone_config: dict | PretrainedConfig | None = None
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_num_layers: int = 3
    head_use_bn: bool = False
    norm_last_layer: bool = True
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    warmup_teacher_temperature: float = 0.04
    warmup_teacher_temperature_epochs: int = 0
    center_momentum: float = 0.9
    student_drop_path_rate: float = 0.1

    def __post_init__(self, **kwargs):
        # transformers 5 configs are dataclasses: this runs at the end of the generated `__init__`.
        self.backbone_config = resolve_backbone_config(
            self.backbone_config, "vit", VIT_SMALL_PATCH16_KWARGS, owner=DinoConfig
        )
        for name in ("out_dim", "head_hidden_dim", "head_bottleneck_dim", "head_num_layers"):
            check_integer(name, getattr(self, name), minimum=1)
        check_integer("warmup_teacher_temperature_epochs", self.warmup_teacher_temperature_epochs, minimum=0)
        for name in ("head_use_bn", "norm_last_layer"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        for name in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
            check_number(name, getattr(self, name), low=0.0, high=None, low_inclusive=False, allowed="> 0")
        check_number("center_momentum", self.center_momentum, low=0.0, high=1.0, allowed="in [0, 1)")
        check_number("student_drop_path_rate", self.student_drop_path_rate, low=0.0, high=1.0, allowed="in [0, 1)")
        super().__post_init__(**kwargs)

    def student_backbone_config(self) -> PretrainedConfig:
        """Backbone config of the student: `student_drop_path_rate` where the backbone supports drop path."""
        return backbone_config_for_training(self.backbone_config, self.student_drop_path_rate)

    def teacher_backbone_config(self) -> PretrainedConfig:
        """Backbone config of the teacher (and of `DinoModel` and the exported backbone): no drop path."""
        return backbone_config_for_training(self.backbone_config, 0.0)
