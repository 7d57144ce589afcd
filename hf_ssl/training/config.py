"""Recipe configuration: a YAML file of sections, each mapped onto a typed dataclass, plus
command-line overrides of any key.

A recipe file looks like::

    model:        {out_dim: 65536, backbone_config: {model_type: vit, ...}}
    data:         {dataset: fashion_mnist, ...}
    augmentation: {global_crop_size: 224, ...}
    training:     {learning_rate: 0.0005, ...}   # any transformers.TrainingArguments key, and ours

and overrides are ``section.key=value`` (or ``--section.key value``), values parsed as YAML
(``training.max_steps=100``, ``augmentation.global_crops_scale=[0.3,1.0]``).
Unknown sections or keys, and values of the wrong type, stop with an error that names the key and
lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe file or override that cannot be turned into a valid configuration."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as handle:
        try:
            raw = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_overrides(arguments: Sequence[str]) -> list[tuple[str, Any]]:
    """Turn ``["a.b=1", "--c.d", "x", "--e.f=2"]`` into ``[("a.b", 1), ("c.d", "x"), ("e.f", 2)]``."""
    pairs: list[tuple[str, Any]] = []
    index = 0
    while index < len(arguments):
        token = arguments[index].removeprefix("--")
        if "=" in token:
            key, text = token.split("=", 1)
        elif index + 1 < len(arguments):
            key, text = token, arguments[index + 1]
            index += 1
        else:
            raise ConfigError(f"override {arguments[index]!r} has no value: write section.key=value")
        if "." not in key:
            raise ConfigError(f"override {key!r} must name its section: section.key=value (e.g. training.max_steps=10)")
        pairs.append((key, _parse_scalar(text)))
        index += 1
    return pairs


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Set every dotted key of ``overrides`` in a copy of ``raw`` (nested dicts are created as needed)."""
    merged = _deep_copy(raw)
    for dotted_key, value in overrides:
        node = merged
        *parents, leaf = dotted_key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {dotted_key!r}: {part!r} holds a value, not a section")
            node = child
        node[leaf] = value
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


def _unknown_key_error(where: str, key: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown key {where}.{key}.{hint} Valid keys of {where!r}: {', '.join(sorted(valid))}")


def check_sections(raw: Mapping[str, Any], sections: Sequence[str], source: str = "config") -> None:
    for section, value in raw.items():
        if section not in sections:
            raise _unknown_key_error(source, section, sections)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"section {section!r} must be a mapping of keys, got {type(value).__name__}")


def build_dataclass(cls: type, values: Mapping[str, Any] | None, section: str):
    """Instantiate dataclass ``cls`` from ``values``, checking keys and coercing types."""
    values = dict(values or {})
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key_error(section, key, list(fields))
        kwargs[key] = coerce(value, hints.get(key, Any), f"{section}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid {section!r} section: {error}") from error


def check_keyword_arguments(function: Callable, values: Mapping[str, Any] | None, section: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Check ``values`` against the keyword parameters of ``function`` (e.g. a ``PretrainedConfig``
    ``__init__``), coercing by its annotations. Keys in ``extra`` are accepted as they are."""
    values = dict(values or {})
    signature = inspect.signature(function)
    parameters = {
        name: parameter
        for name, parameter in signature.parameters.items()
        if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # annotations that cannot be resolved are simply not coerced
        hints = {}
    checked = {}
    for key, value in values.items():
        if key in extra:
            checked[key] = value
        elif key not in parameters:
            raise _unknown_key_error(section, key, [*parameters, *extra])
        else:
            checked[key] = coerce(value, hints.get(key, Any), f"{section}.{key}")
    return checked


_NONE_TYPE = type(None)


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` where the conversion is lossless and obvious
    (int -> float, list -> tuple, "1e-4" -> float), else raise a ``ConfigError`` naming ``where``."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and _NONE_TYPE in arguments:
            return None
        errors = []
        for option in arguments:
            if option is _NONE_TYPE:
                continue
            try:
                return coerce(value, option, where)
            except ConfigError as error:
                errors.append(error)
        raise ConfigError(f"{where}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")
    if origin is typing.Literal:
        if value in arguments:
            return value
        raise ConfigError(f"{where}: expected one of {list(arguments)}, got {value!r}")
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_type_name(annotation)}), got {value!r}")
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            if len(arguments) != len(value):
                raise ConfigError(f"{where}: expected {len(arguments)} values, got {len(value)}: {value!r}")
            return tuple(coerce(item, option, f"{where}[{i}]") for i, (item, option) in enumerate(zip(value, arguments)))
        item_type = arguments[0] if arguments else Any
        items = [coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple or annotation is tuple else items
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError as error:
            allowed = [member.value for member in annotation]
            raise ConfigError(f"{where}: expected one of {allowed}, got {value!r}") from error
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def to_plain(value: Any) -> Any:
    """A YAML-safe copy of a config value (dataclasses, enums and tuples become dicts, values, lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_plain(getattr(value, field.name)) for field in dataclasses.fields(value) if field.init}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
