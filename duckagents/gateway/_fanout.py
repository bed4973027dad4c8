"""Fan-out of bus signals to every client subscription, in one task, paced.

One DROP_OLDEST bus subscription feeds the whole gateway; the fan-out task matches each signal against
every client subscription (a :class:`Route`) and pushes the shared frame into that connection's
:class:`~duckagents.gateway._outbox.Outbox`, which never waits. So the bus never waits for the gateway, and
a slow client only ever fills its own outbox.

Pacing: after each drain the task lets the connections write, then pauses :data:`PACE` seconds before
draining again. A burst is thus written in a few large socket writes per connection instead of one per
signal per connection (with hundreds of clients, per-signal writes would cost more than everything
else), at the price of at most :data:`PACE` of extra latency; the first signal after a quiet spell goes
out at once.

A signal that cannot be encoded (a non-finite number, data nested past the interpreter's limit, a
non-JSON value a Python publisher put in it) fails alone: it is dropped for every client, counted in
:attr:`Fanout.unencodable` and logged (rate-limited); the fan-out task carries on with the next one.

**Fleet gateways** (given a :class:`~duckagents.gateway._feed.FleetFeed`) deliver the fleet's signal
stream instead of this process's bus: :class:`~duckagents.gateway._feed.FleetReader` reads it and calls
:meth:`Fanout.deliver` with each event's stream position; routes of resumed subscriptions skip what they
already replayed (:attr:`Route.after`). The bus is then only watched for its closing (and, while the
fleet is degraded, read as the local fallback).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
import trio.lowlevel

from ..bus import Overflow, SignalBus, SignalFilter, Subscription
from ..errors import BusClosed
from ..signals import Signal
from ._feed import FleetFeed, FleetReader
from ._log import ThrottledLog
from ._route import Route
from ._wire import Frame, FrameCache

log = logging.getLogger("duckagents.gateway")

#: Seconds the fan-out pauses after a drain (see the module docstring).
PACE = 0.005
#: Upper bound of the pause under heavy load (the most a burst's later signals can be held back).
MAX_PACE = 0.05
#: Signals the gateway's own bus subscription holds while the fan-out task is busy.
BUFFER = 16384
# Signals fanned out per drain before yielding, so a flood cannot monopolise the event loop.
DRAIN_LIMIT = 4096


class Fanout:
    """Delivers every bus signal to the matching routes. Run :meth:`run` in a nursery."""

    def __init__(
        self,
        bus: SignalBus,
        cache: FrameCache,
        *,
        on_bus_closed: Callable[[], None],
        feed: FleetFeed | None = None,
    ) -> None:
        self._bus = bus
        self._cache = cache
        #: The frame cache the fan-out encodes with (replays share it).
        self.cache = cache
        #: The fleet's stream (fleet gateways), read by :attr:`reader`; None: this process's bus.
        self.feed = feed
        self.reader = None if feed is None else FleetReader(self, feed, bus)
        self._routes_changed = trio.Event()
        self._on_bus_closed = on_bus_closed
        # Copy-on-write, like the bus: a drain iterates a snapshot while routes come and go.
        self._routes: tuple[Route, ...] = ()
        self._sub: Subscription | None = None
        self._seen_dropped = 0
        self._faults = ThrottledLog(log)
        #: Signals dropped because they could not be encoded.
        self.unencodable = 0
        # True while the fan-out task awaits the bus with an empty buffer. A signal handed to it then
        # reaches it one scheduler turn later, and signals published meanwhile are newer: see barrier().
        self._receiving = False
        self._step_done = trio.lowlevel.ParkingLot()

    def add(self, route: Route) -> None:
        """Start delivering to ``route`` (from the next drain on)."""
        self._routes = (*self._routes, route)
        self._changed()

    def remove(self, route: Route) -> None:
        """Stop delivering to ``route``; nothing more is pushed for it after this returns."""
        self._routes = tuple(r for r in self._routes if r is not route)
        self._changed()

    def _changed(self) -> None:
        self._routes_changed.set()
        self._routes_changed = trio.Event()

    async def wait_routes(self) -> None:
        """Return once there is at least one route (at once if there is)."""
        while not self._routes:
            await self._routes_changed.wait()

    @property
    def routes(self) -> int:
        """How many client subscriptions are active."""
        return len(self._routes)

    def routes_snapshot(self) -> tuple[Route, ...]:
        """The routes now."""
        return self._routes

    def has(self, route: Route) -> bool:
        """Is ``route`` still delivered to?"""
        return any(r is route for r in self._routes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fan out until cancelled or the bus closes (then ``on_bus_closed`` is called)."""
        if self.reader is not None:
            await self._run_fleet(self.reader, task_status)
            return
        try:
            self._sub = self._bus.subscribe(SignalFilter(), buffer=BUFFER, overflow=Overflow.DROP_OLDEST)
        except BusClosed:
            task_status.started()
            self._on_bus_closed()
            return
        with self._sub:
            task_status.started()
            try:
                await self._pump(self._sub)
            finally:  # a barrier waiting for a step that will not come
                self._receiving = False
                self._step_done.unpark_all()
        self._on_bus_closed()

    async def _run_fleet(self, reader: FleetReader, task_status: trio.TaskStatus[None]) -> None:
        try:
            # Matches nothing: it only ends when the bus closes (the router shut down).
            closing = self._bus.subscribe(SignalFilter(types=frozenset()), buffer=1)
        except BusClosed:
            task_status.started()
            self._on_bus_closed()
            return
        detach = reader.attach()
        try:
            with closing:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader.run)
                    task_status.started()
                    try:
                        await closing.receive()
                    except BusClosed:
                        pass
                    nursery.cancel_scope.cancel()
        finally:
            detach()
        self._on_bus_closed()

    async def _pump(self, sub: Subscription) -> None:
        """Deliver and drain, then pause, until the bus closes."""
        while True:
            # Never hold a signal across a schedule point while others wait in the buffer (a barrier
            # would fan them out first): take from the buffer synchronously, and await only an empty
            # one, flagged so that barrier() waits for the signal handed over.
            try:
                signal = sub.receive_nowait()
            except trio.WouldBlock:
                self._receiving = True
                try:
                    signal = await sub.receive()
                except BusClosed:
                    break
                finally:
                    self._receiving = False
            except BusClosed:
                break
            started = trio.current_time()
            self._deliver(signal)
            self.flush(DRAIN_LIMIT)
            self._step_done.unpark_all()
            # Two schedule points: the writers woken by this drain run (and finish their round)
            # before the pause starts. The pause then lasts at least as long as that work did, so
            # under load the publishers get at least half of the time and batches grow.
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
            busy = trio.current_time() - started
            await trio.sleep(min(max(PACE, busy), MAX_PACE))

    async def barrier(self) -> None:
        """Fan out every signal published so far, in order, before returning.

        A ``ping`` awaits it before its ack (which makes the ping a barrier), a new subscription before it
        joins (so that it gets nothing published before it). While the fan-out task is being handed a
        signal, what the buffer holds is newer: fanning that out here would overtake it, so this waits
        for the task's step (which delivers the signal, then drains the buffer) first.
        """
        sub = self._sub
        while self._receiving and sub is not None and sub.pending:
            await self._step_done.park()
        self.flush()

    def flush(self, limit: int = BUFFER) -> None:
        """Fan out (up to ``limit`` of) what the bus has buffered for the gateway, now (the fan-out task's
        drain; other tasks call :meth:`barrier`). A fleet gateway delivers the fleet's stream as it reads
        it: nothing to flush."""
        sub = self._sub
        if sub is None:
            return
        for _ in range(limit):
            try:
                signal = sub.receive_nowait()
            except (trio.WouldBlock, BusClosed):
                break
            self._deliver(signal)
        if sub.dropped != self._seen_dropped:
            self.lost(sub.dropped - self._seen_dropped)
            self._seen_dropped = sub.dropped

    def _deliver(self, signal: Signal) -> None:
        self.deliver(signal)

    def deliver(self, signal: Signal, key: tuple[int, int] | None = None) -> None:
        """Push ``signal`` to every live route whose filter matches; ``key`` is its stream position (fleet
        gateways), which routes that replayed past it skip."""
        # Clients mostly share subscription ids (and so frame prefixes): look each frame up once.
        frames: dict[str, Frame] = {}
        for route in self._routes:
            if not route.live:
                continue
            if key is not None and route.after is not None:
                if key <= route.after:
                    continue
                route.after = None  # live delivery is past the replay: nothing more to skip
            if route.filter.matches(signal):
                frame = frames.get(route.prefix)
                if frame is None:
                    try:
                        frame = frames[route.prefix] = self._cache.frame(signal, route.prefix)
                    except Exception as exc:  # this signal's fault; the next signal is fine
                        self.unencodable += 1
                        self._faults.error(
                            f"encode:{type(exc).__name__}",
                            f"gateway: dropped a {signal.type} signal that cannot be encoded "
                            f"({type(exc).__name__}: {str(exc)[:200]})",
                        )
                        return
                route.outbox.push_signal(frame)

    def lost(self, count: int) -> None:
        """``count`` signals the gateway fell behind on (every subscribed connection is told)."""
        # The gateway fell behind the bus: which clients those signals were for is unknown, so every
        # subscribed connection is told (an over-count, never a silent gap).
        log.warning("gateway fan-out fell behind the bus: %d signals lost", count)
        for outbox in {id(r.outbox): r.outbox for r in self._routes}.values():
            outbox.count_dropped(count)
