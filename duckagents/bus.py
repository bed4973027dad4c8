"""The signal bus: in-process publish/subscribe of :class:`~duckagents.signals.Signal` envelopes.

Every subscription owns a bounded Trio memory channel and an explicit overflow policy:

* :attr:`Overflow.BLOCK` — backpressure: ``publish`` waits until the subscriber makes room;
* :attr:`Overflow.DROP_OLDEST` — ``publish`` never waits on this subscriber; when its buffer is full the
  oldest buffered signal is discarded and counted in :attr:`Subscription.dropped`.

Filters match on the envelope only (``type``, ``provider``, ``subject``), never on the payload. Subscriptions
that name request ids are indexed by request id, so per-request listeners (the router's, one per in-flight
request) cost a dict lookup per publish instead of a scan. :meth:`SignalBus.expect` is the cheapest way to
wait for the one terminal signal of a request.

Ordering: each subscriber sees the signals of one publisher in publish order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from types import TracebackType
from typing import Self

import attrs
import trio

from .errors import BusClosed, ErrorKind, ProviderError
from .signals import TERMINAL_TYPES, Signal

__all__ = ["BusStats", "Overflow", "SignalBus", "SignalFilter", "Subscription", "TerminalWaiter"]


class Overflow(enum.Enum):
    """What ``publish`` does when a subscriber's buffer is full."""

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


def _names(value: Iterable[str] | None) -> frozenset[str] | None:
    # A lone string is one name, not a set of characters.
    if value is None:
        return None
    return frozenset((value,)) if isinstance(value, str) else frozenset(value)


@attrs.frozen
class SignalFilter:
    """Which signals a subscription wants. ``None`` means any; every given field must match."""

    types: frozenset[str] | None = attrs.field(default=None, converter=_names)
    providers: frozenset[str] | None = attrs.field(default=None, converter=_names)
    request_ids: frozenset[str] | None = attrs.field(default=None, converter=_names)

    def matches(self, signal: Signal) -> bool:
        """True when ``signal``'s envelope satisfies every given field."""
        return (
            (self.types is None or signal.type in self.types)
            and (self.providers is None or signal.provider in self.providers)
            and (self.request_ids is None or signal.subject in self.request_ids)
        )

    @property
    def matches_all(self) -> bool:
        """True when the filter lets every signal through."""
        return self.types is None and self.providers is None and self.request_ids is None


@attrs.frozen
class BusStats:
    """Counters of a bus. ``delivered`` counts (signal, subscriber) deliveries; ``dropped`` is the total
    over every DROP_OLDEST subscription, past and present."""

    published: int
    delivered: int
    dropped: int
    subscribers: int
    waiters: int


class Subscription:
    """A stream of the signals matching :attr:`filter`. Async-iterable; a context manager that unsubscribes.

    Created by :meth:`SignalBus.subscribe`.
    """

    __slots__ = ("_bus", "_closed", "_match_all", "_recv", "_send", "dropped", "filter", "overflow")

    def __init__(self, bus: SignalBus, signal_filter: SignalFilter, buffer: int, overflow: Overflow) -> None:
        self._bus = bus
        self.filter = signal_filter
        self.overflow = overflow
        #: Signals discarded because the buffer was full (DROP_OLDEST only).
        self.dropped = 0
        self._closed = False
        # Looked up on every publish, so precomputed.
        self._match_all = signal_filter.matches_all
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
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise BusClosed("subscription closed") from None

    def receive_nowait(self) -> Signal:
        """The next buffered signal; raises :class:`trio.WouldBlock` when none is buffered and
        :class:`BusClosed` like :meth:`receive`."""
        try:
            return self._recv.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise BusClosed("subscription closed") from None

    def close(self) -> None:
        """Unsubscribe. Tasks blocked in :meth:`receive` wake with :class:`BusClosed`, publishers blocked
        on this subscription's full buffer move on. Idempotent."""
        self._closed = True
        self._bus._remove(self)
        # Closing only the receiving side: publishers still holding this subscription see it as broken
        # (not delivered), which they tell apart from a closed bus.
        self._recv.close()

    def _drop_oldest_and_send(self, signal: Signal) -> None:
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


class SignalBus:
    """In-process publish/subscribe of signals over bounded Trio memory channels."""

    def __init__(self, *, default_buffer: int = 1024) -> None:
        if default_buffer < 1:
            raise ValueError(f"default_buffer must be >= 1, got {default_buffer}")
        self.default_buffer = default_buffer
        # Copy-on-write tuples: publish iterates a snapshot without copying, (un)subscribe swaps the tuple,
        # so a publisher suspended on a full buffer never sees the collection change under it.
        self._general: tuple[Subscription, ...] = ()
        self._by_request: dict[str, tuple[Subscription, ...]] = {}
        self._waiters: dict[str, tuple[TerminalWaiter, ...]] = {}
        self._subscribers = 0
        self._waiter_count = 0
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._dropped = 0

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    async def publish(self, signal: Signal) -> None:
        """Deliver ``signal`` to every matching subscription.

        Waits only while a BLOCK subscriber's buffer is full. Raises :class:`BusClosed` when the bus is
        closed. If cancelled while waiting, subscribers earlier in line may already have the signal.
        """
        # Same checkpoint discipline as a Trio channel's send: cancellation point first, then deliver
        # without yielding, then a schedule point that cannot be cancelled (the signal is out).
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise BusClosed("the signal bus is closed")
        self._published += 1
        delivered = 0
        try:
            for sub in self._general:
                if sub._match_all or sub.filter.matches(signal):
                    try:
                        sub._send.send_nowait(signal)
                        delivered += 1
                    except trio.WouldBlock:
                        delivered += await self._deliver_full(sub, signal)
                    except trio.BrokenResourceError:  # unsubscribed while we iterated a snapshot
                        pass
                    except trio.ClosedResourceError:  # the bus closed while we waited on another one
                        raise BusClosed("the signal bus closed while publishing") from None
            subject = signal.subject
            if subject is not None:
                targeted = self._by_request.get(subject)
                if targeted is not None:
                    for sub in targeted:
                        if sub.filter.matches(signal):
                            try:
                                sub._send.send_nowait(signal)
                                delivered += 1
                            except trio.WouldBlock:
                                delivered += await self._deliver_full(sub, signal)
                            except trio.BrokenResourceError:
                                pass
                            except trio.ClosedResourceError:
                                raise BusClosed("the signal bus closed while publishing") from None
                if signal.type in TERMINAL_TYPES:
                    waiters = self._waiters.get(subject)
                    if waiters is not None:
                        for waiter in waiters:
                            delivered += waiter._offer(signal)
        finally:
            self._delivered += delivered
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _deliver_full(self, sub: Subscription, signal: Signal) -> int:
        """The slow path: ``sub``'s buffer is full. Returns 1 when delivered, 0 when not."""
        if sub.overflow is Overflow.DROP_OLDEST:
            sub._drop_oldest_and_send(signal)
            self._dropped += 1
            return 1
        try:
            await sub._send.send(signal)
        except trio.BrokenResourceError:  # the subscriber left while we waited: nobody to deliver to
            return 0
        except trio.ClosedResourceError:
            raise BusClosed("the signal bus closed while publishing") from None
        return 1

    def subscribe(
        self,
        filter: SignalFilter | None = None,
        *,
        buffer: int | None = None,
        overflow: Overflow = Overflow.BLOCK,
    ) -> Subscription:
        """Subscribe to the signals matching ``filter`` (default: all).

        ``buffer`` bounds the signals held for this subscriber (default: the bus's ``default_buffer``);
        ``overflow`` says what happens when it is full. Use the result as a context manager.
        """
        if self._closed:
            raise BusClosed("the signal bus is closed")
        size = self.default_buffer if buffer is None else buffer
        if size < 0 or (size == 0 and overflow is Overflow.DROP_OLDEST):
            raise ValueError(f"buffer must be >= 1 (>= 0 for BLOCK), got {size}")
        sub = Subscription(self, filter if filter is not None else SignalFilter(), size, overflow)
        request_ids = sub.filter.request_ids
        if request_ids is None:
            self._general = (*self._general, sub)
        else:
            for rid in request_ids:
                self._by_request[rid] = (*self._by_request.get(rid, ()), sub)
        self._subscribers += 1
        return sub

    def expect(self, request_id: str) -> TerminalWaiter:
        """A waiter for the first terminal signal of ``request_id``; create it BEFORE publishing the
        request, so the answer cannot slip past."""
        if self._closed:
            raise BusClosed("the signal bus is closed")
        waiter = TerminalWaiter(self, request_id)
        self._waiters[request_id] = (*self._waiters.get(request_id, ()), waiter)
        self._waiter_count += 1
        return waiter

    def close(self) -> None:
        """Close the bus: publishing raises :class:`BusClosed`; each subscription ends (``BusClosed`` /
        end of iteration) once its buffer is drained; waiters without a result wake with ``BusClosed``.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        subs = list(self._general)
        for targeted in self._by_request.values():
            subs.extend(targeted)
        for sub in subs:
            sub._send.close()
        for waiters in list(self._waiters.values()):
            for waiter in waiters:
                waiter.close()

    def stats(self) -> BusStats:
        """A snapshot of the bus counters."""
        return BusStats(
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            subscribers=self._subscribers,
            waiters=self._waiter_count,
        )

    def _remove(self, sub: Subscription) -> None:
        request_ids = sub.filter.request_ids
        if request_ids is None:
            if sub not in self._general:
                return
            self._general = tuple(s for s in self._general if s is not sub)
        else:
            found = False
            for rid in request_ids:
                targeted = self._by_request.get(rid, ())
                if sub in targeted:
                    found = True
                    rest = tuple(s for s in targeted if s is not sub)
                    if rest:
                        self._by_request[rid] = rest
                    else:
                        del self._by_request[rid]
            if not found:
                return
        self._subscribers -= 1

    def _remove_waiter(self, waiter: TerminalWaiter) -> None:
        waiters = self._waiters.get(waiter.request_id, ())
        if waiter not in waiters:
            return
        rest = tuple(w for w in waiters if w is not waiter)
        if rest:
            self._waiters[waiter.request_id] = rest
        else:
            del self._waiters[waiter.request_id]
        self._waiter_count -= 1

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"SignalBus(subscribers={stats.subscribers}, waiters={stats.waiters}, "
            f"published={stats.published}, closed={self._closed})"
        )
