"""The bounded queue that carries a streamed request's chunks from the router's signal loop to its caller.

The loop puts each chunk of the request straight into the queue (it never waits: a caller that falls too
far behind gets its request cancelled), and the caller takes them from there. Unlike a memory channel,
taking a chunk that is already buffered costs no scheduler round trip, so a caller that keeps up pays one
wake-up per burst of chunks rather than one per chunk.
"""

from __future__ import annotations

from collections import deque

import trio

from ..signals import ProviderChunk

__all__ = ["ChunkQueue"]


class ChunkQueue:
    """A bounded queue of chunks from the router's signal loop (one producer) to one caller.

    :meth:`put` never waits and fails like a memory channel's ``send_nowait``: ``trio.WouldBlock`` when
    ``capacity`` chunks are waiting, ``trio.BrokenResourceError`` once the caller :meth:`abandon`\\ed it,
    ``trio.ClosedResourceError`` once :meth:`close`\\d.
    """

    __slots__ = ("_items", "_lot", "abandoned", "capacity", "closed")

    def __init__(self, capacity: int) -> None:
        self._items: deque[ProviderChunk] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self.capacity = max(1, capacity)
        #: No more chunks will come (the request ended).
        self.closed = False
        #: The caller stopped reading.
        self.abandoned = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, chunk: ProviderChunk) -> None:
        """Queue ``chunk`` for the caller and wake it if it waits."""
        if self.abandoned:
            raise trio.BrokenResourceError("the stream consumer went away")
        if self.closed:
            raise trio.ClosedResourceError("the stream ended")
        if len(self._items) >= self.capacity:
            raise trio.WouldBlock
        self._items.append(chunk)
        if self._lot:
            self._lot.unpark_all()

    def close(self) -> None:
        """No more chunks: the caller gets what is queued, then ``trio.EndOfChannel``."""
        self.closed = True
        self._lot.unpark_all()

    def abandon(self) -> None:
        """The caller is done reading: queued chunks are dropped and later puts fail."""
        self.abandoned = True
        self._items.clear()
        self._lot.unpark_all()

    async def get(self) -> ProviderChunk:
        """The next chunk; waits only when none is queued. Raises ``trio.EndOfChannel`` once the queue is
        closed and drained, or abandoned."""
        items = self._items
        while not items:
            if self.closed or self.abandoned:
                raise trio.EndOfChannel
            await self._lot.park()
        return items.popleft()
