"""The WebSocket gateway server: handshake checks, connection limit, graceful shutdown.

``open_gateway(router, config)`` runs the gateway for the duration of an ``async with`` block and closes
every connection with 1001 on the way out; ``serve_gateway`` is the same for ``nursery.start`` (cancel it
for an abrupt stop, or call :meth:`Gateway.aclose` for a graceful one).

The graceful stop, in order (``duckagents serve`` on SIGTERM / SIGINT runs the tree's drain in between):
:meth:`Gateway.close_intake` refuses new clients and requests; :meth:`Gateway.aclose` lets the requests
in flight hand their terminals to their clients (bounded), gives each request still waiting a
``shutdown`` terminal, sends each client what is queued for it and then the close frame 1001, and waits
(bounded) for the clients' close frames before it stops listening. A client never sees a connection end
without a close frame (1006) unless it stopped reading.

The listener reads each connection's request head itself (:mod:`._pages`): WebSocket upgrades go on to
trio-websocket, plain HTTP requests get the static ``pages`` the gateway was given (the dashboard).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType

import attrs
import trio
import trio_websocket

from ..config import GatewayConfig
from ..errors import ConfigError
from ..validation import DEFAULT_LIMITS, ValidationLimits
from ._auth import Gatekeeper, is_loopback_host
from ._connection import Connection
from ._fanout import Fanout
from ._feed import FleetFeed
from ._flight import RouterLike
from ._log import ThrottledLog
from ._pages import BadRequest, Page, ReplayStream, answer_plain, read_opening
from ._shared import Counters, Shared
from ._wire import FrameCache

log = logging.getLogger("duckagents.gateway")

#: Seconds a client has to finish the opening handshake, and to answer our close frame.
HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
#: Seconds the clients get to answer our close frames when the gateway is stopped at once.
FORCED_CLOSE_TIMEOUT = 0.5
# Client messages buffered by trio-websocket before its reader stops reading the socket (backpressure).
INCOMING_QUEUE = 8


@attrs.frozen
class GatewayStats:
    """A snapshot of gateway counters. ``rejected`` counts refused handshakes by HTTP status;
    ``unencodable`` signals were dropped because they could not be encoded; ``faults`` counts unexpected
    exceptions met while handling client messages (each failed alone)."""

    connections: int
    subscriptions: int
    accepted: int
    dropped: int
    slow_disconnects: int
    rejected: dict[int, int]
    idle_disconnects: int = 0
    flood_disconnects: int = 0
    unencodable: int = 0
    faults: int = 0
    cache_bytes: int = 0


class Gateway:
    """A gateway bound to ``host``:``port``; built and started by :func:`serve_gateway`/:func:`open_gateway`.

    Refuses to start without tokens on a non-loopback address (an open gateway lets anyone who can reach
    it spend the configured providers' quota). ``limits`` bound the values of client messages (the
    ``[validation]`` table: see :mod:`duckagents.validation`). ``pages`` maps paths (``"/"``...) to the
    static :class:`Page` answered to plain HTTP ``GET`` requests on the same port (the dashboard's files).
    With ``fleet`` (this process's fleet replica), subscriptions get the whole fleet's signals from its
    stream and may resume (``since``).
    """

    def __init__(
        self,
        router: RouterLike,
        config: GatewayConfig,
        *,
        environ: Mapping[str, str] | None = None,
        close_timeout: float = CLOSE_TIMEOUT,
        limits: ValidationLimits = DEFAULT_LIMITS,
        pages: Mapping[str, Page] | None = None,
        fleet: FleetFeed | None = None,
    ) -> None:
        self.config = config
        self._pages = MappingProxyType(dict(pages or {}))
        self._gatekeeper = Gatekeeper(config, environ)
        if self._gatekeeper.open and not is_loopback_host(config.host):
            raise ConfigError(
                f"gateway: refusing to serve {config.host!r} without tokens; bind 127.0.0.1 or configure "
                "[[gateway.tokens]]"
            )
        self._counters = Counters()
        cache = FrameCache(max_bytes=config.frame_cache_bytes)
        self._fanout = Fanout(router.bus, cache, on_bus_closed=self._bus_closed, feed=fleet)
        self._shared = Shared(
            router=router,
            config=config,
            cache=cache,
            fanout=self._fanout,
            counters=self._counters,
            server=f"duckagents/{_version()}",
            close_timeout=close_timeout,
            limits=limits,
            faults=ThrottledLog(log),
        )
        self._close_timeout = close_timeout
        self._live: set[Connection] = set()
        self._changed = trio.Event()
        self._accepting = True
        self._closing = False
        self._scope = trio.CancelScope()
        #: The bound port (useful with ``port = 0``), set once the gateway listens.
        self.port = 0

    @property
    def host(self) -> str:
        """The bind address."""
        return self.config.host

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the running gateway."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/"

    @property
    def http_url(self) -> str:
        """``http://host:port/``: the same address for plain HTTP (where the pages are served)."""
        return "http" + self.url[2:]

    def stats(self) -> GatewayStats:
        """Counters now (``dropped`` includes live connections)."""
        c = self._counters
        live_dropped = sum(conn.outbox.dropped_total for conn in self._live)
        return GatewayStats(
            c.connections,
            self._fanout.routes,
            c.accepted,
            c.dropped + live_dropped,
            c.slow_disconnects,
            dict(c.rejected),
            idle_disconnects=c.idle_disconnects,
            flood_disconnects=c.flood_disconnects,
            unencodable=self._fanout.unencodable,
            faults=self._shared.faults.total,
            cache_bytes=self._shared.cache.bytes,
        )

    async def run(self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until :meth:`aclose` (or cancellation)."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._fanout.run)
                listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
                self.port = listeners[0].socket.getsockname()[1]
                await nursery.start(trio.serve_listeners, self._serve_stream, listeners)
                log.info(
                    "gateway listening on %s (%s)", self.url, "open" if self._gatekeeper.open else "tokens"
                )
                task_status.started(self)

    def close_intake(self) -> None:
        """The first step of a graceful stop: refuse new clients (503) and new ``request`` messages (error
        ``unavailable``); subscriptions and the requests in flight go on."""
        self._accepting = False
        self._shared.intake.closed = True

    async def aclose(self, grace: float | None = None, *, at_once: bool = False) -> None:
        """Graceful stop (see the module docstring): close intake; give the requests in flight up to
        ``grace`` seconds (default ``close_timeout``) to hand their terminals to their clients; then each
        request still waiting gets a ``shutdown`` terminal, and each connection closes with 1001 after what
        is queued for it; then stop listening.

        ``at_once`` (a second signal), or cancelled: no wait for terminals, but every connection still
        closes properly, waiting at most :data:`FORCED_CLOSE_TIMEOUT` for the clients' close frames.
        Calling it again only stops listening."""
        if self._closing:
            self._scope.cancel()
            return
        self._closing = True
        self.close_intake()
        forced = at_once
        try:
            with trio.move_on_after(0 if at_once else self._close_timeout if grace is None else grace):
                for conn in list(self._live):
                    await conn.flights_landed()
        except trio.Cancelled:
            forced = True
            raise
        finally:
            with trio.CancelScope(shield=True):
                for conn in list(self._live):
                    conn.shut_down("gateway shutting down")
                with trio.move_on_after(FORCED_CLOSE_TIMEOUT if forced else self._close_timeout):
                    while self._live:
                        await self._changed.wait()
                self._scope.cancel()

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        """One TCP connection: a WebSocket upgrade is served as a gateway connection, anything else is a
        plain HTTP request (:mod:`._pages`). Nothing a client sends here can end the gateway."""
        try:
            opening, error = None, None
            with trio.move_on_after(HANDSHAKE_TIMEOUT) as waited:
                try:
                    opening = await read_opening(stream)
                except BadRequest as exc:
                    error = exc
            if waited.cancelled_caught or (opening is None and error is None):
                await trio.aclose_forcefully(stream)
                return
            if opening is None or not opening.websocket:
                with trio.move_on_after(self._close_timeout):
                    await answer_plain(stream, opening, self._pages, error)
                return
            await self._serve_websocket(ReplayStream(stream, opening.data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception as exc:  # one connection's bug must not take the gateway (and every client) down
            what = f"accept:{type(exc).__name__}"
            self._shared.faults.error(what, "gateway: serving a connection failed", exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_websocket(self, stream: ReplayStream) -> None:
        async with trio.open_nursery() as nursery:  # holds trio-websocket's reader task
            request = None
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                request = await trio_websocket.wrap_server_stream(
                    nursery,
                    stream,
                    message_queue_size=INCOMING_QUEUE,
                    max_message_size=self.config.max_frame_bytes,
                )
            try:
                if request is not None:
                    await self._handshake(request)
            finally:
                nursery.cancel_scope.cancel()

    def _bus_closed(self) -> None:
        self._accepting = False
        for conn in list(self._live):
            conn.close(1001, "the router shut down", flush=True)

    async def _handshake(self, request: trio_websocket.WebSocketRequest) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        verdict = self._gatekeeper.check(headers, request.path)
        status = verdict.status
        if not status and not self._accepting:
            status, verdict = 503, attrs.evolve(verdict, reason="shutting down")
        if not status and self._counters.connections >= self.config.max_connections:
            status, verdict = 503, attrs.evolve(verdict, reason="connection limit reached")
        if status:
            await self._reject(request, status, verdict.reason)
            return
        assert verdict.principal is not None
        self._counters.connections += 1
        conn: Connection | None = None
        try:
            ws = await request.accept()
            conn = Connection(ws, self._shared, verdict.principal)
            self._counters.accepted += 1
            self._live.add(conn)
            log.info("gateway %s: %s connected from %s", conn.id, verdict.principal.name, _remote(request))
            await conn.run()
        except trio_websocket.ConnectionClosed:
            pass  # the client left during the handshake
        except Exception as exc:  # one connection's bug must not take the gateway (and every client) down
            where = conn.id if conn else "?"
            self._shared.faults.error(f"handshake:{type(exc).__name__}", f"gateway {where} crashed", exc)
        finally:
            self._counters.connections -= 1
            if conn is not None:
                self._live.discard(conn)
                self._counters.dropped += conn.outbox.dropped_total
            self._changed.set()
            self._changed = trio.Event()

    async def _reject(self, request: trio_websocket.WebSocketRequest, status: int, reason: str) -> None:
        self._counters.rejected[status] = self._counters.rejected.get(status, 0) + 1
        # The path is logged without its query: it may carry ?token=.
        log.info(
            "gateway: refused %s %s with %d: %s", _remote(request), request.path.split("?")[0], status, reason
        )
        extra = [(b"WWW-Authenticate", b'Bearer realm="duckagents"')] if status == 401 else []
        try:
            await request.reject(status, extra_headers=extra)
        except trio_websocket.ConnectionClosed:
            pass


def _version() -> str:
    try:
        return importlib.metadata.version("duckagents")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _remote(request: trio_websocket.WebSocketRequest) -> str:
    remote = request.remote
    return f"{remote.address}:{remote.port}" if isinstance(remote, trio_websocket.Endpoint) else str(remote)


async def serve_gateway(
    router: RouterLike,
    config: GatewayConfig,
    *,
    environ: Mapping[str, str] | None = None,
    close_timeout: float = CLOSE_TIMEOUT,
    limits: ValidationLimits = DEFAULT_LIMITS,
    pages: Mapping[str, Page] | None = None,
    fleet: FleetFeed | None = None,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the gateway until cancelled; ``nursery.start`` returns the :class:`Gateway` (bound port)."""
    gateway = Gateway(
        router, config, environ=environ, close_timeout=close_timeout, limits=limits, pages=pages,
        fleet=fleet,
    )
    await gateway.run(task_status=task_status)


@asynccontextmanager
async def open_gateway(
    router: RouterLike,
    config: GatewayConfig,
    *,
    environ: Mapping[str, str] | None = None,
    close_timeout: float = CLOSE_TIMEOUT,
    limits: ValidationLimits = DEFAULT_LIMITS,
    pages: Mapping[str, Page] | None = None,
    fleet: FleetFeed | None = None,
) -> AsyncIterator[Gateway]:
    """Run the gateway for the block; on exit (unless :meth:`Gateway.aclose` ran already) every request in
    flight gets a ``shutdown`` terminal and every client a 1001 close after it, then the port is released.
    ``fleet``: see :class:`Gateway`."""
    gateway = Gateway(
        router, config, environ=environ, close_timeout=close_timeout, limits=limits, pages=pages,
        fleet=fleet,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.run)
        try:
            yield gateway
        finally:
            with trio.CancelScope(shield=True):
                await gateway.aclose(grace=0)
