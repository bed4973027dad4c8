"""Plain HTTP on the gateway's port: the static pages it was given, over real loopback sockets, next to
WebSocket connections on the same port."""

from __future__ import annotations

import base64
import os

import httpx
import trio

from duckagents.config import TokenConfig
from duckagents.gateway import Page

from .support import connect, fake_router, running_gateway

PAGES = {
    "/": Page(b"<!doctype html><p>hi</p>", "text/html; charset=utf-8", (("Content-Security-Policy", "x"),)),
    "/app.js": Page(b"console.log(1)", "text/javascript"),
}


async def raw(port: int, data: bytes, *, pieces: int = 1, wait: float = 5.0) -> bytes:
    """Send ``data`` (in ``pieces`` writes) and read until the server closes or ``wait`` seconds pass."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        step = max(1, len(data) // pieces)
        try:
            for at in range(0, len(data), step):
                await stream.send_all(data[at : at + step])
                await trio.sleep(0.01)
        except trio.BrokenResourceError:
            pass  # the server answered and closed before reading everything
        received = b""
        with trio.move_on_after(wait):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return received


async def test_pages_and_websockets_share_the_port() -> None:
    async with fake_router() as router, running_gateway(router, pages=PAGES) as gateway:
        assert gateway.http_url == f"http://127.0.0.1:{gateway.port}/"
        async with httpx.AsyncClient(base_url=gateway.http_url) as http:
            page = await http.get("/")
            assert page.status_code == 200 and page.content == PAGES["/"].body
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert page.headers["content-security-policy"] == "x"
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["referrer-policy"] == "no-referrer"
            assert page.headers["connection"] == "close"
            script = await http.get("/app.js?v=2")  # the query is not part of the path
            assert script.status_code == 200 and script.content == b"console.log(1)"
            head = await http.head("/")
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(len(PAGES["/"].body))
            missing = await http.get("/../etc/passwd")
            assert missing.status_code == 404
            posted = await http.post("/", content=b"x")
            assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
        async with connect(gateway) as client:
            assert (await client.call({"type": "ping", "id": 1}))["type"] == "ack"
        assert gateway.stats().faults == 0


async def test_without_pages_plain_http_is_told_to_upgrade() -> None:
    async with fake_router() as router, running_gateway(router) as gateway:
        async with httpx.AsyncClient() as http:
            answer = await http.get(gateway.http_url)
        assert answer.status_code == 426 and answer.headers["upgrade"] == "websocket"
        assert b"WebSocket" in answer.content


async def test_malformed_and_oversized_heads_get_4xx_and_the_gateway_carries_on() -> None:
    async with fake_router() as router, running_gateway(router, pages=PAGES) as gateway:
        garbage = await raw(gateway.port, b"\x16\x03\x01 not http at all\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
        oversized = await raw(gateway.port, huge, pieces=8)
        assert oversized.startswith(b"HTTP/1.1 431 ")
        assert (
            await raw(gateway.port, b"", wait=0.2) == b""
        )  # connect and leave: nothing sent, nothing answered
        async with connect(gateway) as client:
            assert (await client.call({"type": "ping", "id": 1}))["type"] == "ack"
        assert gateway.stats().faults == 0


async def test_an_upgrade_split_across_writes_is_replayed_to_the_websocket_side() -> None:
    async with fake_router() as router, running_gateway(router, pages=PAGES) as gateway:
        key = base64.b64encode(os.urandom(16))
        head = (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = await raw(gateway.port, head, pieces=5, wait=0.5)
        assert answer.startswith(b"HTTP/1.1 101 ")
        assert b'"type":"hello"' in answer.replace(b" ", b"")  # the hello frame follows the handshake


async def test_refused_websocket_handshakes_keep_their_status_next_to_pages() -> None:
    env = {"T": "secret-token"}
    async with (
        fake_router() as router,
        running_gateway(router, pages=PAGES, tokens=(TokenConfig(env="T"),), environ=env) as gateway,
    ):
        async with httpx.AsyncClient() as http:  # the page itself needs no token: it holds no data
            assert (await http.get(gateway.http_url)).status_code == 200
        key = base64.b64encode(os.urandom(16))
        head = (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await raw(gateway.port, head)).startswith(b"HTTP/1.1 401 ")
        assert gateway.stats().rejected == {401: 1}
