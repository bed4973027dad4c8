"""Plain HTTP on the gateway's port: the static pages the gateway was given (the dashboard), so that one
address serves both a page and the WebSocket it talks to.

Every TCP connection starts with an HTTP/1.1 request head (read with ``h11``, at most
:data:`MAX_HEAD_BYTES`). A WebSocket upgrade (an ``Upgrade: websocket`` header) is handed on to
trio-websocket with the bytes already read put back in front of the stream (:class:`ReplayStream`);
anything else is a plain request answered here, once, with ``Connection: close``: ``GET``/``HEAD`` of a
path in the page table, else ``404``, ``405`` or (no pages at all) ``426 Upgrade Required``. Paths are
looked up in a fixed table, never on the file system, so there is nothing to traverse.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import h11
import trio

__all__ = [
    "LINGER",
    "LINGER_BYTES",
    "MAX_HEAD_BYTES",
    "Opening",
    "Page",
    "ReplayStream",
    "answer_plain",
    "read_opening",
]

#: Largest request head (request line and headers) accepted before a ``431``/``400``.
MAX_HEAD_BYTES = 16 * 1024
_RECEIVE = 4096
#: After a plain answer: seconds and bytes of client input read and dropped before closing.
LINGER = 1.0
LINGER_BYTES = 256 * 1024
#: Headers of every plain answer: nothing from here may be framed, sniffed or leak a referrer.
_COMMON_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-cache"),
    ("Connection", "close"),
)


@attrs.frozen
class Page:
    """One static resource: its bytes, content type and extra response headers (e.g. a CSP)."""

    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Opening:
    """The start of a connection: its parsed request head, whether it asks for a WebSocket, and every
    byte read so far (to be replayed to the WebSocket machinery)."""

    request: h11.Request
    websocket: bool
    data: bytes


class ReplayStream(trio.abc.Stream):
    """A stream that first returns ``prefix`` (bytes already read from ``stream``), then reads on."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __repr__(self) -> str:
        # trio-websocket names a connection's peer by its stream's repr when it is not a socket stream.
        if isinstance(self._stream, trio.SocketStream):
            try:
                host, port, *_ = self._stream.socket.getpeername()
            except OSError:
                return "?"
            return f"{host}:{port}"
        return repr(self._stream)


class BadRequest(Exception):
    """The request head could not be parsed; ``status`` is the answer to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def read_opening(stream: trio.abc.Stream) -> Opening | None:
    """Read the request head of a new connection; None when the peer closed before sending one.

    Raises :class:`BadRequest` for a malformed or oversized head.
    """
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    read = bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
            raise BadRequest(status, str(exc)) from None
        if isinstance(event, h11.Request):
            upgrade = _header(event, b"upgrade") or b""
            return Opening(event, b"websocket" in upgrade.lower(), bytes(read))
        if event is not h11.NEED_DATA:  # a closed connection (or anything else before a request)
            return None
        data = bytes(await stream.receive_some(_RECEIVE))
        read += data
        parser.receive_data(data)  # b"" marks the end of the stream


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def _answer(status: int, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    reason = _REASONS.get(status, "")
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (*_COMMON_HEADERS, *extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}
_TEXT = "text/plain; charset=utf-8"


def plain_response(
    opening: Opening | None, pages: Mapping[str, Page], error: BadRequest | None = None
) -> bytes:
    """The whole answer (head and body) to a plain HTTP request, or to a malformed one (``error``)."""
    if error is not None or opening is None:
        status = error.status if error is not None else 400
        body = f"{status} {_REASONS.get(status, 'Bad Request')}\n".encode()
        return _answer(status, body, _TEXT) + body
    request = opening.request
    path = request.target.split(b"?", 1)[0].decode("latin-1")
    if not pages:
        body = b"This is a duckagents WebSocket gateway: connect with a WebSocket client.\n"
        return _answer(426, body, _TEXT, (("Upgrade", "websocket"),)) + body
    if request.method not in (b"GET", b"HEAD"):
        body = b"405 Method Not Allowed\n"
        return _answer(405, body, _TEXT, (("Allow", "GET, HEAD"),)) + body
    page = pages.get(path)
    if page is None:
        body = b"404 Not Found\n"
        return _answer(404, body, _TEXT) + (b"" if request.method == b"HEAD" else body)
    head = _answer(200, page.body, page.content_type, page.headers)
    return head if request.method == b"HEAD" else head + page.body


async def answer_plain(
    stream: trio.abc.Stream,
    opening: Opening | None,
    pages: Mapping[str, Page],
    error: BadRequest | None = None,
) -> None:
    """Send the answer of :func:`plain_response` and close the connection.

    The close lingers: after the answer the server half-closes and reads (and drops) what the client is
    still sending, for at most :data:`LINGER` seconds and :data:`LINGER_BYTES`, so that a client still
    writing an oversized head gets to read its ``431`` instead of a connection reset.
    """
    try:
        await stream.send_all(plain_response(opening, pages, error))
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
            drained = 0
            with trio.move_on_after(LINGER):
                while drained < LINGER_BYTES and (chunk := await stream.receive_some(_RECEIVE)):
                    drained += len(chunk)
    finally:
        await trio.aclose_forcefully(stream)
