"""A supervisor's lifecycle events: kept for inspection, counted, and published on the signal bus; and
how a crash is described (in an event) and logged (with its traceback).

Re-exported by :mod:`duckagents.supervision`: :data:`MAX_EVENTS` and :data:`EMIT_TIMEOUT`.
Publishing is bounded in time, so a stalled bus subscriber can never stall supervision.

A child's exception usually reaches its supervisor wrapped in the exception group of the child's nursery
("Exceptions from Trio nursery (1 sub-exception)", which says nothing): groups are flattened to their
leaves here, so that an event names the real exception and the log shows each leaf's traceback.
"""

from __future__ import annotations

import traceback
from collections import Counter, deque
from collections.abc import Iterator

import trio

from ..bus import SignalBus
from ..errors import BusClosed, redact
from ..signals import SupervisorEvent, make_signal

__all__ = ["EMIT_TIMEOUT", "MAX_EVENTS", "EventLog", "describe", "format_crash", "leaves"]

#: How many recent events a supervisor keeps for inspection.
MAX_EVENTS = 256
#: How long an event may wait for room on the bus before it is given up (counted in ``lost_events``):
#: a stalled subscriber must not stall supervision.
EMIT_TIMEOUT = 1.0
_MAX_REASON = 300


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``error``, exception groups flattened (``error`` itself if not a group)."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


def _first_leaf(error: BaseException) -> tuple[BaseException, int]:
    found = list(leaves(error))
    return (found[0], len(found)) if found else (error, 1)


def error_fields(error: BaseException | None) -> tuple[str, str]:
    """``(type name, message)`` of the first leaf of ``error``, redacted and truncated; empty if None."""
    if error is None:
        return "", ""
    leaf, _ = _first_leaf(error)
    return type(leaf).__name__, redact(str(leaf))[:_MAX_REASON]


def describe(error: BaseException | None) -> str:
    """The ``reason`` of an event about ``error``: ``"Type: message"`` of its first leaf (groups
    flattened), with how many more there were, redacted and truncated."""
    if error is None:
        return ""
    leaf, count = _first_leaf(error)
    more = f" (and {count - 1} more)" if count > 1 else ""
    return redact(f"{type(leaf).__name__}: {leaf}{more}")[:_MAX_REASON]


def format_crash(error: BaseException) -> str:
    """The full traceback of every leaf of ``error`` (exception groups flattened), redacted, for the log."""
    found = list(leaves(error))
    parts = []
    for index, leaf in enumerate(found, 1):
        head = f"--- exception {index} of {len(found)} ---\n" if len(found) > 1 else ""
        parts.append(head + "".join(traceback.format_exception(leaf)))
    return redact("".join(parts).rstrip())


class EventLog:
    """The events of one supervisor: the last :data:`MAX_EVENTS`, a count per kind, and how many were lost
    on the way to the bus."""

    __slots__ = ("_events", "counts", "lost", "source", "supervisor")

    def __init__(self, supervisor: str) -> None:
        self.supervisor = supervisor
        #: The ``source`` of the published signals.
        self.source = f"/supervisor/{supervisor}"
        self.counts: Counter[str] = Counter()
        #: Events that timed out waiting for room on the bus.
        self.lost = 0
        self._events: deque[SupervisorEvent] = deque(maxlen=MAX_EVENTS)

    @property
    def events(self) -> list[SupervisorEvent]:
        """The most recent events, oldest first."""
        return list(self._events)

    async def emit(
        self,
        bus: SignalBus | None,
        child: str,
        event: str,
        error: BaseException | None = None,
        restarts: int = 0,
    ) -> None:
        """Record an event (about ``error``, if any) and publish it on ``bus`` (if any), waiting at most
        :data:`EMIT_TIMEOUT` for room; a closed bus is ignored."""
        error_type, error_message = error_fields(error)
        record = SupervisorEvent(
            self.supervisor, child, event, describe(error), restarts, error_type, error_message
        )
        self._events.append(record)
        self.counts[event] += 1
        if bus is None:
            return
        with trio.move_on_after(EMIT_TIMEOUT) as scope:
            try:
                await bus.publish(make_signal(record, self.source))
            except BusClosed:
                return
        if scope.cancelled_caught:
            self.lost += 1
