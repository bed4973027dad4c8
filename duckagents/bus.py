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

Module layout: this module routes signals (:class:`SignalBus`); the filter, the subscription endpoint and
the terminal waiter live in private modules and are re-exported here, which is where to import them from.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import trio

from ._bus_filters import SignalFilter
from ._bus_subscription import Overflow, Subscription
from ._bus_waiter import TerminalWaiter
from .errors import BusClosed
from .signals import TERMINAL_TYPES, Signal

__all__ = ["BusStats", "Overflow", "SignalBus", "SignalFilter", "Subscription", "TerminalWaiter"]


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
