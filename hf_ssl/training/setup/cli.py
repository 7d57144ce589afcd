"""The command line of a recipe script: ``--config``, ``--resume`` and overrides of any recipe key.

    python recipes/train_dino.py --config recipes/dino.yaml training.max_steps=100 --output_dir runs/a

Overrides take every form transformers example scripts and the recipe file allow: ``section.key=value``,
``--section.key value``, ``--section.key=value``, and, for a key that only one section has, the same
without the section (``--max_steps 100``, ``max_steps=100``). ``--help`` lists every section and key.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence

from hf_ssl.errors import ConfigError
from hf_ssl.training.setup.config import SectionHelp, first_paragraph, load_yaml
from hf_ssl.training.setup.recipe import Recipe

OVERRIDES_HELP = (
    "Every key below can be set in the recipe file under its section, or on the command line as section.key=value "
    "or --section.key value; a key that only one section has can leave its section out (--max_steps 100, "
    "max_steps=100). Values are read as YAML: 1e-4 and 0.5 are numbers, true and false booleans, null is None, "
    "[0.3, 1.0] a list, {a: 1} a mapping; anything else (no, off, fashion_mnist) is a string."
)


def parse_command_line(
    argv: Sequence[str] | None = None,
    method: str | None = None,
    description: str | None = None,
    prog: str | None = None,
) -> tuple[Recipe, str | None]:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into the recipe and the ``--resume`` value.

    ``--config`` names the recipe file; every other argument overrides one of its keys. ``--help`` prints
    ``description``, the options and every section and key of the recipe's method (the ``method:`` of the
    ``--config`` file, else ``method``), then exits. ``method`` is taken for a file without a ``method:`` key, and a
    file of another method is refused; None: the file must name its method. A missing ``--config``, a bad override or
    a bad value raises ``ConfigError``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    recipe_class = Recipe.for_method(method) if method is not None else Recipe
    help_method = _method_for_help(argv, method)
    parser = RecipeArgumentParser(
        lambda: recipe_class.sections_help(help_method),
        f"The keys of a {help_method!r} recipe",
        description=description,
        prog=prog,
    )
    parser.add_argument("--config", required=True, help="Recipe YAML file, e.g. recipes/dino.yaml.")
    parser.add_argument(
        "--resume",
        default=None,
        help="Checkpoint folder to resume from, 'auto' for the latest checkpoint in training.output_dir (a fresh "
        "start when there is none), or 'hub' to first fetch last-checkpoint/ of the run's Hub repository "
        "(training.hub_model_id; pushed by training.hub_strategy=checkpoint) unless training.output_dir holds a newer "
        "one.",
    )
    arguments, overrides = parser.parse_known_args(argv)
    return recipe_class.from_yaml(arguments.config, overrides), arguments.resume


def _method_for_help(argv: Sequence[str], method: str | None) -> str:
    """The method whose keys ``--help`` lists: the ``--config`` file's, else ``method``, else DINO's."""
    for index, argument in enumerate(argv):
        path = (
            argument.split("=", 1)[1]
            if argument.startswith("--config=")
            else argv[index + 1]
            if argument == "--config" and index + 1 < len(argv)
            else None
        )
        if path is None:
            continue
        try:
            named = load_yaml(path).get("method")
        except Exception:  # an unreadable file is reported by the parse itself, not by --help
            named = None
        if isinstance(named, str):
            return named
    return method or "dino"


class RecipeArgumentParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose mistakes raise ``ConfigError`` and whose ``--help`` ends with every recipe key:
    ``sections_help()`` gives them (a ``KeyError`` from it is shown as its message), under ``title``."""

    def __init__(self, sections_help: Callable[[], Sequence[SectionHelp]], title: str, **kwargs):
        # allow_abbrev=False: a misspelt key such as --res must reach the overrides (and their error), not
        # silently become --resume
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False, **kwargs)
        self.sections_help = sections_help
        self.title = title

    def format_help(self) -> str:
        try:
            sections = self.sections_help()
        except KeyError as error:
            return f"{super().format_help()}\n{error.args[0]}\n"
        return f"{super().format_help()}\n{self.title}:\n{format_sections_help(sections, help_width())}\n"

    def error(self, message: str):
        raise ConfigError(
            f"{message} (usage: {self.format_usage().removeprefix('usage: ').strip()}; --help lists every key)"
        )


def help_width() -> int:
    """Columns to wrap ``--help`` at: the terminal's (``$COLUMNS`` when set), kept between 80 and 120."""
    return min(max(shutil.get_terminal_size().columns, 80), 120) - 2


def format_sections_help(sections: Sequence[SectionHelp], width: int = 98) -> str:
    """Every section and key of ``sections`` as ``--help`` prints them, wrapped to ``width`` columns::

    model:
      Everything needed to rebuild a DINO student/teacher pair ...
        out_dim (int, default: 65536)
            number of prototypes K, the size of the head output.
    """

    def wrap(text: str, indent: int, hanging: int | None = None) -> list[str]:
        hanging = indent if hanging is None else hanging
        return textwrap.wrap(
            text, width, initial_indent=" " * indent, subsequent_indent=" " * hanging, break_on_hyphens=False
        )

    lines = ["recipe keys:", *wrap(OVERRIDES_HELP, 2)]
    for section in sections:
        lines += ["", f"{section.name}:", *wrap(first_paragraph(section.description), 2)]
        for title, keys in section.groups:
            if title:
                lines += ["", *wrap(title, 2)]
            for key in keys:
                kind = f"{key.type}, " if key.type else ""
                lines += wrap(f"{key.name} ({kind}default: {key.default})", 4, hanging=8)
                lines += wrap(key.help, 8)
    return "\n".join(lines)
