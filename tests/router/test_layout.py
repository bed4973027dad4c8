"""The router's modules import one another in one direction only: no cycle, and no module imports back the
router that uses it (TYPE_CHECKING imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import duckagents.router

ROUTER_DIR = Path(duckagents.router.__file__).parent


def _sibling_imports(path: Path) -> set[str]:
    """The router modules ``path`` imports (``from ._x import ...`` / ``from . import _x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    return {p.stem: _sibling_imports(p) for p in ROUTER_DIR.glob("*.py") if p.stem != "__init__"}


def test_router_modules_import_each_other_without_cycles() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for target in graph.get(module, ()):
            visit(target, (*path, module))
        done.add(module)

    assert "_request" in graph and "_state" in graph  # the walk sees the modules it is about
    for module in graph:
        visit(module, ())


def test_only_the_package_imports_the_router_agent_module() -> None:
    importers = sorted(m for m, targets in _graph().items() if "_router" in targets)
    assert importers == []
