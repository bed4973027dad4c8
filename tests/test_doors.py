"""Every door applies :func:`duckagents.validation.check_request` to a request exactly once on its way to
an agent (issue 10): the router's door does, for Python callers, the HTTP door and the gateway alike; the
doors in front of it check what only they can see (the frame's or the body's JSON) and do not repeat it."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import duckagents.app
import duckagents.gateway
import duckagents.http
from duckagents import validation
from duckagents.app import Tree, open_tree
from duckagents.config import Config, GatewayConfig, HttpConfig, ProviderConfig
from duckagents.gateway import Gateway, connect, open_gateway
from duckagents.http import open_http
from duckagents.messages import Message
from duckagents.signals import ProviderRequest
from duckagents.validation import DEFAULT_LIMITS, ValidationLimits
from tests.helpers import Recorder

assert duckagents.app and duckagents.gateway and duckagents.http  # every module binding the name is loaded

CONFIG = Config(
    providers=(ProviderConfig(name="mock", kind="mock", default_model="mock-1"),),
    http=HttpConfig(enabled=True, port=0),
    gateway=GatewayConfig(port=0),
)


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The request ids check_request sees, wherever in duckagents it is called from."""
    calls: list[str] = []
    original = validation.check_request

    def counting(request: ProviderRequest, limits: ValidationLimits = DEFAULT_LIMITS) -> None:
        calls.append(request.request_id)
        original(request, limits)

    bound = [m for n, m in list(sys.modules.items()) if n.startswith("duckagents") and m is not None]
    patched = 0
    for module in bound:
        if getattr(module, "check_request", None) is original:
            monkeypatch.setattr(module, "check_request", counting)
            patched += 1
    assert patched >= 2  # validation itself and the router's door at least
    return calls


@asynccontextmanager
async def doors() -> AsyncIterator[tuple[Tree, str, Gateway]]:
    async with (
        open_tree(CONFIG) as tree,
        open_http(tree.router, CONFIG) as http,
        open_gateway(tree.router, CONFIG.gateway, limits=CONFIG.validation) as gateway,
    ):
        yield tree, http.url, gateway


async def test_python_callers_requests_are_checked_once(checked: list[str]) -> None:
    async with doors() as (tree, _, _):
        await tree.router.complete("hello", request_id="c1")
        async with tree.router.stream("hello", request_id="s1") as stream:
            async for _ in stream:
                pass
        recorder = Recorder(tree.bus)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(recorder.run)
            await tree.router.submit(ProviderRequest("b1", (Message.user("hello"),)))
            await recorder.wait_for(lambda s: s.type == "provider_response" and s.subject == "b1", within=30)
            nursery.cancel_scope.cancel()
    assert checked == ["c1", "s1", "b1"]


async def test_an_http_request_is_checked_once(checked: list[str]) -> None:
    async with doors() as (_, url, _), httpx.AsyncClient(base_url=url, timeout=30) as client:
        body: dict[str, Any] = {"model": "mock-1", "messages": [{"role": "user", "content": "hello"}]}
        answer = await client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 200, streamed.text
    assert len(checked) == 2 and len(set(checked)) == 2


async def test_a_gateway_request_is_checked_once(checked: list[str]) -> None:
    async with doors() as (_, _, gateway), connect(gateway.url) as ws:
        frame = {"type": "request", "id": 1, "messages": [{"role": "user", "content": "hello"}]}
        await ws.send_message(json.dumps(frame))
        request_id = None
        with trio.fail_after(30):
            while True:
                got = json.loads(await ws.get_message())
                if got.get("type") == "ack" and got.get("id") == 1:
                    request_id = got["request_id"]
                if got.get("event", {}).get("type") == "provider_response":
                    break
    assert checked == [request_id]
