"""The gateway in front of the real router (``open_router`` on the mock provider), over loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from websockets.asyncio.client import connect as ws_connect

from duckagents.app import open_router
from duckagents.bus import SignalFilter
from duckagents.config import Config, ProviderConfig, TokenConfig
from duckagents.providers import MockProvider, mock_answer
from duckagents.router import RouterAgent
from duckagents.testing import Fault, ScriptedReply, open_openai_server

from .support import connect, eventually, is_terminal, running_gateway

LONG = "word " * 400  # 2,000 characters: 250 chunks of 8, 20 ms apart = 5 s, ample time to cancel


@asynccontextmanager
async def real_router(mock: MockProvider | None = None) -> AsyncIterator[RouterAgent]:
    async with open_router(providers={"mock": mock} if mock else None) as router:
        yield router


async def test_request_through_the_real_router_streams_the_mock_answer() -> None:
    async with real_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        frames = await client.request("q", "hello router", timeout=30, options={"max_tokens": 100})
        await client.call({"type": "ping", "id": "after"})
    chunks, terminal = frames[:-1], frames[-1]
    assert "".join(f["event"]["data"]["delta"] for f in chunks) == mock_answer("hello router")
    assert [f["event"]["data"]["index"] for f in chunks] == list(range(len(chunks)))
    assert terminal["event"]["type"] == "provider_response" and terminal["event"]["source"] == "/router"
    assert terminal["event"]["data"]["content"] == mock_answer("hello router")
    assert client.backlog == []  # attempt-level signals (subject "<id>#1") are not the client's stream


async def test_cancel_through_the_real_router() -> None:
    mock = MockProvider(chunk_delay=0.02, replies=[LONG])
    async with real_router(mock) as router, running_gateway(router) as gateway, connect(gateway) as client:
        ack = await client.call(
            {"type": "request", "id": "q", "messages": [{"role": "user", "content": "go"}]}
        )
        first = await client.recv()
        assert first["event"]["type"] == "provider_chunk"
        cancel = await client.call({"type": "cancel", "id": "c", "request_id": ack["request_id"]})
        frames = await client.recv_until(is_terminal)
        assert router.in_flight == 0
    assert cancel["cancelled"] is True
    terminal = frames[-1]["event"]
    assert terminal["type"] == "provider_error" and terminal["source"] == "/router"
    assert terminal["data"]["kind"] == "cancelled" and terminal["data"]["partial"] is True
    assert len(frames) - 1 < len(LONG) // 8  # the stream stopped early


async def test_a_client_leaving_mid_request_cancels_it_at_the_router() -> None:
    mock = MockProvider(chunk_delay=0.02, replies=[LONG])
    async with real_router(mock) as router, running_gateway(router) as gateway:
        finals = router.bus.subscribe(SignalFilter(types=["provider_error"]), buffer=16)
        async with connect(gateway) as client:
            ack = await client.call(
                {"type": "request", "id": "q", "messages": [{"role": "user", "content": "go"}]}
            )
            await client.recv()  # streaming: the request is in flight
        with trio.fail_after(10):
            async for signal in finals:
                if signal.subject == ack["request_id"] and signal.source == "/router":
                    break
        assert signal.data.kind.value == "cancelled"  # type: ignore[union-attr]
        await eventually(lambda: router.in_flight == 0)


async def test_router_refusal_becomes_the_requests_terminal() -> None:
    async with real_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        frames = await client.request("q", "hi", required_features=["telepathy"])
    (terminal,) = frames
    assert terminal["event"]["source"] == "/gateway"
    assert terminal["event"]["data"]["kind"] == "invalid_request"
    assert "telepathy" in terminal["event"]["data"]["message"]


async def test_watching_the_routers_traffic() -> None:
    async with real_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        await client.call(
            {"type": "subscribe", "id": "w", "filter": {"types": ["provider_request", "provider_response"]}}
        )
        frames = await client.request("q", "observe me")
        rid = frames[-1]["event"]["subject"]
        watched = await client.recv_until(
            lambda f: (
                f.get("subscription") == "w"
                and f["event"]["type"] == "provider_response"
                and f["event"]["source"] == "/router"
            )
        )
    ours = [f for f in frames + client.backlog + watched if f.get("subscription") == "w"]
    seen = [(f["event"]["type"], f["event"]["source"], f["event"]["subject"]) for f in ours]
    assert ("provider_request", "/router", rid) in seen  # the intake
    assert ("provider_request", "/router/dispatch", f"{rid}#1") in seen  # the attempt
    assert seen[-1] == ("provider_response", "/router", rid)  # the final result


async def _websockets_scenario(url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with ws_connect(url, additional_headers=headers, proxy=None, open_timeout=10) as ws:
        hello = json.loads(await ws.recv())
        frames: list[dict[str, Any]] = []

        async def until(done: Any) -> dict[str, Any]:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                frames.append(frame)
                if done(frame):
                    return frame

        await ws.send(
            json.dumps({"type": "subscribe", "id": "s", "filter": {"types": ["provider_response"]}})
        )
        await until(lambda f: f["type"] == "ack")
        await ws.send(
            json.dumps({"type": "request", "id": 1, "messages": [{"role": "user", "content": "quick"}]})
        )
        await until(lambda f: f.get("request") == 1 and f["event"]["type"] == "provider_response")
        await ws.send(json.dumps({"type": "ping", "id": "barrier"}))  # what was published is now sent
        await until(lambda f: f["type"] == "ack" and f["id"] == "barrier")
        await ws.send(
            json.dumps({"type": "request", "id": 2, "messages": [{"role": "user", "content": "slow"}]})
        )
        ack = await until(lambda f: f["type"] == "ack" and f["id"] == 2)
        await until(lambda f: f.get("request") == 2)  # the first chunk
        await ws.send(json.dumps({"type": "cancel", "id": 3, "request_id": ack["request_id"]}))
        await until(lambda f: f.get("request") == 2 and f["event"]["type"] == "provider_error")
    return {"hello": hello, "frames": frames}


async def test_websockets_client_against_the_real_router() -> None:
    mock = MockProvider(chunk_delay=0.02, replies=["a quick answer", LONG])
    tokens = (TokenConfig(env="GW"),)
    async with (
        real_router(mock) as router,
        running_gateway(router, environ={"GW": "tok-123456"}, tokens=tokens) as gw,
    ):
        with trio.fail_after(30):
            result = await trio.to_thread.run_sync(asyncio.run, _websockets_scenario(gw.url, "tok-123456"))
    frames = result["frames"]
    first = [f for f in frames if f.get("request") == 1]
    assert "".join(f["event"]["data"].get("delta", "") for f in first[:-1]) == "a quick answer"
    assert first[-1]["event"]["data"]["content"] == "a quick answer"
    watched = [f for f in frames if f.get("subscription") == "s" and f["type"] == "signal"]
    assert any(
        f["event"]["source"] == "/router" and f["event"]["subject"] == first[-1]["event"]["subject"]
        for f in watched
    )
    second = [f for f in frames if f.get("request") == 2]
    assert second[-1]["event"]["data"]["kind"] == "cancelled"
    assert next(f for f in frames if f["type"] == "ack" and f["id"] == 3)["cancelled"] is True


async def test_full_stack_over_an_openai_wire_server_never_leaks_the_api_key() -> None:
    # gateway -> router -> OpenAI agent -> loopback OpenAI server, all real sockets. The upstream's first
    # answer is a 500 whose message echoes the key; the router retries; no frame may carry the key.
    key = "sk-gateway-e2e-0123456789abcdefghij"
    async with open_openai_server(api_key=key) as server:
        server.script.push(ScriptedReply(text="streamed through every layer"))
        server.inject(Fault(status=500, message=f"upstream exploded on {key}", path="/v1/chat/completions"))
        provider = ProviderConfig(
            name="gpt",
            kind="openai",
            base_url=server.base_url,
            api_key_env="GW_E2E_KEY",
            default_model="gpt-4o-mini",
        )
        config = Config(providers=(provider,))
        environ = {"GW_E2E_KEY": key}
        async with open_router(config, environ=environ) as router, running_gateway(router) as gateway:
            async with connect(gateway) as client:
                raw: list[str] = []

                async def collect_until(done: Any) -> None:
                    with trio.fail_after(20):
                        while True:
                            text = await client.ws.get_message()
                            assert isinstance(text, str)
                            raw.append(text)
                            if done(json.loads(text)):
                                return

                await client.send({"type": "subscribe", "id": "all"})
                hi = [{"role": "user", "content": "hi"}]
                await client.send({"type": "request", "id": "q", "messages": hi})
                await collect_until(lambda f: f.get("request") == "q" and is_terminal(f))
                await client.send({"type": "ping", "id": "barrier"})  # the rest of "all" comes first
                await collect_until(lambda f: f.get("id") == "barrier")
    frames = [json.loads(t) for t in raw]
    own = [f for f in frames if f.get("request") == "q"]
    assert own[-1]["event"]["data"]["content"] == "streamed through every layer"
    watched = [f for f in frames if f.get("subscription") == "all" and f["type"] == "signal"]
    errors = [f for f in watched if f["event"]["type"] == "provider_error"]
    assert errors and errors[0]["event"]["data"]["kind"] == "upstream_5xx"  # the first attempt, seen by "all"
    assert all(key not in text for text in raw)
    assert any("***" in json.dumps(f) for f in errors)  # the echo was redacted, not dropped


async def test_a_tokens_requests_carry_its_name_and_spend_its_budget() -> None:
    from duckagents.bus import Overflow
    from duckagents.config import GatewayConfig
    from duckagents.costs import Budget
    from duckagents.signals import ProviderRequest

    secret = "tok-alice-0123456789abcdef"
    # $1 per 1,000 output tokens; each answer is 2 tokens ($0.002); alice may spend $0.004 a day.
    tokens = (TokenConfig(env="ALICE_TOKEN", name="alice", budget=Budget(0.004, "day")),)
    provider = ProviderConfig(name="mock", kind="mock", cost_per_1k_input=0.0, cost_per_1k_output=1.0)
    config = Config(providers=(provider,), gateway=GatewayConfig(tokens=tokens))
    mock = MockProvider(replies=["abcdefgh"] * 3)
    environ = {"ALICE_TOKEN": secret}
    intakes = SignalFilter(types=frozenset({"provider_request"}))
    async with (
        open_router(config, providers={"mock": mock}) as router,
        running_gateway(router, environ=environ, tokens=tokens) as gateway,
        connect(gateway, token=secret) as client,
    ):
        with router.bus.subscribe(intakes, buffer=64, overflow=Overflow.DROP_OLDEST) as seen:
            terminals = []
            for k in range(3):
                frames = await client.request(f"q{k}", "hi", options={"max_tokens": 2})
                terminals.append(frames[-1]["event"]["data"])
            requests = []
            while True:
                try:
                    requests.append(seen.receive_nowait().data)
                except trio.WouldBlock:
                    break
        spend = await router.spend()
    assert [t.get("content") for t in terminals[:2]] == ["abcdefgh", "abcdefgh"]
    assert [t["usage"]["cost"] for t in terminals[:2]] == [0.002, 0.002]
    assert terminals[2]["kind"] == "budget_exceeded" and "token:alice" in terminals[2]["message"]
    assert mock.calls == 2  # the third never reached the provider
    assert {r.principal for r in requests if isinstance(r, ProviderRequest)} == {"alice"}  # never the token
    assert [(s.account, s.spent) for s in spend] == [("token:alice", 0.004)]
