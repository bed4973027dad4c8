"""Shared helpers of the gateway tests: a tiny fake router, gateway startup (in front of the fake router or
of the real tree), a JSON WebSocket client that parses every server frame strictly.

Not a test module itself (it has no tests); the gateway test modules import from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_websocket

from duckagents.app import Tree, open_tree
from duckagents.bus import SignalBus
from duckagents.config import Config, GatewayConfig, ProviderConfig
from duckagents.errors import ErrorKind, ProviderError
from duckagents.gateway import Gateway, Page, open_gateway
from duckagents.providers import MockProvider
from duckagents.signals import (
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    make_signal,
)
from duckagents.validation import DEFAULT_LIMITS, ValidationLimits

STEP_TIMEOUT = 10.0


def strict_json(text: str) -> Any:
    """Parse a server frame as strictly as a browser or a strict parser would: no NaN or Infinity, no lone
    surrogate (the text must encode to UTF-8). Every frame the gateway tests read goes through this."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a server frame: {text[:200]}")

    text.encode("utf-8")
    value = json.loads(text, parse_constant=refuse)
    if _SURROGATE_ESCAPE.search(text):  # an escaped surrogate must be half of a pair
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class FakeRouter:
    """Answers submitted requests through the bus like the real router: chunks, then one terminal.

    The answer is ``echo: <last user text>`` in 4-character chunks. A prompt containing ``hold`` streams
    one chunk and then waits until cancelled; ``refuse`` makes ``submit`` raise.
    """

    def __init__(self, bus: SignalBus, nursery: trio.Nursery) -> None:
        self.bus = bus
        self._nursery = nursery
        self.submitted: list[ProviderRequest] = []
        self.cancelled: list[str] = []
        self._scopes: dict[str, trio.CancelScope] = {}

    async def submit(self, request: ProviderRequest) -> None:
        self.submitted.append(request)
        if "refuse" in request.messages[-1].text:
            raise ProviderError(
                ErrorKind.NO_PROVIDER, "no provider can take this", request_id=request.request_id
            )
        scope = trio.CancelScope()
        self._scopes[request.request_id] = scope
        self._nursery.start_soon(self._answer, request, scope)

    def cancel(self, request_id: str) -> bool:
        scope = self._scopes.get(request_id)
        if scope is None:
            return False
        self.cancelled.append(request_id)
        scope.cancel()
        return True

    async def _answer(self, request: ProviderRequest, scope: trio.CancelScope) -> None:
        rid = request.request_id
        text = f"echo: {request.messages[-1].text}"
        with scope:
            for index, start in enumerate(range(0, len(text), 4)):
                await self.bus.publish(
                    make_signal(ProviderChunk(rid, "fake", index, text[start : start + 4]), "/f")
                )
                if "hold" in text:
                    await trio.sleep_forever()
            await self.bus.publish(make_signal(ProviderResponse(rid, "fake", "fake-1", content=text), "/f"))
        self._scopes.pop(rid, None)
        if scope.cancelled_caught:
            failure = ProviderErrorData(rid, ErrorKind.CANCELLED, "cancelled by the caller", provider="fake")
            await self.bus.publish(make_signal(failure, "/f"))


@asynccontextmanager
async def fake_router(bus: SignalBus | None = None) -> AsyncIterator[FakeRouter]:
    """A :class:`FakeRouter` whose answering tasks live for the block."""
    async with trio.open_nursery() as nursery:
        yield FakeRouter(bus or SignalBus(), nursery)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_gateway(
    router: Any,
    *,
    environ: Mapping[str, str] | None = None,
    pages: Mapping[str, Page] | None = None,
    **config: Any,
) -> AsyncIterator[Gateway]:
    """A gateway on 127.0.0.1, a free port, with ``config`` overrides of :class:`GatewayConfig` (and
    ``pages`` for plain HTTP)."""
    settings = GatewayConfig(port=0, **config)
    async with open_gateway(
        router, settings, environ=environ or {}, close_timeout=2.0, pages=pages
    ) as gateway:
        yield gateway


@attrs.define
class Client:
    """A JSON-speaking trio-websocket client. Frames not yet asked for wait in ``backlog``."""

    ws: trio_websocket.WebSocketConnection
    hello: dict[str, Any] = attrs.field(factory=dict)
    backlog: list[dict[str, Any]] = attrs.field(factory=list)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send_message(message if isinstance(message, str) else json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        with trio.fail_after(STEP_TIMEOUT):
            frame: dict[str, Any] = strict_json(await self.ws.get_message())
        return frame

    async def recv_until(self, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Frames up to and including the first for which ``done`` is true."""
        frames = []
        while True:
            frame = await self.recv()
            frames.append(frame)
            if done(frame):
                return frames

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send and return the ack or error answering it; other frames go to the backlog."""
        await self.send(message)
        kept: list[dict[str, Any]] = []
        while True:
            frame = await self.recv()
            if frame.get("type") in ("ack", "error") and frame.get("id") == message.get("id"):
                self.backlog[:0] = kept
                return frame
            kept.append(frame)

    async def request(self, msg_id: str, text: str, **fields: Any) -> list[dict[str, Any]]:
        """Submit a request and return its signal frames, up to and including the terminal one."""
        ack = await self.call(
            {"type": "request", "id": msg_id, "messages": [{"role": "user", "content": text}], **fields}
        )
        assert ack["type"] == "ack", ack
        return await self.recv_until(lambda f: f.get("request") == msg_id and is_terminal(f))


def is_terminal(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "signal" and frame["event"]["type"] in ("provider_response", "provider_error")


def headers(token: str | None = None, origin: str | None = None) -> list[tuple[bytes, bytes]]:
    out = []
    if token is not None:
        out.append((b"Authorization", f"Bearer {token}".encode()))
    if origin is not None:
        out.append((b"Origin", origin.encode()))
    return out


@asynccontextmanager
async def connect(
    gateway: Gateway, *, token: str | None = None, origin: str | None = None, query: str = "", **kwargs: Any
) -> AsyncIterator[Client]:
    """A connected :class:`Client` (hello already read)."""
    async with trio_websocket.open_websocket_url(
        gateway.url + query, extra_headers=headers(token, origin), connect_timeout=STEP_TIMEOUT, **kwargs
    ) as ws:
        client = Client(ws)
        client.hello = await client.recv()
        assert client.hello["type"] == "hello"
        yield client


async def eventually(predicate: Callable[[], bool], within: float = STEP_TIMEOUT) -> None:
    """Wait (checking every 10 ms) until ``predicate()`` holds; fail after ``within`` seconds."""
    with trio.fail_after(within):
        # Polling on purpose: the conditions are states of other components (counters, lists), not events.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


# --- the real tree behind the gateway ------------------------------------------------------------

TREE_CONFIG = Config(providers=(ProviderConfig(name="mock", kind="mock", default_model="mock-1"),))


@asynccontextmanager
async def serving(
    mock: MockProvider | None = None, limits: ValidationLimits = DEFAULT_LIMITS, **gateway: Any
) -> AsyncIterator[tuple[Tree, Gateway]]:
    """The real tree (one mock agent) with a gateway on a free loopback port."""
    async with open_tree(TREE_CONFIG, providers={"mock": mock or MockProvider()}) as tree:
        settings = GatewayConfig(port=0, **gateway)
        async with open_gateway(tree.router, settings, environ={}, close_timeout=2.0, limits=limits) as gw:
            yield tree, gw


@asynccontextmanager
async def watcher(gateway: Gateway) -> AsyncIterator[Client]:
    """A client subscribed to every signal, like a plain ``duckagents watch``."""
    async with connect(gateway) as client:
        assert (await client.call({"type": "subscribe", "id": "all"}))["type"] == "ack"
        yield client


async def sees_request(watch: Client, msg_id: str, client: Client) -> None:
    """``client`` gets a normal answer, and ``watch`` sees that request's final response go by."""
    frames = await client.request(msg_id, f"hello {msg_id}")
    assert frames[-1]["event"]["type"] == "provider_response"
    request_id = frames[-1]["event"]["subject"]
    await watch.recv_until(
        lambda f: f.get("type") == "signal"
        and f["event"]["type"] == "provider_response"
        and f["event"]["subject"] == request_id
    )
