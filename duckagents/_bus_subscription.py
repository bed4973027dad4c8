"""The receiving end of a bus subscription: :class:`Subscription` and its :class:`Overflow` policy.

Both are re-exported by :mod:`duckagents.bus`; create subscriptions with ``SignalBus.subscribe``. A
subscription owns one bounded Trio memory channel: the bus sends into it, the subscriber receives from it.
"""

from __future__ import annotations

import enum
from types import TracebackType
from typing import TYPE_CHECKING, Self

import trio

from ._bus_filters import SignalFilter
from .errors import BusClosed
from .signals import Signal

if TYPE_CHECKING:  # the bus imports this module: only the type checker may look back
    from .bus import SignalBus

__all__ = ["Overflow", "Subscription"]


class Overflow(enum.Enum):
    """What ``publish`` does when a subscriber's buffer is full."""

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


class Subscription:
    """A stream of the signals matching :attr:`filter`. Async-iterable; a context manager that unsubscribes.

    Created by :meth:`SignalBus.subscribe`.
    """

    # ``SignalBus.publish`` reads ``_match_all``, ``filter`` and ``_send`` directly on its hot path: slots
    # keep those lookups cheap, and a method call per delivery would cost more than the delivery.
    __slots__ = (
        "_blocks", "_bus", "_closed", "_match_all", "_recv", "_room", "_send",
        "dropped", "filter", "overflow",
    )

    def __init__(self, bus: SignalBus, signal_filter: SignalFilter, buffer: int, overflow: Overflow) -> None:
        self._bus = bus
        self.filter = signal_filter
        self.overflow = overflow
        #: Signals discarded because the buffer was full (DROP_OLDEST only).
        self.dropped = 0
        self._closed = False
        # Looked up on every publish, so precomputed.
        self._match_all = signal_filter.matches_all
        self._blocks = overflow is Overflow.BLOCK
        # Free places as the bus sees them: the buffer size minus the signals sent (or being sent by a
        # blocked publisher) and not yet received. Never more than the channel really has, so when it is
        # positive a send cannot block: ``SignalBus.publish_nowait`` relies on that instead of asking the
        # channel (whose statistics cost an object per call). A zero-buffer subscription never has room.
        self._room = buffer
        self._send, self._recv = trio.open_memory_channel[Signal](buffer)

    @property
    def pending(self) -> int:
        """How many signals are buffered, waiting to be received."""
        return self._recv.statistics().current_buffer_used

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the bus closed."""
        return self._closed or self._bus.closed

    async def receive(self) -> Signal:
        """The next signal; raises :class:`BusClosed` when unsubscribed, or when the bus closed and the
        buffer is drained."""
        try:
            signal = await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise BusClosed("subscription closed") from None
        self._room += 1
        return signal

    def receive_nowait(self) -> Signal:
        """The next buffered signal; raises :class:`trio.WouldBlock` when none is buffered and
        :class:`BusClosed` like :meth:`receive`."""
        try:
            signal = self._recv.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise BusClosed("subscription closed") from None
        self._room += 1
        return signal

    def close(self) -> None:
        """Unsubscribe. Tasks blocked in :meth:`receive` wake with :class:`BusClosed`, publishers blocked
        on this subscription's full buffer move on. Idempotent."""
        self._closed = True
        self._bus._remove(self)
        # Closing only the receiving side: publishers still holding this subscription see it as broken
        # (not delivered), which they tell apart from a closed bus.
        self._recv.close()

    def _drop_oldest_and_send(self, signal: Signal) -> None:
        # One out, one in: ``_room`` is unchanged.
        try:
            self._recv.receive_nowait()
        except trio.WouldBlock:  # buffer size 0 is refused for DROP_OLDEST, so this cannot happen
            pass
        self.dropped += 1
        self._send.send_nowait(signal)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Signal:
        try:
            return await self.receive()
        except BusClosed:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        return f"Subscription({self.filter!r}, overflow={self.overflow.value}, dropped={self.dropped})"
