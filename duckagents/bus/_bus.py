"""The signal bus: in-process publish/subscribe of :class:`~duckagents.signals.Signal` envelopes.

Every subscription owns a bounded Trio memory channel and an explicit overflow policy:

* :attr:`Overflow.BLOCK` — backpressure: ``publish`` waits until the subscriber makes room;
* :attr:`Overflow.DROP_OLDEST` — ``publish`` never waits on this subscriber; when its buffer is full the
  oldest buffered signal is discarded and counted in :attr:`Subscription.dropped`.

Filters match on the envelope only (``type``, ``provider``, ``subject``), never on the payload. Subscriptions
that name request ids are indexed by request id, so per-request listeners (the router's, one per in-flight
request) cost a dict lookup per publish instead of a scan. :meth:`SignalBus.expect` is the cheapest way to
wait for the one terminal signal of a request. :meth:`SignalBus.publish_nowait` is the synchronous fast
path (no scheduler round trip) for publishers that fall back to ``publish`` when it reports a full
subscriber.

Ordering: each subscriber sees the signals of one publisher in publish order.

This module holds the bus and its two kinds of endpoint, which it owns and which call back into it to leave:
:class:`Subscription` (a bounded stream, with its :class:`Overflow` policy) and :class:`TerminalWaiter`
(the first terminal signal of one request). The filter, plain data, is :mod:`._filter`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import attrs
import trio

from ..errors import BusClosed, ErrorKind, ProviderError
from ..signals import TERMINAL_TYPES, Signal
from ._claims import TerminalClaims
from ._filter import SignalFilter

__all__ = ["BusStats", "Overflow", "SignalBus", "Subscription", "TerminalWaiter"]


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


@attrs.frozen
class BusStats:
    """Counters of a bus. ``delivered`` counts (signal, subscriber) deliveries; ``dropped`` is the total
    over every DROP_OLDEST subscription, past and present."""

    published: int
    delivered: int
    dropped: int
    subscribers: int
    waiters: int


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
        #: Who publishes each attempt's one terminal, its agent or the router on its behalf.
        self.claims = TerminalClaims()

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
            for sub in self._matching(signal):
                try:
                    sub._send.send_nowait(signal)
                    sub._room -= 1
                    delivered += 1
                except trio.WouldBlock:
                    delivered += await self._deliver_full(sub, signal)
                except trio.BrokenResourceError:  # unsubscribed while we iterated a snapshot
                    pass
                except trio.ClosedResourceError:  # the bus closed while we waited on another one
                    raise BusClosed("the signal bus closed while publishing") from None
            subject = signal.subject
            if subject is not None and signal.type in TERMINAL_TYPES:
                delivered += self._offer_waiters(subject, signal)
        finally:
            self._delivered += delivered
        await trio.lowlevel.cancel_shielded_checkpoint()

    def publish_nowait(self, signal: Signal) -> bool:
        """Deliver ``signal`` at once, without a checkpoint, if no subscriber would make it wait.

        True when it was published (to every matching subscription; full DROP_OLDEST ones drop their
        oldest as usual). False when a matching BLOCK subscriber is full: then nothing was delivered and
        the caller should ``await publish(signal)`` instead, which waits for room. Raises
        :class:`BusClosed` when the bus is closed.

        Being synchronous it is neither a cancellation point nor a schedule point: it is meant for hot
        internal paths that checkpoint elsewhere anyway (the async :meth:`publish` keeps Trio's
        conventions).
        """
        if self._closed:
            raise BusClosed("the signal bus is closed")
        general = self._general
        subject = signal.subject
        targeted = self._by_request.get(subject) if subject is not None else None
        # First pass, all or nothing: is any matching BLOCK subscriber full? ``_room`` is tested first, so
        # the usual case (room everywhere) costs one comparison per subscription and no filter match.
        for sub in general:
            if sub._room <= 0 and sub._blocks and (sub._match_all or sub.filter.matches(signal)):
                return False
        if targeted is not None:
            for sub in targeted:
                if sub._room <= 0 and sub._blocks and sub.filter.matches(signal):
                    return False
        # Second pass: deliver. Nothing can yield in between, so every BLOCK send succeeds now.
        self._published += 1
        delivered = 0
        for sub in self._matching(signal):
            delivered += self._send_now(sub, signal)
        if subject is not None and signal.type in TERMINAL_TYPES:
            delivered += self._offer_waiters(subject, signal)
        self._delivered += delivered
        return True

    async def deliver(self, signal: Signal, *, shielded_for: float | None = None) -> bool:
        """Publish ``signal`` now if nobody's buffer is full, else wait for room; never raises
        :class:`BusClosed` (returns False instead).

        The way actors publish on their hot paths: usually it is :meth:`publish_nowait`, so no scheduler
        turn and no checkpoint. When a BLOCK subscriber is full it waits like :meth:`publish`: cancellably,
        or, with ``shielded_for``, shielded from cancellation but for at most that many seconds (for a
        result that must go out whole even while its sender is being stopped, without letting a stalled
        subscriber hold a shutdown forever). Returns False when the bus is closed or the bounded wait ran
        out (then nobody got the signal, or only subscribers earlier in line did).
        """
        try:
            if self.publish_nowait(signal):
                return True
            if shielded_for is None:
                await self.publish(signal)
                return True
            with trio.CancelScope(shield=True, deadline=trio.current_time() + shielded_for) as scope:
                await self.publish(signal)
            return not scope.cancelled_caught
        except BusClosed:
            return False

    def _matching(self, signal: Signal) -> Iterator[Subscription]:
        """The subscriptions ``signal`` goes to: general ones (scanned), then those indexed by its subject.

        Iterates snapshots (tuples replaced on change), so subscribing or leaving meanwhile is safe.
        """
        for sub in self._general:
            if sub._match_all or sub.filter.matches(signal):
                yield sub
        subject = signal.subject
        if subject is not None:
            for sub in self._by_request.get(subject, ()):
                if sub.filter.matches(signal):
                    yield sub

    def _send_now(self, sub: Subscription, signal: Signal) -> int:
        """Deliver to ``sub`` without waiting (the caller checked a BLOCK ``sub`` has room)."""
        try:
            sub._send.send_nowait(signal)
        except trio.WouldBlock:
            if sub._blocks:  # publish_nowait's first pass saw room: the accounting is broken
                raise AssertionError(f"no room in {sub!r} although the bus counted some") from None
            sub._drop_oldest_and_send(signal)
            self._dropped += 1
            return 1
        except trio.BrokenResourceError:  # cannot happen synchronously (close() unsubscribes first)
            return 0
        sub._room -= 1
        return 1

    def _offer_waiters(self, subject: str, signal: Signal) -> int:
        waiters = self._waiters.get(subject)
        delivered = 0
        if waiters is not None:
            for waiter in waiters:
                delivered += waiter._offer(signal)
        return delivered

    async def _deliver_full(self, sub: Subscription, signal: Signal) -> int:
        """The slow path: ``sub``'s buffer is full. Returns 1 when delivered, 0 when not."""
        if sub.overflow is Overflow.DROP_OLDEST:
            sub._drop_oldest_and_send(signal)
            self._dropped += 1
            return 1
        # Counted before the wait: a receive makes room that Trio hands to this blocked send at once, and
        # ``publish_nowait`` must not see it as free. Given back if the signal does not go in.
        sub._room -= 1
        sent = False
        try:
            await sub._send.send(signal)
            sent = True
        except trio.BrokenResourceError:  # the subscriber left while we waited: nobody to deliver to
            return 0
        except trio.ClosedResourceError:
            raise BusClosed("the signal bus closed while publishing") from None
        finally:
            if not sent:
                sub._room += 1
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
