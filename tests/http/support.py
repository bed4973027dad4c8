"""Shared helpers of the HTTP door tests: an in-process tree with its door, and strict JSON reading.

Not a test module itself (it has no tests); the test modules import from it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from duckagents.app import Tree, open_tree
from duckagents.config import Config, HttpConfig, ProviderConfig
from duckagents.http import HttpServer, open_http
from duckagents.providers import Provider
from duckagents.validation import DEFAULT_LIMITS, ValidationLimits


def mock_config(
    *providers: ProviderConfig, validation: ValidationLimits = DEFAULT_LIMITS, **http: Any
) -> Config:
    """A config of mock providers (one named ``mock`` offering ``mock-1`` by default) with the door on
    127.0.0.1 and a free port."""
    chosen = providers or (ProviderConfig(name="mock", kind="mock", default_model="mock-1"),)
    return Config(providers=chosen, http=HttpConfig(enabled=True, port=0, **http), validation=validation)


@asynccontextmanager
async def running_door(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] | None = None,
    drain_timeout: float = 5.0,
) -> AsyncIterator[tuple[Tree, HttpServer, httpx.AsyncClient]]:
    """The tree, its door on a free loopback port, and an httpx client for it."""
    if config.http.port != 0:
        config = attrs.evolve(config, http=attrs.evolve(config.http, port=0))
    async with open_tree(config, environ=environ, providers=providers) as tree:
        async with open_http(tree.router, config, environ=environ, drain_timeout=drain_timeout) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
                yield tree, server, client


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 10.0, step: float = 0.05) -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds (figures that settle
    asynchronously: metrics fed from the bus, health probes)."""
    with trio.fail_after(within):
        while True:
            if await predicate():
                return
            await trio.sleep(step)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in a response: not valid JSON")


def strict_json(text: str | bytes) -> Any:
    """Parse JSON as a browser would: NaN/Infinity are errors (Python's json accepts them)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # strict: invalid UTF-8 fails the test
    return json.loads(text, parse_constant=_no_constant)


def sse_events(body: str) -> list[Any]:
    """The data of each SSE event of a streamed body (``[DONE]`` as the string)."""
    events = []
    for block in body.split("\n\n"):
        block = block.strip("\n")
        if not block:
            continue
        assert block.startswith("data: "), block[:80]
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else strict_json(data))
    return events


def is_error_object(body: Any) -> bool:
    """True for ``{"error": {"message": str, "type": str, "param": str|None, "code": str}}``."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return False
    error = body["error"]
    return (
        set(error) == {"message", "type", "param", "code"}
        and isinstance(error["message"], str)
        and bool(error["message"])
        and isinstance(error["type"], str)
        and isinstance(error["code"], str)
        and (error["param"] is None or isinstance(error["param"], str))
    )


def chat_body(text: str = "hello", model: str | None = "mock-1", **extra: Any) -> dict[str, Any]:
    """A minimal chat completion request body."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **extra}
    if model is not None:
        body["model"] = model
    return body
