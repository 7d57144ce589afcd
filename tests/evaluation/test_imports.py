"""The evaluation modules import in one direction: features <- linear_probe <- knn, with no cycle."""

import ast
from pathlib import Path

import hf_ssl.evaluation

PACKAGE = Path(hf_ssl.evaluation.__file__).parent


def _imported_evaluation_modules(path: Path) -> set[str]:
    """The ``hf_ssl.evaluation`` modules a file imports anywhere in it (top level or inside a function)."""
    modules = {f"hf_ssl.evaluation.{module.stem}" for module in PACKAGE.glob("*.py") if module.stem != "__init__"}
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    return imported & modules


def test_the_evaluation_modules_import_each_other_without_a_cycle():
    graph = {
        f"hf_ssl.evaluation.{path.stem}": _imported_evaluation_modules(path)
        for path in PACKAGE.glob("*.py")
        if path.stem != "__init__"  # its names are imported on first use, by name
    }
    assert graph["hf_ssl.evaluation.features"] == set()
    assert graph["hf_ssl.evaluation.linear_probe"] == {"hf_ssl.evaluation.features"}

    def reachable(start: str) -> set[str]:
        seen, frontier = set(), [start]
        while frontier:
            for module in graph[frontier.pop()] - seen:
                seen.add(module)
                frontier.append(module)
        return seen

    assert not [module for module in graph if module in reachable(module)]
