"""Faults met while handling one request, contained: the request fails (kind ``internal``) and its actor
keeps serving. :class:`FaultLog` describes such a fault for the request's error message and logs it.

A client can send the same poison request again and again: each kind of fault (exception type and the
place it was raised) is logged with its full traceback and the request's id at most once per
:data:`LOG_INTERVAL`; later ones are counted and the count goes into the next line about that kind. So
the log shows every kind of fault, and no client can flood it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import trio

from ..errors import Secret, redact
from ._events import format_crash, leaves

__all__ = ["LOG_INTERVAL", "FaultLog"]

#: Seconds between two log lines about the same kind of fault.
LOG_INTERVAL = 60.0
#: Characters of exception text quoted in a request's error message.
MAX_DESCRIPTION = 300
#: Characters of one logged traceback (its head and its tail are kept).
MAX_TRACEBACK = 32 * 1024
# Kinds of fault remembered at most (they are few; never trust that).
_MAX_KINDS = 256


def _printable(text: str) -> str:
    """``text`` as valid Unicode: a lone surrogate (which no encoder takes) becomes a ``\\udXXX`` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe_fault(exc: BaseException, secrets: Iterable[Secret | str | None] = ()) -> str:
    """``Type: message`` of ``exc``'s first leaf (groups flattened), for an error message a client sees:
    redacted, valid Unicode and at most :data:`MAX_DESCRIPTION` characters (an exception may quote
    megabytes of the request that caused it)."""
    leaf = next(iter(leaves(exc)), exc)
    try:
        text = str(leaf)
    except Exception:  # a broken __str__ must not turn one fault into another
        text = "(unprintable)"
    name = type(leaf).__name__
    head = _printable(f"{name}: {text}"[: MAX_DESCRIPTION * 4] if text else name)
    head = redact(head, secrets)
    return head if len(head) <= MAX_DESCRIPTION else head[: MAX_DESCRIPTION - 3] + "..."


def _kind(exc: BaseException) -> str:
    """What tells faults apart in the log: the first leaf's type and where it was raised."""
    leaf = next(iter(leaves(exc)), exc)
    tb = leaf.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    return f"{type(leaf).__qualname__}@{where}"


class FaultLog:
    """Logs the contained faults of one actor on ``logger`` (see the module docstring)."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        # kind -> (time of its last line, occurrences held back since)
        self._last: dict[str, tuple[float, int]] = {}
        #: Faults contained so far, logged or not.
        self.total = 0

    def request_failed(
        self, exc: BaseException, what: str, secrets: Iterable[Secret | str | None] = ()
    ) -> str:
        """Count that ``what`` (who met it and the request, e.g. ``"agent a#1: request r1 (attempt 1)"``)
        failed with ``exc``; log it with its traceback unless the same kind of fault was logged less than
        ``interval`` seconds ago. Returns :func:`describe_fault` of ``exc``."""
        secrets = tuple(secrets)
        self.total += 1
        kind = _kind(exc)
        now = trio.current_time()
        last = self._last.get(kind)
        if last is None or now - last[0] >= self.interval:
            if last is None and len(self._last) >= _MAX_KINDS:
                self._last.clear()
            held = last[1] if last is not None else 0
            note = f" ({held} more like it in the last {self.interval:g} s, not logged)" if held else ""
            # Redacted before it is cut, so that no secret is cut in two and half of it left.
            text = redact(_printable(format_crash(exc)), secrets)
            if len(text) > MAX_TRACEBACK:
                half = MAX_TRACEBACK // 2
                text = f"{text[:half]}\n... ({len(text) - 2 * half} characters left out) ...\n{text[-half:]}"
            self.logger.error(
                "%s failed with an internal error, contained (it fails alone)%s\n%s",
                _printable(what), note, text,
            )
            self._last[kind] = (now, 0)
        else:
            self._last[kind] = (last[0], last[1] + 1)
        return describe_fault(exc, secrets)
