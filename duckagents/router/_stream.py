"""The caller's side of a streamed request: :class:`ResponseStream`, fed by a :class:`ChunkQueue`.

The router's signal loop puts each chunk of the request straight into the queue (it never waits: a caller
that falls too far behind gets its request cancelled), and the caller takes them from there. Unlike a
memory channel, taking a chunk that is already buffered costs no scheduler round trip, so a caller that
keeps up pays one wake-up per burst of chunks rather than one per chunk.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Self

import trio

from ..errors import ProviderError
from ..signals import ProviderChunk, ProviderErrorData, ProviderRequest, ProviderResponse
from ._request import Run

if TYPE_CHECKING:
    from ._router import RouterAgent

__all__ = ["ChunkQueue", "ResponseStream"]


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
        #: No more chunks will come (the run ended).
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


class ResponseStream:
    """The chunks of one streamed request; async-iterable and an async context manager.

    ::

        async with router.stream("hello") as stream:
            async for chunk in stream:
                print(chunk.delta, end="")
        print(stream.response.usage)

    Iteration yields :class:`ProviderChunk` items and, when the request failed, raises its
    :class:`ProviderError` at the end (``partial=True`` if chunks were delivered). Afterwards
    :attr:`response` holds the final :class:`ProviderResponse`. Leaving the ``async with`` block early
    cancels the request. Iterating without ``async with`` works too (the request starts on the first
    ``__anext__``), but then an early ``break`` leaves the request running until it ends.
    """

    def __init__(self, router: RouterAgent, request: ProviderRequest) -> None:
        self.request = request
        #: The final response, once iteration ended without error.
        self.response: ProviderResponse | None = None
        #: The error iteration raised, if it did.
        self.error: ProviderError | None = None
        self._router = router
        self._run: Run | None = None
        self._chunks: ChunkQueue | None = None

    @property
    def request_id(self) -> str:
        """The request's id (to cancel it, or to match its signals on the bus)."""
        return self.request.request_id

    def _start(self) -> tuple[Run, ChunkQueue]:
        if self._run is None or self._chunks is None:
            queue = ChunkQueue(self._router.stream_buffer)
            self._run = self._router._open_run(self.request, chunks_out=queue)
            self._chunks = queue
        return self._run, self._chunks

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ProviderChunk:
        run, chunks = self._start()
        try:
            return await chunks.get()
        except trio.EndOfChannel:
            pass
        await run.done.wait()
        final = run.final
        if isinstance(final, ProviderErrorData):
            self.error = final.to_error()
            raise self.error
        self.response = final
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the request if it is still running and wait (briefly) for its final result."""
        run = self._run
        if run is None:
            return
        if not run.done.is_set():
            self._router.cancel(run.request_id)
            with trio.CancelScope(shield=True), trio.move_on_after(self._router.publish_timeout):
                await run.done.wait()
        if self._chunks is not None:
            self._chunks.abandon()
        if self.response is None and isinstance(run.final, ProviderResponse):
            self.response = run.final
