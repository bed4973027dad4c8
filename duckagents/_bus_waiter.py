"""Waiting for the one terminal signal of a request: :class:`TerminalWaiter`, re-exported by
:mod:`duckagents.bus` and created with ``SignalBus.expect``.

A waiter has no buffer: it keeps only the first terminal signal, so it can never make a publisher wait.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

import trio

from .errors import BusClosed, ErrorKind, ProviderError
from .signals import Signal

if TYPE_CHECKING:  # the bus imports this module: only the type checker may look back
    from .bus import SignalBus

__all__ = ["TerminalWaiter"]


class TerminalWaiter:
    """Waits for the first terminal signal (``provider_response`` / ``provider_error``) of one request.

    Created by :meth:`SignalBus.expect` *before* the request is published. Keeps only the first terminal
    signal and never makes a publisher wait. A context manager that unregisters on exit.
    """

    __slots__ = ("_bus", "_closed", "_done", "_result", "request_id")

    def __init__(self, bus: SignalBus, request_id: str) -> None:
        self._bus = bus
        self.request_id = request_id
        self._result: Signal | None = None
        self._done = trio.Event()
        self._closed = False

    @property
    def result(self) -> Signal | None:
        """The terminal signal, once it arrived."""
        return self._result

    def _offer(self, signal: Signal) -> bool:
        if self._result is not None:
            return False
        self._result = signal
        self._done.set()
        return True

    async def wait(self, deadline: float | None = None) -> Signal:
        """The first terminal signal of the request.

        ``deadline`` is absolute, on the Trio clock. When it passes first, raises
        ``ProviderError(ErrorKind.TIMEOUT)``; raises :class:`BusClosed` when the bus (or this waiter)
        closed before a terminal signal arrived.
        """
        if deadline is None:
            await self._done.wait()
        else:
            with trio.move_on_at(deadline):
                await self._done.wait()
        if self._result is not None:
            return self._result
        if self._closed:
            raise BusClosed(f"stopped waiting for request {self.request_id!r}: the bus closed")
        raise ProviderError(
            ErrorKind.TIMEOUT,
            f"no terminal signal for request {self.request_id!r} before its deadline",
            request_id=self.request_id,
        )

    def close(self) -> None:
        """Stop listening; a task blocked in :meth:`wait` wakes with :class:`BusClosed`. Idempotent."""
        if not self._closed:
            self._closed = True
            self._bus._remove_waiter(self)
            self._done.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TerminalWaiter({self.request_id!r}, done={self._result is not None})"
