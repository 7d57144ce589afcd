"""Lazy package exports: a package names what it exports and from which module, and each module is imported on
first use. ``import hf_ssl.training`` then costs nothing until a name is used, and ``python -m`` on a module of the
package runs it once (an eager ``__init__`` would have imported it already)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, namespace: dict, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``exports`` map each public name to its module; a name is
    imported on first access and stored in ``namespace`` (the package's ``globals()``)."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
