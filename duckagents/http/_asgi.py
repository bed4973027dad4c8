"""Small ASGI helpers shared by the door's endpoints: headers in, whole responses out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._errors import ApiError

__all__ = ["JSON", "Receive", "Scope", "Send", "header", "send_error", "send_response"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
JSON = b"application/json"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), decoded as Latin-1 like HTTP says."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """A whole response in two ASGI messages."""
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ApiError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """The OpenAI error object of ``error`` with its status and headers."""
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send_response(send, error.status, error.encoded(), headers=[*extra, *headers])
