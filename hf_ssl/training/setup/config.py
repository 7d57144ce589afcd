"""Recipe configuration: a YAML file of sections, each mapped onto a typed dataclass, plus
command-line overrides of any key.

A recipe file looks like::

    model:        {out_dim: 65536, backbone_config: {model_type: vit, ...}}
    data:         {dataset: fashion_mnist, ...}
    augmentation: {global_crop_size: 224, ...}
    training:     {learning_rate: 0.0005, ...}   # any transformers.TrainingArguments key, and ours

and overrides are ``section.key=value`` (or ``--section.key value``), values parsed as YAML
(``training.max_steps=100``, ``augmentation.global_crops_scale=[0.3,1.0]``). A key that only one
section has may leave its section out, as in every transformers example script (``--max_steps 100``).
Values are read the way a user means them, not by YAML 1.1: ``1e-4`` is a number, ``no`` a string.
Unknown sections or keys, and values of the wrong type, stop with an error that names the key and
lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hf_ssl.errors import ConfigError  # noqa: F401 (re-exported)

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_FLOAT_PATTERN = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?  # 1.  1.5  1.0e+3
              |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?        # .5  .5e-3
              |[0-9][0-9_]*[eE][-+]?[0-9]+                # 1e-8  5E-4
              |\.(?:inf|Inf|INF))$
       |^\.(?:nan|NaN|NAN)$""",
    re.VERBOSE,
)
_BOOL_PATTERN = re.compile(r"^(?:true|false)$", re.IGNORECASE)


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads plain values the way a user writes them on a command line.

    PyYAML follows YAML 1.1, where ``1e-8`` (no dot) is a string, ``no``/``yes``/``on``/``off`` are
    booleans and ``2024-01-01`` is a date. Here every decimal or exponent number (``1e-8``, ``5E-4``,
    ``1.0e+3``, ``.5``) is a float, only ``true``/``false`` (any case) are booleans, and dates stay
    strings; integers, ``null`` and everything else read as in ``yaml.safe_load``.
    """


def _recipe_resolvers() -> dict[str | None, list]:
    replaced = (_BOOL_TAG, _FLOAT_TAG, _TIMESTAMP_TAG)
    resolvers = {
        first: [(tag, pattern) for tag, pattern in entries if tag not in replaced]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for first in "-+.0123456789":
        resolvers.setdefault(first, []).insert(0, (_FLOAT_TAG, _FLOAT_PATTERN))
    for first in "tTfF":
        resolvers.setdefault(first, []).insert(0, (_BOOL_TAG, _BOOL_PATTERN))
    return {first: entries for first, entries in resolvers.items() if entries}


# new lists, so that yaml.SafeLoader (and every other user of PyYAML) keeps YAML 1.1
RecipeLoader.yaml_implicit_resolvers = _recipe_resolvers()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read the recipe file ``path`` (with ``RecipeLoader``) into a dict of sections."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as handle:
        try:
            raw = yaml.load(handle, Loader=RecipeLoader) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_overrides(
    arguments: Sequence[str], section_keys: Mapping[str, Collection[str]] | None = None
) -> list[tuple[str, Any]]:
    """Turn ``["a.b=1", "--c.d", "x", "--e.f=2"]`` into ``[("a.b", 1), ("c.d", "x"), ("e.f", 2)]``.

    Values are parsed with ``RecipeLoader``. With ``section_keys`` (section name -> its keys), a key
    written without its section (``max_steps=5``, ``--max_steps 5``, ``--max_steps=5``) gets the one
    section that has it; without, every key must name its section.
    """
    pairs: list[tuple[str, Any]] = []
    index = 0
    while index < len(arguments):
        token = arguments[index].removeprefix("--")
        if "=" in token:
            key, text = token.split("=", 1)
        elif index + 1 < len(arguments) and not arguments[index + 1].startswith("--"):
            key, text = token, arguments[index + 1]
            index += 1
        else:
            raise ConfigError(
                f"override {arguments[index]!r} has no value: write --{token} VALUE or {token}=VALUE "
                "(a switch too: --bf16 true, not --bf16 alone)"
            )
        if not key:
            raise ConfigError(
                f"override {arguments[index]!r} names no key: write section.key=value (e.g. training.max_steps=10)"
            )
        pairs.append((_with_section(key, section_keys), _parse_scalar(text)))
        index += 1
    return pairs


def _with_section(key: str, section_keys: Mapping[str, Collection[str]] | None) -> str:
    """``key`` prefixed with the one section that has its first part, when that part names no section."""
    first = key.split(".", 1)[0]
    if section_keys is None:
        if "." not in key:
            raise ConfigError(
                f"override {key!r} must name its section: section.key=value (e.g. training.max_steps=10)"
            )
        return key
    if first in section_keys:
        if "." not in key:
            raise ConfigError(f"override {key!r} names a section but no key: write {key}.KEY=value")
        return key
    owners = [section for section, keys in section_keys.items() if first in keys]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if owners:
        choices = " or ".join(f"{section}.{key}" for section in owners)
        raise ConfigError(f"key {first!r} is in several sections ({', '.join(owners)}): write {choices}")
    every_key = {name for keys in section_keys.values() for name in keys}
    close = difflib.get_close_matches(first, every_key, n=3, cutoff=0.6)
    suggestions = [f"{section}.{name}" for name in close for section, keys in section_keys.items() if name in keys]
    hint = f" Did you mean {', '.join(repr(suggestion) for suggestion in suggestions)}?" if suggestions else ""
    raise ConfigError(
        f"unknown key {first!r}: no section has it.{hint} Write section.key=value with a section of "
        f"{', '.join(section_keys)} (--help lists every key)"
    )


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.load(text, Loader=RecipeLoader)
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


def check_keyword_arguments(
    function: Callable, values: Mapping[str, Any] | None, section: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """Check ``values`` against the keyword parameters of ``function`` (e.g. a ``PretrainedConfig``
    ``__init__``), coercing by its annotations. Keys in ``extra`` are accepted as they are."""
    values = dict(values or {})
    signature = inspect.signature(function)
    parameters = {
        name: parameter
        for name, parameter in signature.parameters.items()
        if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }
    hints = _parameter_hints(function, parameters.values())
    checked = {}
    for key, value in values.items():
        if key in extra:
            checked[key] = value
        elif key not in parameters:
            raise _unknown_key_error(section, key, [*parameters, *extra])
        else:
            checked[key] = coerce(value, hints.get(key, Any), f"{section}.{key}")
    return checked


def _parameter_hints(function: Callable, parameters: Collection[inspect.Parameter]) -> dict[str, Any]:
    """The annotations of ``parameters`` that can be resolved, one by one: a single unresolvable one
    (``dtype: "torch.dtype"`` of ``PretrainedConfig``, whose module imports torch only for type checkers)
    must not leave every other parameter uncoerced."""
    try:
        return typing.get_type_hints(function)
    except Exception:
        pass
    hints = {}
    for parameter in parameters:
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(
                    annotation, getattr(function, "__globals__", {})
                )  # as typing.get_type_hints does, name by name
            except Exception:
                continue
        hints[parameter.name] = annotation
    return hints


_NONE_TYPE = type(None)
_BOOLEAN_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` where the conversion is lossless and obvious
    (int -> float, list -> tuple, "1e-4" -> float, "1000" -> int, "no" -> False, 2024 -> "2024"),
    else raise a ``ConfigError`` naming ``where``."""
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
            return tuple(
                coerce(item, option, f"{where}[{i}]") for i, (item, option) in enumerate(zip(value, arguments))
            )
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
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[value.strip().lower()]
        raise ConfigError(f"{where}: expected true or false (or yes/no, on/off, 1/0), got {value!r}")
    if annotation is int:
        number = value
        if isinstance(value, str):  # "1000" or "1e3" from a Python dict or a quoted YAML value
            try:
                number = int(value)
            except ValueError:
                try:
                    number = float(value)
                except ValueError:
                    pass
        if isinstance(number, int) and not isinstance(number, bool):
            return number
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # a quoted "1e-4", or a value from a Python dict
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # run_name=2024 or hub_revision=1.5: text that YAML read as a number
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


# ----- what --help shows of each section -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KeyHelp:
    """One key of a recipe section as ``--help`` shows it: its name, type and default as text, its help."""

    name: str
    type: str
    default: str
    help: str = ""


@dataclasses.dataclass(frozen=True)
class SectionHelp:
    """A recipe section for ``--help``: a description (its first paragraph is shown) and the keys, in
    groups of ``(title, keys)``; an empty title shows the group without one."""

    name: str
    description: str
    groups: tuple[tuple[str, tuple[KeyHelp, ...]], ...]

    @property
    def keys(self) -> list[str]:
        return [key.name for _, keys in self.groups for key in keys]


def dataclass_help(cls: type, names: Sequence[str] | None = None) -> tuple[KeyHelp, ...]:
    """The ``KeyHelp`` of every init field of dataclass ``cls`` in declaration order (or of the fields in
    ``names``, in that order), with the help of ``field.metadata["help"]``."""
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    keys = []
    for name in fields if names is None else [name for name in names if name in fields]:
        field = fields[name]
        if field.default is not dataclasses.MISSING:
            default = value_text(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = value_text(field.default_factory())
        else:
            default = "required"
        keys.append(
            KeyHelp(field.name, annotation_text(field.type), default, _plain_text(field.metadata.get("help", "")))
        )
    return tuple(keys)


def keyword_arguments_help(function: Callable, *docstrings: str | None) -> tuple[KeyHelp, ...]:
    """The ``KeyHelp`` of every keyword parameter of ``function``: type and default from its signature,
    help from the first of ``docstrings`` whose ``Args:`` section documents it."""
    documented: dict[str, str] = {}
    for docstring in reversed(docstrings):  # the first docstring wins
        documented.update(docstring_arguments(docstring))
    keys = []
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        default = "required" if parameter.default is parameter.empty else value_text(parameter.default)
        annotation = "" if parameter.annotation is parameter.empty else annotation_text(parameter.annotation)
        keys.append(KeyHelp(name, annotation, default, documented.get(name, "")))
    return tuple(keys)


_ARGUMENTS_HEADER = re.compile(r"^(?:Args|Arg|Arguments|Parameters):\s*$")
_ARGUMENT_ENTRY = re.compile(r"^(\w+) \(.*?\):(?:\s+(.*))?$")


def docstring_arguments(docstring: str | None) -> dict[str, str]:
    """Name -> description of each entry of the ``Args:`` section of a transformers-style docstring::

        Args:
            out_dim (`int`, defaults to 65536): number of prototypes K.
            norm_last_layer (`bool`, defaults to `True`):
                Fix the magnitude of the last layer to 1.

    Descriptions are joined into one line, without backticks. The section ends at the first line that is
    indented no deeper than ``Args:``; lines starting with ``>`` (sub-headings) are skipped.
    """
    lines = inspect.cleandoc(docstring or "").splitlines()
    arguments: dict[str, list[str]] = {}
    header_indent = entry_indent = None
    current = None
    for line in lines:
        indent, stripped = len(line) - len(line.lstrip()), line.strip()
        if header_indent is None:
            if _ARGUMENTS_HEADER.match(stripped):
                header_indent = indent
            continue
        if not stripped or stripped.startswith(">"):
            continue
        if indent <= header_indent:
            break
        entry_indent = indent if entry_indent is None else entry_indent
        match = _ARGUMENT_ENTRY.match(stripped) if indent == entry_indent else None
        if match:
            current = arguments.setdefault(match.group(1), [])
            current.append(match.group(2) or "")
        elif current is not None and indent > entry_indent:
            current.append(stripped)
    return {name: _plain_text(" ".join(parts)) for name, parts in arguments.items()}


def first_paragraph(docstring: str | None) -> str:
    """The first paragraph of ``docstring`` on one line, without backticks."""
    return _plain_text(inspect.cleandoc(docstring or "").split("\n\n", 1)[0])


def _plain_text(text: str) -> str:
    return " ".join(text.replace("``", "").replace("`", "").split())


def annotation_text(annotation: Any) -> str:
    """A type annotation as a user reads it: ``int | None``, ``tuple[float, float]``, ``IntervalStrategy | str``."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+", "", str(annotation)).replace("NoneType", "None")


def value_text(value: Any) -> str:
    """``value`` as it would be written in the recipe file (``null``, ``true``, ``[0.4, 1.0]``, ``1e-06``);
    a string that would read as something else is quoted."""
    value = to_plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(value_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {value_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, str):
        return value if value and _parse_scalar(value) == value else repr(value)
    return repr(value)
