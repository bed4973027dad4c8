"""docs/configuration.md documents every key of every table of the config file, with its default."""

from __future__ import annotations

import enum
import re
import tomllib
from pathlib import Path

import attrs
import pytest

from duckagents.config import Table, tables

DOC = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
ROW = re.compile(r"^\| `([^`]+)` \| ([^|]*) \| ([^|]*) \|", re.M)


def _section(table: Table) -> str:
    """The text under the heading that names ``table`` (up to the next heading of any level)."""
    lines = DOC.splitlines()
    for n, line in enumerate(lines):
        if not line.startswith("#"):
            continue
        if table.header == "top level":
            names_it = line.strip("# ").lower() == "top level"
        else:
            names_it = f"`{table.header}`" in line
        # The options table has one section per provider kind; the tables under it have unique headers.
        if names_it and table.header == "[providers.options]":
            names_it = f'kind = "{table.kind}"' in line
        if names_it:
            end = next((m for m in range(n + 1, len(lines)) if lines[m].startswith("#")), len(lines))
            return "\n".join(lines[n:end])
    raise AssertionError(f"docs/configuration.md has no heading for {table.header} {table.kind or ''}")


ALL = list(tables())


@pytest.mark.parametrize("table", ALL, ids=[f"{t.header}{'-' + t.kind if t.kind else ''}" for t in ALL])
def test_every_key_is_documented_with_type_default_and_meaning(table: Table) -> None:
    rows = {key: (type_, default) for key, type_, default in ROW.findall(_section(table))}
    missing = sorted(set(table.keys) - set(rows))
    assert not missing, f"{table.header} ({table.kind}): undocumented keys {missing}"
    stale = sorted(set(rows) - set(table.keys))
    assert not stale, f"{table.header} ({table.kind}): documented keys that do not exist {stale}"
    for key, (type_, _) in rows.items():
        assert type_.strip(), f"{table.header}.{key}: no type"


def _documented_default(cell: str) -> object:
    """The value of a default cell that is a single TOML literal in backticks, else a marker."""
    match = re.fullmatch(r"\s*`([^`]*)`\s*", cell)
    if not match:
        return NotImplemented
    try:
        return tomllib.loads(f"v = {match.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return NotImplemented


@pytest.mark.parametrize("table", ALL, ids=[f"{t.header}{'-' + t.kind if t.kind else ''}" for t in ALL])
def test_documented_literal_defaults_are_the_real_ones(table: Table) -> None:
    if not attrs.has(table.cls) or table.header == "[providers.limits]":
        return
    rows = {key: default for key, _, default in ROW.findall(_section(table))}
    for field in attrs.fields(table.cls):
        documented = _documented_default(rows.get(field.name, ""))
        if documented is NotImplemented or field.default is attrs.NOTHING:
            continue
        actual = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default  # type: ignore[attr-defined]
        if isinstance(actual, frozenset | set):
            actual = sorted(a.value if isinstance(a, enum.Enum) else a for a in actual)
        elif isinstance(actual, tuple):
            actual = list(actual)
        elif attrs.has(type(actual)) or (isinstance(actual, dict) and not documented):
            continue
        assert documented == actual, f"{table.header}.{field.name}: documented {documented!r}, is {actual!r}"
