"""One accepted WebSocket connection: read and answer client messages, write frames, clean up.

Tasks of a connection: the writer (outbox -> socket), and in a work nursery the reader (socket ->
dispatch), the idle watch, one :class:`~duckagents.gateway._flight.Flight` per request and one task per
operator control or reload in progress (:mod:`._operations`; they count against ``max_in_flight`` with
the requests). Subscriptions are routes of the gateway's :class:`~duckagents.gateway._fanout.Fanout`,
which pushes into this connection's outbox. Whatever ends the connection (client close, bad frame, slow
consumer, flood, idle timeout, gateway shutdown) cancels the work nursery; the writer finishes the batch in
hand, the close frame goes out with its code, and every request still in flight is cancelled at the router.

Containment: one message that trips an unexpected fault gets an ``internal`` error frame (logged once per
kind of fault and minute, never per message) and the connection carries on; a fault of the connection's
own machinery closes it with 1011, never without a close frame.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
import trio_websocket

from ..bus import Overflow, SignalFilter, Subscription
from ..errors import BusClosed, ErrorKind, ProviderError
from ..resilience import RateLimiter, RateLimits
from ..signals import ProviderRequest, new_id
from ._auth import Principal
from ._flight import FLIGHT_TYPES, Flight
from ._operations import answer
from ._outbox import Outbox, SlowConsumer
from ._protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNSUPPORTED_DATA,
    Cancel,
    ClientMessage,
    Control,
    ErrorCode,
    MessageId,
    Ping,
    ProtocolError,
    Reload,
    StatusQuery,
    Submit,
    Subscribe,
    Unsubscribe,
    ack_frame,
    hello_frame,
    parse_client_message,
    signal_prefix,
)
from ._route import Route
from ._shared import Shared
from ._wire import send_batch

log = logging.getLogger("duckagents.gateway")


class Connection:
    """The session of one client. Create it after the handshake was accepted, then ``await run()``."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, shared: Shared, principal: Principal) -> None:
        self.id = f"c{new_id()}"
        self._ws = ws
        self._shared = shared
        self._config = config = shared.config
        self._router = shared.router
        self.principal = principal
        self.outbox = Outbox(
            config.send_buffer,
            SlowConsumer(config.slow_consumer),
            max_bytes=config.send_buffer_bytes,
            on_overflow=self._overflow,
        )
        self._subs: dict[MessageId, Route] = {}
        self._flights: dict[str, Flight] = {}
        #: Operator controls and reloads in progress on this connection.
        self._operations = 0
        rate = max(config.max_messages_per_second, 1e-9)
        self._limiter = RateLimiter(
            RateLimits(requests=config.message_burst, period=config.message_burst / rate)
        )
        self._refused_in_a_row = 0
        # The flood policy on errors: a token bucket of error frames. A client whose messages keep
        # failing faster than this is closed, however slowly it sends them.
        error_rate = max(config.max_errors_per_second, 1e-9)
        self._errors = RateLimiter(
            RateLimits(requests=config.error_burst, period=config.error_burst / error_rate)
        )
        # Set (and replaced) whenever subscriptions or requests in flight change: wakes the idle watch.
        self._activity = trio.Event()
        self._work_scope = trio.CancelScope()
        self._work: trio.Nursery | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._flush_on_close = False

    def limits(self) -> dict[str, Any]:
        """The limits announced in the hello frame."""
        c = self._config
        return {
            "max_frame_bytes": c.max_frame_bytes,
            "max_subscriptions": c.max_subscriptions,
            "max_in_flight": c.max_in_flight,
            "send_buffer": c.send_buffer,
            "slow_consumer": c.slow_consumer,
            "max_messages_per_second": c.max_messages_per_second,
            "message_burst": c.message_burst,
            "max_errors_per_second": c.max_errors_per_second,
            "error_burst": c.error_burst,
            "idle_timeout": c.idle_timeout,
            "send_buffer_bytes": c.send_buffer_bytes,
        }

    async def run(self) -> None:
        """Serve the connection until it ends; always leaves the socket closed and the requests cancelled."""
        reader = self._shared.fanout.reader
        fleet = None if reader is None else reader.feed.instance
        hello = hello_frame(self.id, self.principal.scopes, self.limits(), self._shared.server, fleet)
        writes_complete = True
        try:
            async with trio.open_nursery() as outer:
                writer_done = trio.Event()
                outer.start_soon(self._writer, writer_done)
                with self._work_scope:
                    try:
                        async with trio.open_nursery() as work:
                            self._work = work
                            await self.outbox.push_control(hello)
                            work.start_soon(self._reader)
                            work.start_soon(self._idle_watch)
                    except Exception as exc:  # a fault of this connection's machinery: close it properly
                        self._shared.faults.error(
                            f"connection:{type(exc).__name__}", f"gateway {self.id}: connection failed", exc
                        )
                        self.close(CLOSE_INTERNAL_ERROR, "internal error", flush=True)
                # The work is over (flights cancelled at the router on their way out); let the writer
                # finish the batch in hand, so the close frame does not land in the middle of a frame.
                self.outbox.close(flush=self._flush_on_close)
                with trio.move_on_after(self._shared.close_timeout):
                    await writer_done.wait()
                writes_complete = writer_done.is_set()
                outer.cancel_scope.cancel()
        finally:
            for route in self._subs.values():
                self._shared.fanout.remove(route)
            self.outbox.close()
            await self._close_socket(writes_complete)

    async def _close_socket(self, writes_complete: bool) -> None:
        if self._close_code is None or not writes_complete:
            # Cancelled from outside, or a write was cut mid-frame (a client that stopped reading): no
            # close handshake is possible, so drop the TCP connection (aclose in a cancelled scope does).
            with trio.CancelScope() as abort:
                abort.cancel()
                await self._ws.aclose()
            return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + self._shared.close_timeout):
            await self._ws.aclose(self._close_code, self._close_reason)

    @property
    def in_flight(self) -> int:
        """Requests of this client whose terminal has not been queued for it yet."""
        return sum(1 for flight in self._flights.values() if not flight.done)

    async def flights_landed(self) -> None:
        """Wait until every request in flight on this connection has its terminal queued for the client."""
        while self.in_flight:
            await self._activity.wait()

    def shut_down(self, reason: str) -> None:
        """Close for a gateway shutdown: each request still in flight gets a ``shutdown`` terminal, then
        what is queued goes out, then the close frame 1001."""
        error = ProviderError(ErrorKind.SHUTDOWN, "the gateway shut down before the router answered")
        for flight in self._flights.values():
            flight.abandon(self.outbox, error)
        self.close(CLOSE_GOING_AWAY, reason, flush=True)

    def close(self, code: int | None, reason: str = "", *, flush: bool = False) -> None:
        """End the connection with ``code`` (None: the peer is already gone). The first call decides."""
        if self._close_code is None and code is not None:
            self._close_code, self._close_reason, self._flush_on_close = code, reason, flush
            log.info("gateway %s: closing with %d (%s)", self.id, code, reason)
        self._work_scope.cancel()

    def _overflow(self) -> None:
        self._shared.counters.slow_disconnects += 1
        self.close(CLOSE_SLOW_CONSUMER, f"slow consumer: more than {self._config.send_buffer} frames unsent")

    async def _writer(self, done: trio.Event) -> None:
        try:
            while (batch := await self.outbox.take()) is not None:
                await send_batch(self._ws, batch)
        except trio_websocket.ConnectionClosed:
            self.close(None)
        finally:
            done.set()

    async def _reader(self) -> None:
        while True:
            try:
                message = await self._ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                if exc.reason is not None and exc.reason.code not in (1000, 1001):
                    log.info("gateway %s: connection closed: %s", self.id, exc.reason)
                self.close(None)
                return
            if isinstance(message, bytes):
                self.close(
                    CLOSE_UNSUPPORTED_DATA, "binary frames are not supported: send JSON text", flush=True
                )
                return
            await self._handle(message)

    async def _idle_watch(self) -> None:
        """Close the connection once it has had no subscription and no request for ``idle_timeout``."""
        timeout = self._config.idle_timeout
        while True:
            activity = self._activity
            if self._subs or self._flights or self._operations:
                await activity.wait()
                continue
            with trio.move_on_after(timeout):
                await activity.wait()
            if not activity.is_set() and not self._subs and not self._flights and not self._operations:
                self._shared.counters.idle_disconnects += 1
                self.close(CLOSE_NORMAL, f"idle: no subscription or request for {timeout:g} s", flush=True)
                return

    def _changed(self) -> None:
        self._activity.set()
        self._activity = trio.Event()

    async def _handle(self, text: str) -> None:
        parsed: ClientMessage | ProtocolError
        try:
            parsed = parse_client_message(text, self._shared.limits)
        except ProtocolError as exc:
            parsed = exc
        except Exception as exc:  # a bug met by this message: it fails alone
            parsed = self._internal(exc, "parse")
        msg_id = parsed.msg_id if isinstance(parsed, ProtocolError) else parsed.id
        now = trio.current_time()
        admission = self._limiter.admit(now)
        if not admission.admitted:
            self._refused_in_a_row += 1
            if self._refused_in_a_row > self._config.message_burst:
                self._shared.counters.flood_disconnects += 1
                self.close(
                    CLOSE_POLICY_VIOLATION, "message flood: too many messages over the rate limit", flush=True
                )
                return
            retry_after = round(max(0.0, (admission.retry_at or now) - now), 3)
            limit = self._config.max_messages_per_second
            await self._refuse(
                ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"more than {limit:g} messages per second; message ignored",
                    msg_id,
                    retry_after=retry_after,
                )
            )
            return
        self._refused_in_a_row = 0
        try:
            if isinstance(parsed, ProtocolError):
                raise parsed
            await self._dispatch(parsed)
        except ProtocolError as exc:
            await self._refuse(exc)
        except Exception as exc:  # a bug met by this message: it fails alone
            await self._refuse(self._internal(exc, type(parsed).__name__.lower(), msg_id))

    def _internal(self, exc: Exception, what: str, msg_id: MessageId | None = None) -> ProtocolError:
        self._shared.faults.error(
            f"{what}:{type(exc).__name__}", f"gateway {self.id}: a {what} message failed unexpectedly", exc
        )
        return ProtocolError(ErrorCode.INTERNAL, "internal error while handling this message", msg_id)

    async def _refuse(self, refusal: ProtocolError) -> None:
        """Send the error frame of a refused message, unless this client has been refused too often."""
        if not self._errors.admit(trio.current_time()).admitted:
            self._shared.counters.flood_disconnects += 1
            limit = self._config.max_errors_per_second
            self.close(
                CLOSE_POLICY_VIOLATION, f"message flood: more than {limit:g} errors per second", flush=True
            )
            return
        await self.outbox.push_control(refusal.frame())

    async def _dispatch(self, msg: ClientMessage) -> None:
        match msg:
            case Ping():
                await self._shared.fanout.barrier()  # signals published before the ping come first
                await self.outbox.push_control(ack_frame(msg.id))
            case Subscribe():
                await self._subscribe(msg)
            case Unsubscribe():
                route = self._subs.pop(msg.subscription, None)
                if route is None:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_SUBSCRIPTION, f"no subscription {msg.subscription!r}", msg.id
                    )
                self._shared.fanout.remove(route)
                self._changed()
                await self.outbox.push_control(ack_frame(msg.id, subscription=msg.subscription))
            case Submit():
                await self._submit(msg)
            case StatusQuery():
                self._require("subscribe", msg.id)
                frame = await answer(self._router, msg, self.principal, self._shared.fanout.feed)
                await self.outbox.push_control(frame)
            case Control() | Reload():
                await self._operate(msg)
            case Cancel():
                if msg.request_id not in self._flights:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_REQUEST, "no such request in flight on this connection", msg.id
                    )
                cancelled = self._router.cancel(msg.request_id)
                await self.outbox.push_control(
                    ack_frame(msg.id, request_id=msg.request_id, cancelled=cancelled)
                )

    def _require(self, scope: str, msg_id: MessageId) -> None:
        if scope not in self.principal.scopes:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"this token lacks the {scope!r} scope", msg_id)

    def _subscribe_bus(self, signal_filter: SignalFilter, msg_id: MessageId) -> Subscription:
        try:
            return self._router.bus.subscribe(
                signal_filter, buffer=self._config.send_buffer, overflow=Overflow.DROP_OLDEST
            )
        except BusClosed:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "the router is shutting down", msg_id) from None

    async def _subscribe(self, msg: Subscribe) -> None:
        self._require("subscribe", msg.id)
        if msg.id in self._subs:
            raise ProtocolError(ErrorCode.DUPLICATE_ID, f"subscription {msg.id!r} already exists", msg.id)
        if len(self._subs) >= self._config.max_subscriptions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self._config.max_subscriptions} subscriptions per connection",
                msg.id,
            )
        if self._router.bus.closed:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "the router is shutting down", msg.id)
        if msg.since is not None:
            await self._resume(msg)
            return
        route = Route(msg.filter, signal_prefix(subscription=msg.id), self.outbox)
        self._subs[msg.id] = route
        self._changed()
        # The ack goes first: signals for this subscription are pushed only after it is queued.
        await self.outbox.push_control(ack_frame(msg.id, subscription=msg.id))
        # What the bus already holds for the gateway was published before this subscription.
        await self._shared.fanout.barrier()
        if self._subs.get(msg.id) is route and not self.outbox.closed:
            self._shared.fanout.add(route)

    async def _resume(self, msg: Subscribe) -> None:
        """A subscription that first replays the fleet's stream after ``msg.since`` (see ``_feed``)."""
        assert msg.since is not None
        reader = self._shared.fanout.reader
        if reader is None:
            raise ProtocolError(
                ErrorCode.UNAVAILABLE,
                "this gateway keeps no signal history to resume from (since needs [fleet] mode)",
                msg.id,
            )
        # In the fan-out at once, not live: the live reader keeps its position for the replay to meet.
        route = Route(msg.filter, signal_prefix(subscription=msg.id), self.outbox, live=False)
        self._subs[msg.id] = route
        self._changed()
        self._shared.fanout.add(route)
        resume = await reader.start_replay(msg.since)
        ack = ack_frame(
            msg.id, subscription=msg.id, since=msg.since, missed=resume.missed, resumed=resume.resumed
        )
        await self.outbox.push_control(ack)
        assert self._work is not None
        self._work.start_soon(reader.replay, route, msg.since, resume)

    def _check_in_flight(self, msg_id: MessageId) -> None:
        if len(self._flights) + self._operations >= self._config.max_in_flight:
            raise ProtocolError(
                ErrorCode.TOO_MANY_REQUESTS,
                f"at most {self._config.max_in_flight} requests and controls in flight per connection",
                msg_id,
            )

    async def _operate(self, msg: Control | Reload) -> None:
        """A control or reload runs in a task of its own (a model load takes minutes; the connection goes
        on meanwhile); its ack or error frame comes when it is done."""
        self._require("admin", msg.id)
        self._check_in_flight(msg.id)
        self._operations += 1
        self._changed()
        assert self._work is not None
        self._work.start_soon(self._run_operation, msg)

    async def _run_operation(self, msg: Control | Reload) -> None:
        try:
            try:
                frame = await answer(self._router, msg, self.principal)
            except ProtocolError as exc:
                frame = exc.frame()
            except Exception as exc:  # a bug met by this control: it fails alone
                frame = self._internal(exc, type(msg).__name__.lower(), msg.id).frame()
            await self.outbox.push_control(frame)
        finally:
            self._operations -= 1
            self._changed()

    async def _submit(self, msg: Submit) -> None:
        self._require("request", msg.id)
        if self._shared.intake.closed:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "the gateway is shutting down", msg.id)
        self._check_in_flight(msg.id)
        deadline = None if msg.timeout is None else trio.current_time() + msg.timeout
        request = ProviderRequest(
            request_id=f"gw-{new_id()}",
            messages=msg.messages,
            model=msg.model,
            options=msg.options,
            deadline=deadline,
            required_features=msg.required_features,
            principal=self.principal.token,
        )
        # Not checked again here: the frame's values passed validation.loads and its options the
        # request's own rules (parse_client_message), so a refusal names the field and gets no request
        # id; the router's door then applies check_request once, as to every request.
        # Subscribed before submitting, so not even the first chunk can slip past.
        sub = self._subscribe_bus(
            SignalFilter(types=FLIGHT_TYPES, request_ids=frozenset({request.request_id})), msg.id
        )
        flight = Flight(msg.id, request)
        self._flights[flight.request_id] = flight
        self._changed()
        queued = False
        try:
            await self.outbox.push_control(ack_frame(msg.id, request_id=flight.request_id))
            queued = True
        finally:
            if not queued:
                sub.close()
                del self._flights[flight.request_id]
                self._changed()
        assert self._work is not None
        self._work.start_soon(self._fly, flight, sub)

    async def _fly(self, flight: Flight, sub: Subscription) -> None:
        try:
            await flight.run(self._router, sub, self.outbox, self._shared.cache)
        finally:
            del self._flights[flight.request_id]
            self._changed()
