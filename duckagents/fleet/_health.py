"""Whether this replica is joined to the fleet or degraded (Redis unreachable or too slow)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

__all__ = ["FleetHealth", "FleetStatus"]

log = logging.getLogger("duckagents.fleet")


@attrs.frozen
class FleetStatus:
    """One transition of a replica's fleet membership; the integration publishes it as ``fleet_degraded``."""

    instance: str
    #: True while Redis is unreachable or slower than the timeout: local limiters and breakers decide.
    degraded: bool
    #: Why it degraded (the failed operation and its error); None once re-joined.
    reason: str | None
    #: When it changed (Trio clock).
    at: float


class FleetHealth:
    """Joined or degraded, with listeners told of every transition (never of a repeat).

    Any failed or late Redis operation degrades; only a successful probe (run by the fleet while
    degraded) re-joins, so a flapping Redis costs a request at most one timeout per probe interval.
    """

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.status = FleetStatus(instance, degraded=False, reason=None, at=-float("inf"))
        self._listeners: list[Callable[[FleetStatus], None]] = []
        self._degraded_event = trio.Event()
        self._joined_event = trio.Event()
        self._joined_event.set()

    @property
    def degraded(self) -> bool:
        """True while the local fallbacks decide."""
        return self.status.degraded

    def watch(self, listener: Callable[[FleetStatus], None]) -> Callable[[], None]:
        """Call ``listener`` on every transition; returns a function that stops it."""
        self._listeners.append(listener)

        def unwatch() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unwatch

    def degrade(self, reason: str) -> None:
        """Redis failed or was late: the local fallbacks decide until a probe succeeds."""
        if self.status.degraded:
            return
        log.warning("fleet %s: degraded, local limits apply (%s)", self.instance, reason)
        self._joined_event = trio.Event()
        self._change(FleetStatus(self.instance, degraded=True, reason=reason, at=trio.current_time()))
        self._degraded_event.set()

    def rejoin(self) -> None:
        """A probe reached Redis again: shared state decides."""
        if not self.status.degraded:
            return
        log.warning("fleet %s: re-joined", self.instance)
        self._degraded_event = trio.Event()
        self._joined_event.set()
        self._change(FleetStatus(self.instance, degraded=False, reason=None, at=trio.current_time()))

    async def wait_degraded(self) -> None:
        """Return once degraded (at once if already)."""
        await self._degraded_event.wait()

    async def wait_joined(self) -> None:
        """Return once joined (at once if already)."""
        await self._joined_event.wait()

    def _change(self, status: FleetStatus) -> None:
        self.status = status
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:  # a listener's bug must not stop the others or the caller's request
                log.exception("fleet %s: a status listener failed", self.instance)
