"""Writes that must not hold up a request: a bounded queue and one task that sends it in batches.

A request's path only ever *offers* a write (:meth:`BatchWriter.offer`, never waits); the writer task
sends what is queued, many at a time, in one Redis round trip (a pipeline). When the queue is full, the
oldest write is dropped and counted: a slow Redis costs some writes, never a request's latency.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

__all__ = ["BatchWriter"]

log = logging.getLogger("duckagents.fleet")

T = TypeVar("T")


class BatchWriter(Generic[T]):
    """A bounded queue of writes and the task (:meth:`run`) that hands them to ``send`` in batches.

    ``send`` gets up to ``max_batch`` items in the order they were offered; it owns their fate (it
    reports what it could not write through :meth:`lost`). ``capacity`` bounds the queue in items; the
    caller bounds each item's size.
    """

    def __init__(
        self, name: str, send: Callable[[list[T]], Awaitable[None]], *, capacity: int, max_batch: int
    ) -> None:
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be >= 1")
        self.name = name
        self._send = send
        self.capacity = capacity
        self.max_batch = max_batch
        self._queue: deque[T] = deque()
        self._ready = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        #: Writes dropped: pushed out of a full queue, or lost with a batch Redis did not take.
        self.dropped = 0
        #: Writes sent (in a batch Redis answered).
        self.written = 0

    @property
    def pending(self) -> int:
        """Writes queued, not yet handed to ``send``."""
        return len(self._queue)

    def offer(self, item: T) -> bool:
        """Queue ``item`` without waiting; False when it pushed the oldest write out (counted)."""
        queue = self._queue
        kept = True
        if len(queue) >= self.capacity:
            queue.popleft()
            self.dropped += 1
            kept = False
        queue.append(item)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._ready.set()
        return kept

    def discard(self) -> int:
        """Drop everything queued (counted); returns how many."""
        count = len(self._queue)
        self._queue.clear()
        self.dropped += count
        return count

    def lost(self, count: int) -> None:
        """``send`` could not write ``count`` of its batch."""
        self.dropped += count

    async def wait_idle(self) -> None:
        """Return once everything offered so far was handed to ``send`` and it returned (tests, shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Send batches until cancelled."""
        queue = self._queue
        while True:
            if not queue:
                self._idle.set()
                self._ready = trio.Event()
                await self._ready.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
            try:
                await self._send(batch)
            except Exception:  # a bug in one batch must not stop the writes (nor the replica)
                log.exception("fleet: the %s writer failed on a batch of %d", self.name, len(batch))
                self.lost(len(batch))
                await trio.sleep(0.1)
