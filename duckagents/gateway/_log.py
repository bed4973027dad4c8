"""Rate-limited logging for faults that clients can trigger at will.

A client that sends a frame which trips an unexpected fault once a millisecond must not be able to flood
the log (or stderr) with a traceback per message: the first occurrence of each kind of fault is logged in
full, later ones are counted and summed up at most once per interval.
"""

from __future__ import annotations

import logging

import trio

from ..errors import redact

#: Seconds between two log lines about the same kind of fault.
LOG_INTERVAL = 60.0


class ThrottledLog:
    """Logs each ``key`` at most once per ``interval`` seconds (Trio clock), counting what it held back."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        # key -> (time of the last line, occurrences held back since)
        self._last: dict[str, tuple[float, int]] = {}
        #: Occurrences of every kind of fault, logged or not.
        self.total = 0

    def error(self, key: str, message: str, exc: BaseException | None = None) -> None:
        """Count one fault of kind ``key``; log ``message`` (with ``exc``'s traceback) unless the same
        kind was logged less than ``interval`` seconds ago."""
        self.total += 1
        now = trio.current_time()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) >= 256:  # bounded: keys are few (fault kinds), but never trust that
            self._last.clear()
        held = last[1] if last is not None else 0
        note = f" ({held} more like it in the last {self._interval:g} s)" if held else ""
        self._logger.error("%s%s", redact(message), note, exc_info=exc)
        self._last[key] = (now, 0)
