"""The method interface (``base``: ``PretrainingMethod``, ``EmaTeacherMethod``, the step protocol), the registry
(``registry``: ``MethodSpec``, ``register_method``) and one module per method, each declaring itself with
``register_method``."""

from hf_ssl.training.methods.base import (
    EmaTeacherMethod,
    PretrainingMethod,
    Schedules,
    decay_parameter_groups,
    restart_moments,
)
from hf_ssl.training.methods.registry import (
    MethodSpec,
    get_method,
    load_builtin_methods,
    method_for_model,
    register_method,
    registered_methods,
)

__all__ = [
    "EmaTeacherMethod",
    "MethodSpec",
    "PretrainingMethod",
    "Schedules",
    "decay_parameter_groups",
    "get_method",
    "load_builtin_methods",
    "method_for_model",
    "register_method",
    "registered_methods",
    "restart_moments",
]
