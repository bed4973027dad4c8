"""The package's shape: no import cycles, each layer imports only the layers below it, and nobody
imports another layer's private modules (neither the package nor the tests).

The import graph is read from the source (every ``import`` / ``from ... import``, including those under
``TYPE_CHECKING``), so a cycle the interpreter would tolerate at run time is still caught.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "duckagents"

#: The layers, lowest first: a module may import its own layer and those listed before it. Shared data
#: modules come first; ``testing`` (the loopback servers) stands beside the tree and is imported by no one.
LAYERS: list[str] = [
    "errors",
    "messages",
    "signals",
    "codec",
    "validation",
    "bus",
    "supervision",
    "resilience",
    "costs",
    "config",
    "providers",
    "fleet",
    "agents",
    "router",
    "gateway",
    "app",
    "live",
    "http",
    "cli",
    "__main__",
]
BESIDE = {"testing": {"errors", "messages", "signals", "codec", "providers"}}
#: Folders that are layers: their ``_modules`` are private to them.
LAYER_PACKAGES = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def _module_of(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _resolve(level: int, module: str | None, current: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def _imports(path: Path, root: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in ``path``; ``from pkg import name`` yields
    ``pkg.name`` when that is a module of ours, else ``pkg``."""
    current, is_package = _module_of(path, root)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.level, node.module, current, is_package)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if _is_module(sub) else target), node.lineno


def _is_module(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _package_modules() -> dict[str, Path]:
    return {_module_of(p, REPO)[0]: p for p in PACKAGE.rglob("*.py")}


def _unit(module: str) -> str:
    """The layer of a ``duckagents`` module: its folder, or the top-level module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "duckagents"


def _graph() -> dict[str, set[str]]:
    modules = _package_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, _ in _imports(path, REPO):
            if target in modules and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_layer_is_placed() -> None:
    units = {_unit(m) for m in _package_modules()} - {"duckagents"}
    unplaced = units - set(LAYERS) - set(BESIDE)
    assert not unplaced, f"add {sorted(unplaced)} to LAYERS (or BESIDE) in this test"


def test_each_layer_imports_only_layers_below_it() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for module, targets in _graph().items():
        unit = _unit(module)
        if unit == "duckagents":  # the package's __init__ re-exports the public API
            continue
        for target in targets:
            other = _unit(target)
            if other == unit or other == "duckagents":
                continue
            if unit in BESIDE:
                allowed = other in BESIDE[unit]
            else:
                allowed = other in rank and rank[other] < rank[unit]
            if not allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def _private_of_another_layer(target: str, importer_layer: str) -> bool:
    parts = target.split(".")
    if parts[0] != "duckagents" or len(parts) < 3:
        return False
    layer = parts[1]
    return layer in LAYER_PACKAGES and layer != importer_layer and any(p.startswith("_") for p in parts[2:])


@pytest.mark.parametrize("root", ["duckagents", "tests", "benchmarks"])
def test_nobody_imports_another_layers_private_modules(root: str) -> None:
    wrong = []
    for path in (REPO / root).rglob("*.py"):
        rel = path.relative_to(REPO)
        # A test folder mirrors one layer (tests/router/ tests duckagents.router) and may use its privates.
        layer = rel.parts[1] if len(rel.parts) > 2 else ""
        for target, line in _imports(path, REPO):
            if _private_of_another_layer(target, layer):
                wrong.append(f"{rel}:{line} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))
