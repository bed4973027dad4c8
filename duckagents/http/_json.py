"""JSON for the HTTP door: what a refused field says, and answers every client can parse.

Bodies are decoded and bounded by :mod:`duckagents.validation`, the one check of outside values at every
door (``[validation]``: size, depth, finite numbers, bounded integers, valid Unicode). Here: the error a
field check raises (:class:`BodyError`), and :func:`dumps`, the encoding of every answer.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ECHO_LIMIT", "BodyError", "dumps", "param_of", "short"]

#: Longest piece of client input echoed back in an error message.
ECHO_LIMIT = 40


class BodyError(ValueError):
    """A field of a request body that cannot be accepted; ``param`` names it (``messages[0].content``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.message = message
        self.param = param


def short(value: Any, limit: int = ECHO_LIMIT) -> str:
    """A bounded repr of client input, safe to put in an error message."""
    text = repr(value) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_of(path: str) -> str | None:
    """OpenAI's ``param`` for a validation path: ``$.messages[0].content`` -> ``messages[0].content``,
    ``$`` (the whole body) -> None."""
    if path in ("", "$"):
        return None
    return path[2:] if path.startswith("$.") else path.removeprefix("$")


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; never NaN or Infinity (raises ValueError). A lone surrogate (an upstream's
    broken text: no UTF-8 can carry it) becomes U+FFFD, as in the signals' JSON."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16, which pairs surrogates that make a character and replaces the lone ones.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
