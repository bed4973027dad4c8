"""Strict JSON for the HTTP door: what a body may hold, and JSON out that every client can parse.

A body is refused (never crashes anything) when it is not UTF-8, not JSON, nested deeper than the
configured depth, or holds NaN/Infinity, a number that overflows to infinity, an integer beyond 64 bits
or a string with a lone surrogate (``"\\ud800"`` is valid JSON syntax but not Unicode; encoding it
later, for an upstream, would fail). The error names the offending field.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_INT", "BodyError", "dumps", "loads", "short"]

#: Largest integer magnitude accepted anywhere in a body (a signed 64-bit integer).
MAX_INT = 2**63 - 1
#: Longest piece of client input echoed back in an error message.
ECHO_LIMIT = 40


class BodyError(ValueError):
    """A body that cannot be accepted; ``param`` locates the culprit (``messages[0].content``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.message = message
        self.param = param


class _Invalid(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str | int] = []


def short(value: Any, limit: int = ECHO_LIMIT) -> str:
    """A bounded repr of client input, safe to put in an error message."""
    text = repr(value) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(body: bytes, *, max_depth: int) -> Any:
    """Parse and check a request body (see the module docstring); raises :class:`BodyError`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise BodyError(f"the body is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with more digits than Python converts
        raise BodyError(f"the body is not valid JSON: {str(exc)[:120]}") from None
    try:
        _check(value, 1, max_depth)
    except _Invalid as bad:
        raise BodyError(bad.problem, path_text(reversed(bad.path)) or None) from None
    return value


def path_text(parts: Any) -> str:
    """``["messages", 0, "content"]`` -> ``messages[0].content`` (keys cut to a bounded length)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if len(part) <= ECHO_LIMIT and part.isprintable() else short(part)
            out += f".{key}" if out else key
    return out


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid("must be valid Unicode (it holds a lone surrogate)") from None


def _check(value: Any, depth: int, max_depth: int) -> None:
    kind = type(value)
    if kind is str:
        if not value.isascii():
            _check_text(value)
    elif kind is dict:
        if depth > max_depth:
            raise _Invalid(f"nested deeper than {max_depth} levels")
        for key, item in value.items():
            try:
                if not key.isascii():
                    _check_text(key)
                _check(item, depth + 1, max_depth)
            except _Invalid as bad:
                bad.path.append(key if key.isascii() or _encodable(key) else "<key>")
                raise
    elif kind is list:
        if depth > max_depth:
            raise _Invalid(f"nested deeper than {max_depth} levels")
        for index, item in enumerate(value):
            try:
                _check(item, depth + 1, max_depth)
            except _Invalid as bad:
                bad.path.append(index)
                raise
    elif kind is int:
        if not -MAX_INT <= value <= MAX_INT:
            raise _Invalid("integer out of range (64-bit)")
    elif kind is float:
        if not math.isfinite(value):
            raise _Invalid("must be a finite number")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; never NaN/Infinity (raises ValueError). Text that holds a lone surrogate (an
    upstream may send one) goes out \\u-escaped, so the bytes are always valid UTF-8."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
