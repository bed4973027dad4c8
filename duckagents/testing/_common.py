"""What the provider wire servers share: the loopback server under them, the reply script, routing by
method and path, bearer-key checks and the headers of an injected error reply."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

from ._script import ReplyScript
from ._server import Fault, HTTPRequest, LoopbackServer, Reply, StreamReply, serve_loopback

#: An endpoint: the request and whether an injected fault asks for a malformed answer.
Handler = Callable[[HTTPRequest, bool], Awaitable[Reply | StreamReply]]


class WireServer:
    """Base of the wire servers: a :class:`LoopbackServer` that answers with :meth:`_app`, and
    :attr:`script`, the replies to completion requests. Start one with :func:`serve`."""

    def __init__(self) -> None:
        self.script = ReplyScript()
        self.loopback = LoopbackServer(self._app)

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        return self.loopback.url

    @property
    def requests(self) -> deque[HTTPRequest]:
        """Requests received, most recent last (bounded)."""
        return self.loopback.requests

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is used once, by the next request matching its ``path``."""
        self.loopback.inject(*faults)

    async def _app(self, request: HTTPRequest, fault: Fault | None) -> Reply | StreamReply:
        raise NotImplementedError


S = TypeVar("S", bound=WireServer)


@asynccontextmanager
async def serve(server: S) -> AsyncIterator[S]:
    """Run ``server`` on 127.0.0.1 (a free port) for the duration of the block."""
    async with serve_loopback(server.loopback):
        yield server


async def route(
    routes: Mapping[tuple[str, str], Handler],
    request: HTTPRequest,
    malformed: bool,
    *,
    not_allowed: Reply,
    not_found: Reply,
) -> Reply | StreamReply:
    """Answer with the handler of ``(method, path)``; ``not_allowed`` when only the method is wrong."""
    handler = routes.get((request.method, request.path))
    if handler is None:
        return not_allowed if any(path == request.path for _, path in routes) else not_found
    return await handler(request, malformed)


def bearer_refused(request: HTTPRequest, api_key: str | None) -> bool:
    """True when the server wants ``api_key`` and the request does not carry it as a bearer token."""
    return api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}"


def fault_headers(fault: Fault, rate_limited: Mapping[str, str]) -> dict[str, str]:
    """Headers of an injected error reply: the fault's own, over ``rate_limited`` on a 429."""
    return {**rate_limited, **fault.headers} if fault.status == 429 else dict(fault.headers)
