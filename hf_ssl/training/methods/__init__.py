"""The methods the engines can train, by name: what a recipe's ``method:`` key chooses.

A method is registered with a ``MethodSpec``: its model config and pretraining model (``hf_ssl.models.<method>``),
its training step (a ``PretrainingMethod``), its training arguments (a ``PretrainingArguments`` subclass) and its
augmentation config. Everything else (engines, recipes, checkpoints, k-NN, history, model cards) is shared.

    from hf_ssl.training.methods import get_method, registered_methods
    spec = get_method("dino")
    model = spec.pretraining_model_class(spec.config_class(...))
"""

from __future__ import annotations

from dataclasses import dataclass

from hf_ssl.data import MultiCropConfig
from hf_ssl.training.methods.base import (
    EmaTeacherMethod,
    NonFiniteLossError,
    PretrainingMethod,
    Schedules,
    decay_parameter_groups,
    restart_moments,
)


@dataclass(frozen=True)
class MethodSpec:
    """Everything the shared machinery needs to know about a method.

    Args:
        name: the recipe's ``method:`` value, the checkpoint's ``method`` and the card template ``model_cards/<name>.md``.
        config_class: the ``PretrainedConfig`` (the recipe's ``model:`` section holds its arguments).
        pretraining_model_class: the ``AutoModelForPreTraining`` class the engines train.
        method_class: the ``PretrainingMethod`` the engines call around each step.
        training_arguments_class: the recipe's ``training:`` section.
        view_config_class: the recipe's ``augmentation:`` section: a ``ViewsConfig`` (named view groups), or a class
            in the method's own terms with ``to_views_config()`` (DINO's ``MultiCropConfig``, SimCLR's
            ``SimClrViewConfig``, BYOL's ``ByolViewConfig``).
        pretrained_overridable_keys: model keys that may change when continuing from a pretrained model (loss
            settings; no weight's shape depends on them).
        default_output_dir: ``training.output_dir`` when the recipe gives none.
        summary: one line for ``--help`` and error messages.
    """

    name: str
    config_class: type
    pretraining_model_class: type
    method_class: type
    training_arguments_class: type
    view_config_class: type = MultiCropConfig
    pretrained_overridable_keys: tuple[str, ...] = ()
    default_output_dir: str = "outputs/run"
    summary: str = ""


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` known to the recipes and the engines (a second registration of a name replaces the first)."""
    _METHODS[spec.name] = spec
    return spec


def registered_methods() -> list[str]:
    _register_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; a ``KeyError`` that lists the registered methods otherwise."""
    _register_builtin_methods()
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; the methods are {sorted(_METHODS)}")
    return _METHODS[name]


def method_for_model(model) -> MethodSpec:
    """The spec whose config class ``model.config`` is (what the engines train when no method is named)."""
    _register_builtin_methods()
    # the exact config class first: H-JEPA's config is a subclass of I-JEPA's
    for spec in _METHODS.values():
        if type(model.config) is spec.config_class:
            return spec
    for spec in _METHODS.values():
        if isinstance(model.config, spec.config_class):
            return spec
    raise ValueError(
        f"{type(model).__name__} (config {type(model.config).__name__}) is not the pretraining model of a registered "
        f"method ({sorted(_METHODS)}): register it with hf_ssl.training.methods.register_method"
    )


_BUILTIN_REGISTERED = False


def _register_builtin_methods() -> None:
    # imported here, not at the top: the method modules import the engines' building blocks
    global _BUILTIN_REGISTERED
    if _BUILTIN_REGISTERED:
        return
    _BUILTIN_REGISTERED = True
    from hf_ssl.models.dino import DinoConfig, DinoForPretraining
    from hf_ssl.training.methods.dino import DinoMethod, DinoTrainingArguments

    register_method(MethodSpec(
        name="dino", config_class=DinoConfig, pretraining_model_class=DinoForPretraining, method_class=DinoMethod,
        training_arguments_class=DinoTrainingArguments, view_config_class=MultiCropConfig,
        pretrained_overridable_keys=(
            "student_temperature", "teacher_temperature", "warmup_teacher_temperature", "warmup_teacher_temperature_epochs",
            "center_momentum", "student_drop_path_rate",
        ),
        default_output_dir="outputs/dino", summary="DINO: self-distillation with no labels (Caron et al., 2021)",
    ))

    from hf_ssl.models.simclr import SimClrConfig, SimClrForPretraining
    from hf_ssl.training.methods.simclr import SimClrMethod, SimClrTrainingArguments, SimClrViewConfig

    register_method(MethodSpec(
        name="simclr", config_class=SimClrConfig, pretraining_model_class=SimClrForPretraining, method_class=SimClrMethod,
        training_arguments_class=SimClrTrainingArguments, view_config_class=SimClrViewConfig,
        pretrained_overridable_keys=("temperature", "drop_path_rate"),
        default_output_dir="outputs/simclr", summary="SimCLR: contrastive learning of visual representations (Chen et al., 2020)",
    ))

    from hf_ssl.models.byol import ByolConfig, ByolForPretraining
    from hf_ssl.training.methods.byol import ByolMethod, ByolTrainingArguments, ByolViewConfig

    register_method(MethodSpec(
        name="byol", config_class=ByolConfig, pretraining_model_class=ByolForPretraining, method_class=ByolMethod,
        training_arguments_class=ByolTrainingArguments, view_config_class=ByolViewConfig,
        pretrained_overridable_keys=("drop_path_rate",),
        default_output_dir="outputs/byol", summary="BYOL: bootstrap your own latent, an EMA target network (Grill et al., 2020)",
    ))

    from hf_ssl.models.vicreg import VicRegConfig, VicRegForPretraining
    from hf_ssl.training.methods.vicreg import VicRegMethod, VicRegTrainingArguments, VicRegViewConfig

    register_method(MethodSpec(
        name="vicreg", config_class=VicRegConfig, pretraining_model_class=VicRegForPretraining, method_class=VicRegMethod,
        training_arguments_class=VicRegTrainingArguments, view_config_class=VicRegViewConfig,
        pretrained_overridable_keys=("invariance_weight", "variance_weight", "covariance_weight", "variance_epsilon", "drop_path_rate"),
        default_output_dir="outputs/vicreg",
        summary="VICReg: variance-invariance-covariance regularization (Bardes et al., 2022)",
    ))

    from hf_ssl.models.ijepa import IJepaForPretraining, IJepaPretrainingConfig
    from hf_ssl.training.methods.ijepa import IJepaMethod, IJepaTrainingArguments, IJepaViewConfig

    register_method(MethodSpec(
        name="ijepa", config_class=IJepaPretrainingConfig, pretraining_model_class=IJepaForPretraining,
        method_class=IJepaMethod, training_arguments_class=IJepaTrainingArguments, view_config_class=IJepaViewConfig,
        pretrained_overridable_keys=("loss_type", "normalize_targets"),
        default_output_dir="outputs/ijepa",
        summary="I-JEPA: joint-embedding predictive architecture (Assran et al., 2023)",
    ))

    from hf_ssl.models.hjepa import HJepaConfig, HJepaForPretraining
    from hf_ssl.training.methods.hjepa import HJepaMethod, HJepaTrainingArguments

    register_method(MethodSpec(
        name="hjepa", config_class=HJepaConfig, pretraining_model_class=HJepaForPretraining,
        method_class=HJepaMethod, training_arguments_class=HJepaTrainingArguments, view_config_class=IJepaViewConfig,
        pretrained_overridable_keys=("loss_type", "normalize_targets", "level_loss_weights", "contrastive_temperature"),
        default_output_dir="outputs/hjepa",
        summary="H-JEPA: I-JEPA predicting its targets at several pooled levels (hf_ssl's hierarchical JEPA)",
    ))


__all__ = [
    "EmaTeacherMethod",
    "MethodSpec",
    "NonFiniteLossError",
    "PretrainingMethod",
    "Schedules",
    "decay_parameter_groups",
    "get_method",
    "method_for_model",
    "register_method",
    "registered_methods",
    "restart_moments",
]
