"""Strict JSON type checks against attrs classes, run before structuring client input.

The shared cattrs converter is deliberately lenient (it turns ``"5"`` into ``5`` and ``"abc"`` into
``("a", "b", "c")``). Input from outside clients must instead be refused with a message that names the
field, so :func:`check` walks the JSON value against the class's type hints first: JSON strings for
``str``, integers (not booleans) for ``int``, arrays for tuples, objects without unknown keys for attrs
classes, one of the allowed values for ``Literal``.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from typing import Any, Literal

import attrs

MAX_DEPTH = 32


class SchemaError(ValueError):
    """A JSON value does not have the expected shape; ``path`` locates the culprit (``$.options.stop``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def check(value: Any, tp: Any, path: str = "$", depth: int = 0) -> None:
    """Raise :class:`SchemaError` unless the JSON ``value`` fits the Python type ``tp`` exactly."""
    if depth > MAX_DEPTH:
        raise SchemaError(path, "nested too deeply")
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin in (typing.Union, types.UnionType):
        _check_union(value, typing.get_args(tp), path, depth)
        return
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not isinstance(value, str | int) or isinstance(value, bool) or value not in allowed:
            raise SchemaError(path, f"must be one of {', '.join(repr(a) for a in allowed)}")
        return
    if tp is type(None):
        if value is not None:
            raise SchemaError(path, f"must be null, got {_kind(value)}")
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, f"must be a boolean, got {_kind(value)}")
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"must be an integer, got {_kind(value)}")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SchemaError(path, f"must be a finite number, got {_kind(value)}")
        return
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(path, f"must be a string, got {_kind(value)}")
        return
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise SchemaError(path, f"must be an array, got {_kind(value)}")
        (item_type, *_) = typing.get_args(tp)
        for index, item in enumerate(value):
            check(item, item_type, f"{path}[{index}]", depth + 1)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(path, f"must be an object, got {_kind(value)}")
        return
    if isinstance(tp, type) and attrs.has(tp):
        check_object(value, tp, path, depth)
        return
    raise TypeError(f"schema.check does not know the type {tp!r}")  # a bug in our types, not the input


def _check_union(value: Any, alternatives: tuple[Any, ...], path: str, depth: int) -> None:
    if value is None and type(None) in alternatives:
        return
    tags = _tags(alternatives)
    if tags and isinstance(value, dict) and "type" in value:
        # A tagged union (message parts): the "type" key picks the class, so the error can name it.
        chosen = tags.get(value["type"]) if isinstance(value["type"], str) else None
        if chosen is None:
            raise SchemaError(f"{path}.type", f"must be one of {', '.join(repr(t) for t in tags)}")
        check_object(value, chosen, path, depth)
        return
    errors: list[SchemaError] = []
    for alternative in alternatives:
        if alternative is type(None):
            continue
        try:
            check(value, alternative, path, depth)
            return
        except SchemaError as exc:
            errors.append(exc)
    # The deepest complaint is the most useful one (it names the field that broke the best candidate).
    raise max(errors, key=lambda e: len(e.path))


@functools.cache
def _tags(alternatives: tuple[Any, ...]) -> dict[str, type]:
    """Map tag -> class when every alternative is an attrs class with a ``type: Literal[...]`` field."""
    tags: dict[str, type] = {}
    for alternative in alternatives:
        if alternative is type(None):
            continue
        if not (isinstance(alternative, type) and attrs.has(alternative)):
            return {}
        hint = _hints(alternative).get("type")
        if typing.get_origin(hint) is not Literal:
            return {}
        tags.update({tag: alternative for tag in typing.get_args(hint)})
    return tags


def check_object(value: Any, cls: type, path: str = "$", depth: int = 0) -> None:
    """Check a JSON object against an attrs class: required fields present, no unknown keys, types right."""
    if not isinstance(value, dict):
        raise SchemaError(path, f"must be an object, got {_kind(value)}")
    fields = attrs.fields_dict(cls)
    unknown = [key for key in value if key not in fields]
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in sorted(map(str, unknown))[:5])
        raise SchemaError(path, f"unknown field(s) {shown}; allowed: {', '.join(fields)}")
    hints = _hints(cls)
    for name, field in fields.items():
        if name not in value:
            if field.default is attrs.NOTHING:
                raise SchemaError(f"{path}.{name}", "required field missing")
            continue
        check(value[name], hints[name], f"{path}.{name}", depth + 1)
