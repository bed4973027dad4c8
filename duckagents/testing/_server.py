"""A small HTTP/1.1 server on real loopback sockets (Trio + h11) with fault injection.

Provider wire servers (:mod:`duckagents.testing`) are apps on top of it: an app maps an
:class:`HTTPRequest` to a :class:`Reply` (a whole body) or a :class:`StreamReply` (body pieces sent as
they come, e.g. SSE events). Scripted :class:`Fault` objects are consumed one per matching request.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import h11
import trio

MAX_REQUEST_BODY = 32 * 1024 * 1024
MAX_RECORDED = 256
#: Body bytes the recorded requests may hold (the newest is always kept).
MAX_RECORDED_BYTES = 4 * 1024 * 1024


@attrs.frozen
class HTTPRequest:
    """A request as the server saw it. Header names are lower-case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` when it is not)."""
        return json.loads(self.body)


@attrs.frozen
class Reply:
    """A complete response."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        """A JSON response."""
        hdrs = {"content-type": "application/json", **(headers or {})}
        return cls(status, json.dumps(obj).encode(), hdrs)


@attrs.frozen
class StreamReply:
    """A streamed response: ``pieces`` are sent in order, each flushed as its own chunk."""

    pieces: Iterable[bytes] | AsyncIterator[bytes]
    status: int = 200
    headers: dict[str, str] = attrs.field(factory=dict)
    #: Pause between pieces (seconds), to make streams observable.
    interval: float = 0.0


@attrs.frozen
class Fault:
    """One injected misbehaviour, applied to the next request whose path matches ``path``.

    ``status`` answers with that HTTP error (the app renders the provider's error body for
    ``error_type``/``message``); ``latency`` delays the answer; ``first_byte_delay`` delays the body
    after the headers; ``cut_after`` closes the connection after that many stream pieces (or mid-body);
    ``stall_after`` pauses a stream for ``stall`` seconds after that many pieces (a stalled upstream);
    ``malformed`` makes the app send invalid JSON; ``reply`` replaces the app's answer entirely.
    """

    status: int | None = None
    message: str = "injected fault"
    error_type: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    latency: float = 0.0
    first_byte_delay: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None
    stall: float = 3600.0
    malformed: bool = False
    reply: Reply | StreamReply | None = None
    path: str | None = None


App = Callable[[HTTPRequest, Fault | None], Awaitable[Reply | StreamReply]]


class LoopbackServer:
    """An HTTP server bound to 127.0.0.1 on a free port. Start it with :func:`serve_loopback`."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.port = 0
        self.faults: deque[Fault] = deque()
        #: The most recent requests (bounded), for assertions in tests.
        self.requests: deque[HTTPRequest] = deque()
        self._recorded_bytes = 0
        self.request_count = 0
        #: Streamed responses the client cut off (it closed the connection before the last piece): how a
        #: test sees that a cancelled request really stopped the upstream call.
        self.aborted = 0

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://127.0.0.1:{self.port}"

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is used once, by the next request matching its ``path``."""
        self.faults.extend(faults)

    def _take_fault(self, path: str) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if fault.path is None or fault.path == path:
                del self.faults[i]
                return fault
        return None

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Serve HTTP/1.1 requests on one connection until it closes."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BODY)
        try:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                keep = await self._respond(conn, stream, request)
                if not keep or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> HTTPRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data and conn.their_state is h11.IDLE:
                    return None
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REQUEST_BODY:
                    raise h11.RemoteProtocolError("body too large")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                target = head.target.decode()
                path, _, query = target.partition("?")
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                return HTTPRequest(head.method.decode(), path, query, headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _record(self, request: HTTPRequest) -> None:
        requests = self.requests
        if not requests:  # a test may have cleared it
            self._recorded_bytes = 0
        requests.append(request)
        self._recorded_bytes += len(request.body)
        while len(requests) > 1 and (
            len(requests) > MAX_RECORDED or self._recorded_bytes > MAX_RECORDED_BYTES
        ):
            self._recorded_bytes -= len(requests.popleft().body)

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, request: HTTPRequest) -> bool:
        self._record(request)
        self.request_count += 1
        fault = self._take_fault(request.path)
        if fault is not None and fault.latency:
            await trio.sleep(fault.latency)
        if fault is not None and fault.reply is not None:
            reply = fault.reply
        else:
            reply = await self.app(request, fault)
        cut_after = fault.cut_after if fault is not None else None
        stall_after = fault.stall_after if fault is not None else None
        first_delay = fault.first_byte_delay if fault is not None else 0.0
        if isinstance(reply, Reply):
            headers = {**reply.headers, "content-length": str(len(reply.body))}
            await self._send(conn, stream, h11.Response(status_code=reply.status, headers=_h(headers)))
            if first_delay:
                await trio.sleep(first_delay)
            if cut_after is not None:  # promise a body, then drop the connection half-way
                await self._send(conn, stream, h11.Data(data=reply.body[: len(reply.body) // 2]))
                return False
            await self._send(conn, stream, h11.Data(data=reply.body))
            await self._send(conn, stream, h11.EndOfMessage())
            return True
        headers = {"cache-control": "no-cache", **reply.headers, "transfer-encoding": "chunked"}
        await self._send(conn, stream, h11.Response(status_code=reply.status, headers=_h(headers)))
        if first_delay:
            await trio.sleep(first_delay)
        sent = 0
        try:
            async for piece in _aiter(reply.pieces):
                if cut_after is not None and sent >= cut_after:
                    return False
                if stall_after is not None and sent == stall_after:
                    assert fault is not None
                    await trio.sleep(fault.stall)
                if sent and reply.interval:
                    await trio.sleep(reply.interval)
                await self._send(conn, stream, h11.Data(data=piece))
                sent += 1
            await self._send(conn, stream, h11.EndOfMessage())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.aborted += 1
            raise
        return True

    @staticmethod
    async def _send(conn: h11.Connection, stream: trio.SocketStream, event: Any) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)


def _h(headers: dict[str, str]) -> list[tuple[str, str]]:
    return list(headers.items())


async def _aiter(pieces: Iterable[bytes] | AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if hasattr(pieces, "__aiter__"):
        async for piece in pieces:  # type: ignore[union-attr]
            yield piece
    else:
        for piece in pieces:  # type: ignore[union-attr]
            yield piece


@asynccontextmanager
async def serve_loopback(app_server: LoopbackServer) -> AsyncIterator[LoopbackServer]:
    """Run ``app_server`` on 127.0.0.1 (free port) for the duration of the block."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, app_server.handle_connection, 0, host="127.0.0.1")
        )
        app_server.port = listeners[0].socket.getsockname()[1]
        try:
            yield app_server
        finally:
            nursery.cancel_scope.cancel()


def sse(event: str | None, data: Any) -> bytes:
    """One Server-Sent Event; ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def ndjson(obj: Any) -> bytes:
    """One newline-delimited JSON line."""
    return (json.dumps(obj) + "\n").encode()
