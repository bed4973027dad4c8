"""The HTTP front door served by hypercorn on Trio, beside the router in the same process.

``open_http(router, config)`` serves for the duration of an ``async with`` block (``serve_http`` is the
same for ``nursery.start``). The socket is bound here, before hypercorn starts, so a busy port or a bad
address is a :class:`~duckagents.errors.ConfigError` saying so, and ``port = 0`` reports the port it got.
Leaving the block drains: ``/readyz`` turns 503 and new chat requests get 503 at once, requests in flight
may finish within ``drain_timeout``, then hypercorn stops and cancels what is left.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ..config import Config
from ..errors import ConfigError
from ..gateway import Gatekeeper, is_loopback_host
from ._auth import Guard
from ._door import DashboardLink, FleetStatus, FrontDoor, RouterLike
from ._metrics import Metrics

__all__ = ["DRAIN_TIMEOUT", "HttpServer", "open_http", "serve_http"]

log = logging.getLogger("duckagents.http")

#: Seconds requests in flight get to finish when the door closes (before hypercorn cancels them).
DRAIN_TIMEOUT = 10.0
#: Seconds hypercorn then gives open connections to finish after it stopped listening.
CLOSE_TIMEOUT = 2.0
BACKLOG = 1024


class HttpServer:
    """The front door bound to ``config.http.host``:``port``; see the module docstring.

    Refuses to serve a non-loopback address without tokens (an open door lets anyone who can reach it
    spend the providers' quota), like the gateway. :attr:`metrics` is the tree's Prometheus registry;
    set ``metrics.gateway_stats`` to include a gateway's counters.
    """

    def __init__(
        self,
        router: RouterLike,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        fleet: FleetStatus | None = None,
    ) -> None:
        self.config = config.http
        gatekeeper = Gatekeeper(config.gateway, environ)
        if gatekeeper.open and not is_loopback_host(self.config.host):
            raise ConfigError(
                f"http: refusing to serve {self.config.host!r} without tokens; bind 127.0.0.1 or configure "
                "[[gateway.tokens]] (the HTTP door shares the gateway's tokens)"
            )
        self._router = router
        self.metrics = Metrics(router.bus, config.providers, in_flight=lambda: router.in_flight)
        guard = Guard(gatekeeper, config.gateway.allowed_origins)
        self.door = FrontDoor(router, config, guard, self.metrics, fleet)
        self.port = 0
        self._socket: socket.socket | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()

    @property
    def host(self) -> str:
        """The bind address."""
        return self.config.host

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (the OpenAI base URL is this + ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def show_dashboard(self, gateway_port: int, *, auth: bool = False) -> None:
        """Serve the dashboard page at ``/``, talking to the gateway on ``gateway_port`` (on the host the
        browser reached this door by); ``auth``: the gateway needs a token."""
        self.door.dashboard = DashboardLink(gateway_port, auth)

    @property
    def draining(self) -> bool:
        """True once the door stopped taking new requests."""
        return self.door.in_flight.closed

    async def bind(self) -> None:
        """Bind the listening address now (:meth:`run` does it otherwise): a busy port or a bad address
        raises :class:`ConfigError` here, outside any nursery, so it reaches the caller as itself."""
        if self._socket is None:
            self._socket = await _bind(self.config.host, self.config.port)
            self.port = self._socket.getsockname()[1]

    async def run(self, *, task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, start counting signals, serve until :meth:`aclose` (or cancellation)."""
        await self.bind()
        sock, self._socket = self._socket, None
        assert sock is not None
        hyper = HypercornConfig()
        # hypercorn takes over the bound socket through its fd:// bind.
        hyper.bind = [f"fd://{sock.detach()}"]
        hyper.backlog = BACKLOG
        hyper.keep_alive_timeout = self.config.keep_alive_timeout
        hyper.graceful_timeout = CLOSE_TIMEOUT
        hyper.include_server_header = False
        hyper.accesslog = None
        hyper.errorlog = log
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.metrics.run)
                # The agents reported before the door opened: start the gauges from what the router knows.
                for status in await self._router.status():
                    self.metrics.observe_status(status)

                async def serve_then_stop(*, task_status: trio.TaskStatus[Any]) -> None:
                    # FrontDoor is an ASGI app; hypercorn's type for one is stricter than Starlette's.
                    app: Any = self.door
                    await serve(app, hyper, shutdown_trigger=self._stop.wait, task_status=task_status)
                    nursery.cancel_scope.cancel()

                await nursery.start(serve_then_stop)
                log.info(
                    "http front door listening on %s (%s)",
                    self.url,
                    "open" if self.door.guard.open else "tokens",
                )
                task_status.started(self)
        finally:
            self._stopped.set()

    def close_intake(self) -> None:
        """The first step of a drain: ``/readyz`` turns 503 and new chat requests get 503 at once; those in
        flight go on. (:meth:`aclose` does it too.)"""
        self.door.in_flight.closed = True

    async def aclose(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Drain (see the module docstring) and stop; returns once the server stopped."""
        self.close_intake()
        with trio.move_on_after(drain_timeout):
            await self.door.in_flight.wait_idle()
        self._stop.set()
        await self._stopped.wait()


async def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"http: cannot resolve host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"http: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


async def serve_http(
    router: RouterLike,
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the door until cancelled; ``nursery.start`` returns the :class:`HttpServer`."""
    await HttpServer(router, config, environ=environ).run(task_status=task_status)


@asynccontextmanager
async def open_http(
    router: RouterLike,
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    drain_timeout: float = DRAIN_TIMEOUT,
    fleet: FleetStatus | None = None,
) -> AsyncIterator[HttpServer]:
    """Run the front door for the block; leaving it drains, then stops (see :meth:`HttpServer.aclose`).
    ``fleet``: this process's fleet replica, whose agents ``GET /v1/status`` then lists with its own."""
    server = HttpServer(router, config, environ=environ, fleet=fleet)
    await server.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.aclose(drain_timeout)
