"""One client request through the router: subscribe to its signals, submit it, forward its stream.

The connection acks the ``request`` message with the request id, then a :class:`Flight` forwards the
request's chunks (droppable, like any signal) and exactly one terminal signal (never dropped) to the
client. If the router refuses the request outright, or never answers within the request's timeout plus a
grace period, the flight synthesizes the ``provider_error`` terminal itself, so a client can always count
on one. A chunk that cannot be encoded is dropped (counted); a terminal that cannot be encoded is replaced
by an ``internal`` ``provider_error``, so that one still arrives.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import trio

from ..bus import SignalBus, Subscription
from ..codec import dumps_signal
from ..errors import BusClosed, ErrorKind, ProviderError, redact
from ..signals import (
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    Signal,
    make_signal,
)
from ._outbox import Outbox
from ._protocol import MessageId, signal_prefix
from ._wire import FrameCache

log = logging.getLogger("duckagents.gateway")

GATEWAY_SOURCE = "/gateway"
#: Signal types forwarded for a client's own request.
FLIGHT_TYPES = frozenset({ProviderChunk.TYPE, ProviderResponse.TYPE, ProviderErrorData.TYPE})
#: How long past a request's own deadline the gateway waits for the router's terminal signal.
DEADLINE_GRACE = 5.0


class RouterLike(Protocol):
    """What the gateway needs from the router (see docs/architecture.md, agents / router / app)."""

    @property
    def bus(self) -> SignalBus:
        """The signal bus the router publishes on."""
        ...

    async def submit(self, request: ProviderRequest) -> None:
        """Run the request; its chunks and exactly one terminal signal go to the bus."""
        ...

    def cancel(self, request_id: str) -> bool:
        """Cancel an in-flight request; True if it was in flight."""
        ...


def internal_terminal(request_id: str, message: str) -> str:
    """The event JSON of an ``internal`` ``provider_error`` the gateway makes up for ``request_id``."""
    failure = ProviderErrorData.from_error(request_id, ProviderError(ErrorKind.INTERNAL, message))
    return dumps_signal(make_signal(failure, GATEWAY_SOURCE))


def _event_json(cache: FrameCache, signal: Signal) -> str:
    try:
        return cache.event_json(signal)
    except Exception as exc:  # this answer's fault: the client still gets a terminal
        log.error("gateway: the terminal of %s cannot be encoded (%s)", signal.subject, type(exc).__name__)
        return internal_terminal(
            signal.subject or "", f"the answer could not be encoded ({type(exc).__name__})"
        )


async def forward(sub: Subscription, outbox: Outbox, cache: FrameCache, prefix: str) -> str | None:
    """Push the request's chunks from ``sub`` into ``outbox`` and return its terminal event JSON.

    The terminal signal is returned rather than pushed: the caller sends it as a frame that cannot be
    dropped. Returns None when the subscription ends first (the bus closed). Drops in the subscription
    itself are reported to the outbox, and so are chunks that cannot be encoded.
    """
    seen_dropped = 0
    while True:
        try:
            signal = await sub.receive()
        except BusClosed:
            return None
        while True:
            if signal.is_terminal:
                outbox.count_dropped(sub.dropped - seen_dropped)
                return _event_json(cache, signal)
            try:
                outbox.push_signal(cache.frame(signal, prefix))
            except Exception:  # this chunk's fault: dropped and reported as such
                outbox.count_dropped(1)
            try:
                signal = sub.receive_nowait()
            except (trio.WouldBlock, BusClosed):
                break
        if sub.dropped != seen_dropped:
            outbox.count_dropped(sub.dropped - seen_dropped)
            seen_dropped = sub.dropped


class Flight:
    """The state of one request submitted by a client."""

    def __init__(self, msg_id: MessageId, request: ProviderRequest) -> None:
        self.msg_id = msg_id
        self.request = request
        self.request_id = request.request_id
        #: True once the terminal frame was queued for the client.
        self.done = False
        #: True once the router's terminal arrived or it refused the request: nothing left to cancel there.
        self.settled = False
        self.prefix = signal_prefix(request=msg_id)

    async def run(self, router: RouterLike, sub: Subscription, outbox: Outbox, cache: FrameCache) -> None:
        """Submit, forward the stream until the terminal signal, and cancel the request if abandoned.

        ``sub`` must be subscribed to the request's signals before this is called (nothing slips past).
        """
        deadline = self.request.deadline
        give_up = math.inf if deadline is None else deadline + DEADLINE_GRACE
        try:
            with sub:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._submit, router, outbox, nursery.cancel_scope)
                    with trio.move_on_at(give_up):
                        terminal = await forward(sub, outbox, cache, self.prefix)
                        if terminal is not None:
                            self.settled = True
                            await self._finish(outbox, terminal)
                    if not self.done:
                        # The router is gone (bus closed) or missed the deadline: answer for it.
                        router.cancel(self.request_id)
                        self.settled = True
                        kind = ErrorKind.SHUTDOWN if router.bus.closed else ErrorKind.TIMEOUT
                        await self._fail(outbox, ProviderError(kind, "no answer from the router in time"))
                        nursery.cancel_scope.cancel()
        finally:
            if not self.settled:
                # The client left (or the gateway stops): nobody is waiting for this answer any more.
                router.cancel(self.request_id)

    async def _submit(self, router: RouterLike, outbox: Outbox, scope: trio.CancelScope) -> None:
        try:
            await router.submit(self.request)
            return
        except ProviderError as exc:
            error = exc
        except BusClosed:
            error = ProviderError(ErrorKind.SHUTDOWN, "the router is shutting down")
        except Exception as exc:  # a router bug must fail this request, not the connection
            log.exception("router.submit failed for %s", self.request_id)
            error = ProviderError(
                ErrorKind.INTERNAL,
                redact(f"the router failed to take the request: {type(exc).__name__}"),
            )
        self.settled = True
        if not self.done:
            await self._fail(outbox, error)
            scope.cancel()

    async def _fail(self, outbox: Outbox, error: ProviderError) -> None:
        await self._finish(outbox, self._failure_json(error))

    def abandon(self, outbox: Outbox, error: ProviderError) -> None:
        """The connection closes before the router answered: the client gets ``error`` as the request's
        terminal now (queued before the close frame); the request is cancelled at the router on the way
        out of :meth:`run`."""
        if not self.done:
            self.done = True
            outbox.push_control_now(self.prefix + self._failure_json(error) + "}")

    def _failure_json(self, error: ProviderError) -> str:
        failure = ProviderErrorData.from_error(self.request_id, error)
        return dumps_signal(make_signal(failure, GATEWAY_SOURCE))

    async def _finish(self, outbox: Outbox, event_json: str) -> None:
        if self.done:
            return
        self.done = True
        await outbox.push_control(self.prefix + event_json + "}")
