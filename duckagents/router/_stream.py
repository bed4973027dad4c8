"""The caller's side of a streamed request: :class:`ResponseStream`.

The router opens the request when the caller starts (``async with`` or the first ``__anext__``); its
chunks come through the request's :class:`~._chunk_queue.ChunkQueue`, then its final result.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

import trio

from ..errors import ProviderError
from ..signals import ProviderChunk, ProviderErrorData, ProviderRequest, ProviderResponse
from ._chunk_queue import ChunkQueue
from ._request import RoutedRequest

__all__ = ["ResponseStream"]


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

    def __init__(
        self,
        request: ProviderRequest,
        opener: Callable[[ProviderRequest, ChunkQueue], RoutedRequest],
        *,
        buffer: int,
        close_timeout: float,
    ) -> None:
        """Made by ``router.stream()``: ``opener`` accepts the request with its chunk queue (``buffer``
        chunks); :meth:`aclose` waits at most ``close_timeout`` seconds for the final result."""
        self.request = request
        #: The final response, once iteration ended without error.
        self.response: ProviderResponse | None = None
        #: The error iteration raised, if it did.
        self.error: ProviderError | None = None
        self._opener = opener
        self._buffer = buffer
        self._close_timeout = close_timeout
        self._routed: RoutedRequest | None = None
        self._chunks: ChunkQueue | None = None

    @property
    def request_id(self) -> str:
        """The request's id (to cancel it, or to match its signals on the bus)."""
        return self.request.request_id

    def _start(self) -> tuple[RoutedRequest, ChunkQueue]:
        if self._routed is None or self._chunks is None:
            queue = ChunkQueue(self._buffer)
            self._routed = self._opener(self.request, queue)
            self._chunks = queue
        return self._routed, self._chunks

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
        routed, chunks = self._start()
        try:
            return await chunks.get()
        except trio.EndOfChannel:
            pass
        await routed.done.wait()
        final = routed.final
        if isinstance(final, ProviderErrorData):
            self.error = final.to_error()
            raise self.error
        self.response = final
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the request if it is still running and wait (briefly) for its final result."""
        routed = self._routed
        if routed is None:
            return
        if not routed.done.is_set():
            routed.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
                await routed.done.wait()
        if self._chunks is not None:
            self._chunks.abandon()
        if self.response is None and isinstance(routed.final, ProviderResponse):
            self.response = routed.final
