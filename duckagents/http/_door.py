"""The ASGI app of the HTTP front door: its routes, their answers, and request timing.

Routes (docs/deploy.md): ``POST /v1/chat/completions`` (:mod:`._chat`), ``GET /v1/models[/{id}]``,
``GET /v1/status``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, and the dashboard page at ``/``
(with its files) once :attr:`FrontDoor.dashboard` says which gateway it talks to. Every error, including
an unknown route or method, is an OpenAI error object.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..bus import SignalBus
from ..config import Config
from ..errors import ErrorKind
from ..live import DASHBOARD_PATHS, dashboard_pages
from ..router import AGENT_CHILD_PREFIX, NOT_SERVING_BREAKER, ResponseStream
from ..signals import ProviderResponse, ProviderStatus
from ._asgi import JSON, Receive, Scope, Send
from ._auth import Guard
from ._catalogue import ModelCatalogue
from ._chat import ChatEndpoint, InFlight
from ._errors import ApiError
from ._json import dumps
from ._metrics import SCRAPE_CONTENT_TYPE, Metrics

__all__ = ["FleetStatus", "FrontDoor", "RouterLike"]

_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/models", "/v1/status", "/healthz", "/readyz", "/metrics", *DASHBOARD_PATHS}
)
#: A Host header's name part the dashboard will put in its gateway address (and its CSP).
_HOSTNAME = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")
_PAGE_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}


@attrs.frozen
class DashboardLink:
    """Where the dashboard served by the door connects: the gateway's port, on the host the browser used
    to reach the door; ``auth``: the gateway needs a token."""

    gateway_port: int
    auth: bool = False


class RouterLike(Protocol):
    """The router's public API the door uses."""

    @property
    def bus(self) -> SignalBus:
        """The tree's signal bus (metrics count from it)."""
        ...

    @property
    def running(self) -> bool:
        """True while the router serves."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests between intake and final result."""
        ...

    async def complete(self, prompt: Any, *, model: str | None = None, **options: Any) -> ProviderResponse:
        """One completion."""
        ...

    def stream(self, prompt: Any, *, model: str | None = None, **options: Any) -> ResponseStream:
        """A streamed completion."""
        ...

    async def status(self) -> list[ProviderStatus]:
        """Every agent's latest status."""
        ...

    def status_document(self) -> dict[str, Any]:
        """The status document (``GET /v1/status``; the gateway's ``status`` message returns it too)."""
        ...


class FleetStatus(Protocol):
    """What the door shows of a fleet (``duckagents.fleet.FleetReplica``)."""

    def fleet_document(self, local: dict[str, Any]) -> dict[str, Any]:
        """The fleet's status document, from this process's (``local``)."""
        ...


def route_of(path: str) -> str:
    """The route template of a path, for metric labels (never the raw path: that is client input)."""
    if path in _ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "other"


class FrontDoor:
    """The door's ASGI app (call it), with the state its routes share. :attr:`in_flight` is closed by the
    server when it drains; :meth:`readiness` is what ``/readyz`` reports."""

    def __init__(
        self,
        router: RouterLike,
        config: Config,
        guard: Guard,
        metrics: Metrics,
        fleet: FleetStatus | None = None,
    ) -> None:
        self.router = router
        #: The fleet this process is a replica of: ``/v1/status`` then shows every replica's agents.
        self.fleet = fleet
        self.config = config.http
        self.guard = guard
        self.metrics = metrics
        self.catalogue = ModelCatalogue(config.providers)
        self.in_flight = InFlight(config.http.max_in_flight)
        #: Set (by ``duckagents serve``, once the gateway listens) to serve the dashboard at ``/``.
        self.dashboard: DashboardLink | None = None
        self._chat = chat = ChatEndpoint(
            router, config.http, config.validation, guard, self.catalogue, self.in_flight
        )
        routes = [
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/models/{model:path}", self._model, methods=["GET"]),
            Route("/v1/status", self._status, methods=["GET"]),
            Route("/healthz", self._healthz, methods=["GET", "HEAD"]),
            Route("/readyz", self._readyz, methods=["GET", "HEAD"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            *(Route(path, self._page, methods=["GET", "HEAD"]) for path in DASHBOARD_PATHS),
        ]
        handlers: dict[Any, Any] = {
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        }
        self._app = Starlette(routes=routes, exception_handlers=handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
                # The hot route skips Starlette's middleware and routing: the endpoint answers every
                # error itself.
                await self._chat(scope, receive, timed)
            else:
                await self._app(scope, receive, timed)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe_http(
                scope.get("method", ""), route_of(scope.get("path", "")), status, seconds
            )

    # --- readiness -----------------------------------------------------------------------------------

    async def readiness(self) -> tuple[list[str], list[str]]:
        """The agents that can serve now, and why the others cannot (empty first list: not ready)."""
        if self.in_flight.closed:
            return [], ["the server is draining: it takes no new requests"]
        if not self.router.running or "router" in self.metrics.down:
            return [], ["the router is not running"]
        serving, reasons = [], []
        for status in await self.router.status():
            down = self.metrics.down.get(AGENT_CHILD_PREFIX + status.provider)
            if down is not None:
                reasons.append(f"{status.provider}: agent {down}")
            elif not status.reachable:
                why = status.detail.get("error") or status.detail.get("kind") or "no answer"
                reasons.append(f"{status.provider}: upstream unreachable ({why[:200]})")
            elif status.breaker_state in NOT_SERVING_BREAKER:
                reasons.append(f"{status.provider}: circuit breaker {status.breaker_state}")
            elif status.draining:
                reasons.append(f"{status.provider}: draining (an operator took it out of rotation)")
            else:
                serving.append(status.provider)
        if not serving and not reasons:
            reasons.append("no provider agent is configured")
        return serving, reasons

    # --- routes --------------------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        serving, reasons = await self.readiness()
        if serving:
            return _json({"status": "ready", "serving": serving, "not_serving": reasons})
        return _json({"status": "not ready", "reasons": reasons}, 503)

    async def _metrics(self, request: Request) -> Response:
        self.guard.check(request.scope, "subscribe")
        return Response(self.metrics.exposition(), headers={"content-type": SCRAPE_CONTENT_TYPE})

    async def _models(self, request: Request) -> Response:
        self.guard.check(request.scope)
        return _json(self.catalogue.listing())

    async def _model(self, request: Request) -> Response:
        self.guard.check(request.scope)
        name = request.path_params["model"]
        found = self.catalogue.model_object(name)
        if found is None:
            raise ApiError(
                404,
                ErrorKind.NOT_FOUND.value,
                f"The model {name[:256]!r} is not served here.",
                code="model_not_found",
                param="model",
            )
        return _json(found)

    async def _page(self, request: Request) -> Response:
        """One of the dashboard's files; the page talks to the gateway on the host the browser used."""
        if self.dashboard is None:
            raise HTTPException(404)
        host = request.url.hostname or ""
        if not _HOSTNAME.fullmatch(host):
            raise ApiError(400, ErrorKind.INVALID_REQUEST.value, "the Host header is not a host name")
        scheme = "wss" if request.url.scheme == "https" else "ws"
        netloc = f"[{host}]" if ":" in host else host
        gateway = f"{scheme}://{netloc}:{self.dashboard.gateway_port}/"
        page = dashboard_pages(gateway_url=gateway, auth=self.dashboard.auth)[request.url.path]
        body = page.body if request.method == "GET" else b""
        headers = {**_PAGE_HEADERS, **{k.lower(): v for k, v in page.headers}}
        return Response(body, headers=headers, media_type=page.content_type)

    async def _status(self, request: Request) -> Response:
        self.guard.check(request.scope, "subscribe")
        await self.router.status()  # waits (bounded) for every agent's first report
        document = self.router.status_document()
        if self.fleet is not None:
            document = self.fleet.fleet_document(document)
        return _json(document)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status, headers=headers, media_type=JSON.decode())


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json(exc.body(), exc.status, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(
            404, ErrorKind.NOT_FOUND.value, f"no route {request.url.path[:200]!r}", code="unknown_url"
        )
    elif exc.status_code == 405:
        error = ApiError(
            405,
            ErrorKind.INVALID_REQUEST.value,
            f"method {request.method} is not allowed here",
            code="method_not_allowed",
        )
    else:
        error = ApiError(exc.status_code, ErrorKind.INVALID_REQUEST.value, str(exc.detail)[:200])
    return _json(error.body(), error.status, {**error.headers, **(exc.headers or {})})


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette logs nothing here and re-raises after answering, so hypercorn logs the traceback once.
    error = ApiError(500, "internal", "internal error")
    return _json(error.body(), 500)
