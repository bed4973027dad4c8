"""A fleet gateway's source of signals: the fleet's stream in Redis, with this process's bus as fallback.

:class:`FleetReader` reads the stream that every replica appends its signals to (``XREAD`` from the last
position, blocking a moment when there is nothing new) while at least one client is subscribed, and hands
each event to the fan-out with its stream position. So every gateway of the fleet shows every replica's
signals, each with its stream id as CloudEvents ``id`` and its replica as ``instance``.

**Resuming.** A subscription with ``since`` (the last id a client saw) is first replayed from the stream
(:meth:`FleetReader.replay`: pages read after ``since``, pushed at the client's reading pace), then made
live at the position its replay reached; live delivery skips what it already replayed. So a client that
reconnects within the retained window misses nothing and gets nothing twice.

**Redis trouble.** While the fleet is degraded the reader delivers this process's own bus instead (its
replica's signals, with their local ids: not resumable), so clients still see their replica and the
``fleet_degraded`` signal. Once re-joined it goes back to the stream from its end; its own signals that
reach the stream after that switch but were already delivered locally are recognised by their origin id
and not delivered twice.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from ..bus import Overflow, SignalBus, SignalFilter, Subscription
from ..codec import parse_stream_id
from ..errors import BusClosed, FleetUnavailable
from ..signals import Signal
from ._route import Route
from ._wire import FrameCache

__all__ = ["FeedBatch", "FeedEvent", "FleetFeed", "FleetReader"]

log = logging.getLogger("duckagents.gateway")

#: Events read per live read at most, and how long one read waits for something new (seconds).
READ_COUNT = 512
READ_BLOCK = 1.0
#: Events per page of a replay.
REPLAY_PAGE = 256
#: Pause after a live batch, so that a busy stream is read in few large batches (as the bus fan-out's
#: pacing).
PACE = 0.005
#: Ids of this replica's signals delivered from its bus while degraded, remembered (for the switch back).
LOCAL_IDS = 16384
#: Signals the local fallback's bus subscription holds.
LOCAL_BUFFER = 16384


class FeedEvent(Protocol):
    """One signal of the fleet's stream (``duckagents.fleet.FleetEvent``)."""

    @property
    def id(self) -> str:
        """Its stream id (also ``signal.id``)."""
        ...

    @property
    def instance(self) -> str:
        """The replica that appended it."""
        ...

    @property
    def signal(self) -> Signal:
        """The signal, with ``id`` and ``instance`` set from the stream."""
        ...

    @property
    def origin_id(self) -> str:
        """Its id in its replica."""
        ...


class FeedBatch(Protocol):
    """What one read returned (``duckagents.fleet.FleetBatch``)."""

    @property
    def events(self) -> Sequence[FeedEvent]:
        """The events, in stream order."""
        ...

    @property
    def last_id(self) -> str:
        """Where the next read starts."""
        ...


class Delivery(Protocol):
    """What the reader drives (the gateway's :class:`~duckagents.gateway._fanout.Fanout`)."""

    @property
    def cache(self) -> FrameCache:
        """The frame cache the fan-out encodes with."""
        ...

    @property
    def routes(self) -> int:
        """How many routes there are."""
        ...

    def routes_snapshot(self) -> tuple[Route, ...]:
        """The routes now."""
        ...

    def has(self, route: Route) -> bool:
        """Is ``route`` still delivered to?"""
        ...

    async def wait_routes(self) -> None:
        """Return once there is a route."""
        ...

    def deliver(self, signal: Signal, key: tuple[int, int] | None = None) -> None:
        """Push a signal to the live routes (``key``: its stream position)."""
        ...

    def lost(self, count: int) -> None:
        """Tell the subscribed connections ``count`` signals were lost."""
        ...


class FleetFeed(Protocol):
    """What a fleet gateway needs of its replica (``duckagents.fleet.FleetReplica`` is one); the reads
    raise :class:`~duckagents.errors.FleetUnavailable` on Redis trouble."""

    @property
    def instance(self) -> str:
        """This replica's name."""
        ...

    @property
    def degraded(self) -> bool:
        """True while Redis cannot be reached."""
        ...

    async def wait_joined(self) -> None:
        """Return once the fleet is joined."""
        ...

    def watch(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(degraded)`` on every change of the fleet's health; returns an unwatch."""
        ...

    async def read(self, after: str, *, count: int = 256, block: float | None = None) -> FeedBatch:
        """The stream's events after ``after``, waiting up to ``block`` seconds for one."""
        ...

    async def tail(self) -> str:
        """The id of the newest event ("0-0" when empty)."""
        ...

    async def missed(self, after: str) -> bool:
        """May events after ``after`` have been trimmed from the stream?"""
        ...

    def fleet_document(self, local: dict[str, Any]) -> dict[str, Any]:
        """The fleet's status document, from this process's (``local``): the ``status`` op's answer."""
        ...


@attrs.frozen
class Resume:
    """How a resumed subscription starts: what the client is told in the subscription's ``ack``."""

    #: Events after ``since`` may have been trimmed (older than the retained window): some are lost.
    missed: bool
    #: False when the stream cannot be read now (the fleet is degraded): the subscription is live only.
    resumed: bool


class FleetReader:
    """Reads the fleet's stream into a :class:`~duckagents.gateway._fanout.Fanout` (see the module
    docstring)."""

    def __init__(self, fanout: Delivery, feed: FleetFeed, bus: SignalBus) -> None:
        self.fanout = fanout
        self.feed = feed
        self.bus = bus
        #: The stream id of the last event read for live delivery (None while nobody is subscribed).
        self.position: str | None = None
        self._key: tuple[int, int] = (0, 0)
        self._positioned = trio.Event()
        self._local_ids: deque[str] = deque(maxlen=LOCAL_IDS)
        self._local_set: set[str] = set()
        #: Events read from the stream, and signals delivered from the bus while degraded.
        self.read_events = 0
        self.local_signals = 0
        # While degraded: this process's bus. Subscribed by the health listener itself, at the instant the
        # fleet degrades, so not even the fleet_degraded signal published right after is missed.
        self._local: Subscription | None = None
        self._read_scope: trio.CancelScope | None = None

    def attach(self) -> Callable[[], None]:
        """Follow the fleet's health (the fan-out calls it when it starts); returns a detach."""
        return self.feed.watch(self._health_changed)

    def _health_changed(self, degraded: bool) -> None:
        if not degraded:
            return
        if self._local is None and self.fanout.routes:
            try:
                self._local = self._subscribe_locally()
            except BusClosed:
                return
        if self._read_scope is not None:
            self._read_scope.cancel()

    def _subscribe_locally(self) -> Subscription:
        return self.bus.subscribe(SignalFilter(), buffer=LOCAL_BUFFER, overflow=Overflow.DROP_OLDEST)

    # --- live delivery -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and deliver until cancelled."""
        fanout, feed = self.fanout, self.feed
        while True:
            if not fanout.routes:
                self._unposition()  # a later subscriber starts from the end, not from here
                if self._local is not None:
                    self._local.close()
                    self._local = None
                await fanout.wait_routes()
            if feed.degraded or self._local is not None:
                await self._run_local()
                continue
            batch = None
            try:
                with trio.CancelScope() as self._read_scope:  # cancelled when the fleet degrades
                    if self.position is None:
                        self._move(await feed.tail())
                    assert self.position is not None
                    batch = await feed.read(self.position, count=READ_COUNT, block=READ_BLOCK)
            except FleetUnavailable:
                if not feed.degraded:
                    await trio.sleep(READ_BLOCK)  # a failure the fleet does not count: do not spin
                continue
            finally:
                self._read_scope = None
            if batch is None:
                continue
            self._deliver(batch)
            if batch.events:
                await trio.sleep(PACE)

    def _deliver(self, batch: FeedBatch) -> None:
        deliver = self.fanout.deliver
        own, local = self.feed.instance, self._local_set
        for event in batch.events:
            self.read_events += 1
            if local and event.instance == own and event.origin_id in local:
                continue  # already delivered from the bus while degraded
            deliver(event.signal, parse_stream_id(event.id))
        self._move(batch.last_id)

    def _move(self, position: str) -> None:
        self.position = position
        self._key = parse_stream_id(position)
        self._positioned.set()

    def _unposition(self) -> None:
        self.position = None
        if self._positioned.is_set():
            self._positioned = trio.Event()

    async def _run_local(self) -> None:
        """While degraded: this process's bus, until the fleet re-joins and the stream's end is known."""
        self._unposition()
        for route in self.fanout.routes_snapshot():
            route.after, route.live = None, True  # replays cannot go on; the bus has no positions
        instance = self.feed.instance
        subscription = self._local
        if subscription is None:
            try:
                subscription = self._local = self._subscribe_locally()
            except BusClosed:
                await trio.sleep_forever()  # the fan-out sees the bus close and stops the gateway
        try:
            await self._deliver_locally(subscription, instance)
        finally:
            subscription.close()
            self._local = None

    async def _deliver_locally(self, subscription: Subscription, instance: str) -> None:
        with subscription:
            async with trio.open_nursery() as nursery:

                async def until_joined() -> None:
                    while True:
                        await self.feed.wait_joined()
                        try:
                            self._move(await self.feed.tail())
                        except FleetUnavailable:
                            await trio.sleep(READ_BLOCK)
                            continue
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(until_joined)
                seen = subscription.dropped
                async for signal in subscription:
                    self._remember(signal.id)
                    self.local_signals += 1
                    self.fanout.deliver(attrs.evolve(signal, instance=instance))
                    if subscription.dropped != seen:
                        self.fanout.lost(subscription.dropped - seen)
                        seen = subscription.dropped
                nursery.cancel_scope.cancel()  # the bus closed

    def _remember(self, origin_id: str) -> None:
        ids = self._local_ids
        if len(ids) == ids.maxlen:
            self._local_set.discard(ids[0])
        ids.append(origin_id)
        self._local_set.add(origin_id)

    # --- resumed subscriptions ---------------------------------------------------------------------

    async def start_replay(self, since: str) -> Resume:
        """Where a subscription resuming after ``since`` stands: call before :meth:`replay`."""
        try:
            return Resume(missed=await self.feed.missed(since), resumed=True)
        except FleetUnavailable:
            return Resume(missed=True, resumed=False)

    async def replay(self, route: Route, since: str, resume: Resume) -> None:
        """Push what followed ``since`` to ``route`` (at its client's pace), then make it live where the
        replay ended (see the module docstring). ``route`` is already in the fan-out, not live."""
        cache = self.fanout.cache
        cursor = since
        try:
            if not resume.resumed:
                return
            tail = await self.feed.tail()
            if parse_stream_id(cursor) > parse_stream_id(tail):
                cursor = tail  # an id from the future would hold live delivery back until then
            while not route.outbox.closed and self.fanout.has(route):
                batch = await self.feed.read(cursor, count=REPLAY_PAGE)
                for event in batch.events:
                    signal = event.signal
                    if route.filter.matches(signal):
                        try:
                            frame = cache.frame(signal, route.prefix)
                        except Exception:  # the live fan-out counts and logs these; here it is skipped
                            continue
                        await route.outbox.push_replayed(frame)
                cursor = batch.last_id
                if batch.events:
                    continue
                await self._positioned.wait()  # the live reader knows where it is
                if parse_stream_id(cursor) >= self._key:
                    # No await from the comparison on: live delivery takes over exactly after the replay.
                    route.after = parse_stream_id(cursor)
                    return
        except FleetUnavailable:
            route.after = None
        finally:
            route.live = True
