"""The methods the engines can train, by name: what a recipe's ``method:`` key chooses.

A method declares itself once, in its own module, with one ``register_method(MethodSpec(...))`` call: its model
config, pretraining model and feature model (``hf_ssl.models.<method>``; registered with the transformers Auto
classes by the same call), its training step (a ``PretrainingMethod``), its training arguments and augmentation
config, its card template and a one-line summary. Everything else (engines, recipes, checkpoints, k-NN, history,
model cards, the ``hf-ssl`` command) is shared. The methods shipped with hf_ssl are the modules of this package
that make that call; they are imported the first time the registry is asked.

    from hf_ssl.training.methods import get_method, registered_methods
    spec = get_method("dino")
    model = spec.pretraining_model_class(spec.config_class(...))
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl.data import MultiCropConfig


@dataclass(frozen=True)
class MethodSpec:
    """Everything the shared machinery needs to know about a method.

    Args:
        name: the recipe's ``method:`` value, the checkpoint's ``method`` and the packaged card template's name.
        config_class: the ``PretrainedConfig`` (the recipe's ``model:`` section holds its arguments).
        pretraining_model_class: the ``AutoModelForPreTraining`` class the engines train.
        method_class: the ``PretrainingMethod`` the engines call around each step.
        training_arguments_class: the recipe's ``training:`` section.
        view_config_class: the recipe's ``augmentation:`` section: a ``ViewsConfig`` (named view groups), or a class
            in the method's own terms with ``to_views_config()`` (DINO's ``MultiCropConfig``, the two-view presets).
        model_class: the ``AutoModel`` class (features without the pretraining heads); None: none is registered.
        pretrained_overridable_keys: model keys that may change when continuing from a pretrained model (loss
            settings; no weight's shape depends on them).
        default_output_dir: ``training.output_dir`` when the recipe gives none.
        summary: one line for ``hf-ssl methods``, ``--help`` and the model card.
        card_template: the model card template (a Markdown file with Jinja fields); None: the one shipped with
            hf_ssl for ``name``, else the generic pretraining card.
    """

    name: str
    config_class: type
    pretraining_model_class: type
    method_class: type
    training_arguments_class: type
    view_config_class: type = MultiCropConfig
    model_class: type | None = None
    pretrained_overridable_keys: tuple[str, ...] = ()
    default_output_dir: str = "outputs/run"
    summary: str = ""
    card_template: str | Path | None = None


_METHODS: dict[str, MethodSpec] = {}
# the modules of this package that are not methods
_NOT_METHODS = frozenset({"base", "registry", "two_view"})
_BUILTIN_LOADED = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` known to the recipes and the engines, and its classes to ``AutoConfig``, ``AutoModel`` and
    ``AutoModelForPreTraining`` (so that ``from_pretrained`` loads what it saves). A second registration of a name
    replaces the first."""
    model_type = spec.config_class.model_type
    AutoConfig.register(model_type, spec.config_class, exist_ok=True)
    if spec.model_class is not None:
        AutoModel.register(spec.config_class, spec.model_class, exist_ok=True)
    AutoModelForPreTraining.register(spec.config_class, spec.pretraining_model_class, exist_ok=True)
    _METHODS[spec.name] = spec
    return spec


def load_builtin_methods() -> None:
    """Import the method modules shipped with hf_ssl (each registers itself), once."""
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    package = Path(__file__).parent
    for module in pkgutil.iter_modules([str(package)]):
        if module.name not in _NOT_METHODS:
            importlib.import_module(f"{__package__}.{module.name}")


def registered_methods() -> list[str]:
    load_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; a ``KeyError`` that lists the registered methods otherwise."""
    load_builtin_methods()
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; the methods are {sorted(_METHODS)}")
    return _METHODS[name]


def method_for_model(model) -> MethodSpec:
    """The spec whose config class ``model.config`` is (what the engines train when no method is named)."""
    load_builtin_methods()
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
