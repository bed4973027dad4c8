"""``watch()``, the client behind ``duckagents watch``, against a live gateway; and its line format."""

from __future__ import annotations

import io
import json

import pytest
import trio

from duckagents.bus import SignalBus
from duckagents.codec import signal_to_dict
from duckagents.config import TokenConfig
from duckagents.errors import ErrorKind, GatewayError
from duckagents.gateway import Gateway, format_signal, watch
from duckagents.gateway._client import format_event
from duckagents.messages import Usage
from duckagents.signals import (
    ProgressEvent,
    ProviderChunk,
    ProviderErrorData,
    ProviderResponse,
    ProviderStatus,
    Signal,
    SupervisorEvent,
    make_signal,
)

from .support import eventually, fake_router, running_gateway

SIGNALS = [
    make_signal(ProviderChunk("r1", "mock", 0, "Hello"), "/agents/mock"),
    make_signal(ProviderStatus("mock", 0.75, "closed"), "/agents/mock"),
    make_signal(
        ProviderResponse("r1", "mock", "mock-1", "Hello world", usage=Usage(3, 2), latency=0.25), "/router"
    ),
    make_signal(
        ProviderErrorData("r2", ErrorKind.RATE_LIMITED, "slow down", provider="openai", upstream_status=429),
        "/r",
    ),
    make_signal(SupervisorEvent("root", "agent:mock", "restarted", "crash"), "/sup"),
]


async def run_watch(
    gateway: Gateway, bus: SignalBus, publish: list[Signal], **kwargs: object
) -> tuple[int, str]:
    """Start watch(), wait until it subscribed, publish, and return what it printed."""
    out = io.StringIO()
    result: list[int] = []

    async def watcher() -> None:
        result.append(await watch(gateway.url, out=out, **kwargs))  # type: ignore[arg-type]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher)
            await eventually(lambda: gateway.stats().subscriptions == 1)
            for signal in publish:
                await bus.publish(signal)
    return result[0], out.getvalue()


async def test_watch_prints_one_compact_line_per_signal() -> None:
    async with fake_router() as router, running_gateway(router) as gateway:
        count, text = await run_watch(gateway, router.bus, SIGNALS, limit=len(SIGNALS))
    lines = text.splitlines()
    assert count == len(SIGNALS) == len(lines)
    assert lines == [format_signal(s) for s in SIGNALS]
    assert "provider_chunk" in lines[0] and "mock" in lines[0] and "r1" in lines[0] and '"Hello"' in lines[0]
    assert "health=0.75" in lines[1] and "breaker=closed" in lines[1]
    assert "stop 5 tok 250 ms" in lines[2]
    assert "rate_limited HTTP 429: slow down" in lines[3]
    assert "root/agent:mock restarted crash" in lines[4]


async def test_watch_json_lines_are_the_cloudevents_for_jq() -> None:
    async with fake_router() as router, running_gateway(router) as gateway:
        count, text = await run_watch(gateway, router.bus, SIGNALS, json_lines=True, limit=len(SIGNALS))
    assert count == len(SIGNALS)
    assert [json.loads(line) for line in text.splitlines()] == [signal_to_dict(s) for s in SIGNALS]


async def test_watch_filters_on_the_server() -> None:
    async with fake_router() as router, running_gateway(router) as gateway:
        count, text = await run_watch(
            gateway,
            router.bus,
            SIGNALS,
            types=["provider_chunk", "provider_error"],
            providers=["openai"],
            limit=1,
            json_lines=True,
        )
    assert count == 1
    assert json.loads(text)["type"] == "provider_error" and json.loads(text)["provider"] == "openai"


async def test_watch_with_token_and_wrong_token() -> None:
    tokens = (TokenConfig(env="W", scopes=("subscribe",)),)
    async with (
        fake_router() as router,
        running_gateway(router, environ={"W": "watch-token-123"}, tokens=tokens) as gw,
    ):
        count, _ = await run_watch(gw, router.bus, SIGNALS[:1], token="watch-token-123", limit=1)
        assert count == 1
        with pytest.raises(GatewayError, match="HTTP 401") as info:
            await watch(gw.url + "?token=wrong-secret-value", out=io.StringIO(), limit=1)
    assert "wrong-secret-value" not in str(info.value)
    assert "missing or wrong token" in str(info.value)


async def test_watch_returns_when_the_gateway_shuts_down() -> None:
    out = io.StringIO()
    result: list[int] = []
    async with fake_router() as router:
        async with running_gateway(router) as gateway, trio.open_nursery() as nursery:

            async def watcher() -> None:
                result.append(await watch(gateway.url, out=out))

            nursery.start_soon(watcher)
            await eventually(lambda: gateway.stats().subscriptions == 1)
            await router.bus.publish(SIGNALS[0])
            await eventually(lambda: bool(out.getvalue()))
            await gateway.aclose()  # 1001 to every client: watch ends normally
    assert result == [1]


async def test_watch_reports_an_unreachable_gateway() -> None:
    with pytest.raises(GatewayError, match="cannot connect"):
        await watch("ws://127.0.0.1:1/", out=io.StringIO())


def test_format_event_tolerates_unknown_signal_types() -> None:
    line = format_event({"type": "from_the_future", "time": "2030-01-01T10:11:12.345678Z", "data": {"x": 1}})
    assert "from_the_future" in line and '{"x":1}' in line and "10:11:12.345" in line
    progress = make_signal(ProgressEvent("ollama", "pull llama3", "downloading", 5, 10), "/agents/ollama")
    assert "pull llama3 downloading 5/10" in format_signal(progress)
