"""A supervisor's lifecycle events: kept for inspection, counted, and published on the signal bus.

Re-exported by :mod:`duckagents.supervision`: :data:`MAX_EVENTS` and :data:`EMIT_TIMEOUT`.
Publishing is bounded in time, so a stalled bus subscriber can never stall supervision.
"""

from __future__ import annotations

from collections import Counter, deque

import trio

from ..bus import SignalBus
from ..errors import BusClosed, redact
from ..signals import SupervisorEvent, make_signal

__all__ = ["EMIT_TIMEOUT", "MAX_EVENTS", "EventLog", "describe"]

#: How many recent events a supervisor keeps for inspection.
MAX_EVENTS = 256
#: How long an event may wait for room on the bus before it is given up (counted in ``lost_events``):
#: a stalled subscriber must not stall supervision.
EMIT_TIMEOUT = 1.0
_MAX_REASON = 300


def describe(error: BaseException | None) -> str:
    """The ``reason`` of an event about ``error``: ``"Type: message"``, redacted and truncated."""
    if error is None:
        return ""
    return redact(f"{type(error).__name__}: {error}")[:_MAX_REASON]


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
        self, bus: SignalBus | None, child: str, event: str, reason: str = "", restarts: int = 0
    ) -> None:
        """Record an event and publish it on ``bus`` (if any), waiting at most :data:`EMIT_TIMEOUT` for
        room; a closed bus is ignored."""
        record = SupervisorEvent(self.supervisor, child, event, reason, restarts)
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
