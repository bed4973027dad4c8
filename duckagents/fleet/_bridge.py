"""Every signal of this replica's bus, appended to the fleet's stream: :class:`SignalBridge`.

The bridge reads the bus through one bounded DROP_OLDEST subscription (the bus never waits for it, so no
request does) and appends what it read in batches, one pipelined round trip per batch. Signals the
subscription had to drop (Redis too slow to keep up) and signals read while the fleet is degraded are
counted in :attr:`SignalBridge.dropped`: they stay on this replica (its own gateway's clients see them
through the local fallback), other replicas' clients never see them.
"""

from __future__ import annotations

import logging

import trio

from ..bus import Overflow, SignalBus, SignalFilter
from ..errors import BusClosed, FleetUnavailable
from ..signals import Signal
from ._fleet import Fleet
from ._stream import SignalStream

__all__ = ["BRIDGE_BATCH", "BRIDGE_BUFFER", "BRIDGE_LINGER", "SignalBridge"]

log = logging.getLogger("duckagents.fleet")

#: Signals the bridge's bus subscription holds while a batch is being written (then the oldest go).
BRIDGE_BUFFER = 8192
#: Signals appended in one round trip at most.
BRIDGE_BATCH = 512
#: Seconds the bridge lets signals gather after the first of a batch, so that a request's few signals
#: (and those of requests close together) share one round trip instead of taking one each; watchers see
#: them this much later.
BRIDGE_LINGER = 0.005


class SignalBridge:
    """Appends this replica's bus signals to the fleet's stream (see the module docstring). Start
    :meth:`run` with ``nursery.start``: it returns once subscribed, so no later signal is missed."""

    def __init__(
        self, fleet: Fleet, stream: SignalStream, bus: SignalBus, *, buffer: int = BRIDGE_BUFFER,
        max_batch: int = BRIDGE_BATCH, linger: float = BRIDGE_LINGER,
    ) -> None:
        self.fleet = fleet
        self.stream = stream
        self.bus = bus
        self.buffer = buffer
        self.max_batch = max_batch
        self.linger = linger
        #: Signals appended to the stream.
        self.written = 0
        self._lost = 0
        self._overflowed = 0
        self._idle = trio.Event()

    @property
    def dropped(self) -> int:
        """Signals that did not reach the stream: overflow of the subscription (Redis too slow), read
        while degraded, or in a batch Redis failed to take."""
        return self._lost + self._overflowed

    async def wait_idle(self) -> None:
        """Return once everything read from the bus so far was written (or dropped): tests, shutdown."""
        await self._idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Append batches until cancelled or the bus closes."""
        try:
            subscription = self.bus.subscribe(
                SignalFilter(), buffer=self.buffer, overflow=Overflow.DROP_OLDEST
            )
        except BusClosed:
            task_status.started()
            return
        with subscription:
            task_status.started()
            while True:
                if subscription.pending == 0:
                    self._idle.set()
                try:
                    first = await subscription.receive()
                except BusClosed:
                    break
                if self._idle.is_set():  # an unset one may have waiters: they wait for the next idle
                    self._idle = trio.Event()
                if self.linger > 0 and subscription.pending < self.max_batch:
                    await trio.sleep(self.linger)
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(subscription.receive_nowait())
                    except (trio.WouldBlock, BusClosed):
                        break
                await self._write(batch)
                self._overflowed = subscription.dropped
        self._idle.set()

    async def _write(self, batch: list[Signal]) -> None:
        if self.fleet.health.degraded:
            self._lost += len(batch)
            return
        try:
            ids = await self.stream.publish_many(batch, skip_invalid=True)
        except FleetUnavailable:
            self._lost += len(batch)
            return
        self.written += len(ids)
        self._lost += len(batch) - len(ids)
