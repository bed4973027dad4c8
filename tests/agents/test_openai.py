"""The OpenAI agent over a real loopback OpenAI server: limits, model rules, fail-fast, streaming tools."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import pytest
import trio

from duckagents.agents import agent_class
from duckagents.agents._openai import OpenAIAgent, default_limits_for
from duckagents.bus import SignalBus
from duckagents.config import ProviderConfig
from duckagents.errors import ErrorKind
from duckagents.messages import FinishReason, ImagePart, Message, ToolCall, ToolSpec
from duckagents.providers import OpenAIProvider
from duckagents.resilience import RateLimits
from duckagents.signals import ProviderChunk, ProviderErrorData, ProviderRequest, ProviderResponse
from duckagents.testing import OpenAIServer, ScriptedReply, open_openai_server
from tests.helpers import Recorder, request, running_agent, send

KEY = "sk-test-agent-0123456789abcdef"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def config(**kwargs: Any) -> ProviderConfig:
    return ProviderConfig(name="oa", kind="openai", **{"default_model": "gpt-4o-mini", **kwargs})


@asynccontextmanager
async def openai_agent(
    server: OpenAIServer, cfg: ProviderConfig | None = None
) -> AsyncIterator[tuple[OpenAIAgent, SignalBus, Recorder]]:
    async with (
        OpenAIProvider(base_url=server.base_url, api_key=KEY, default_model="gpt-4o-mini") as provider,
        running_agent(cfg or config(), provider, agent_class=OpenAIAgent, health_interval=3600) as (
            agent, bus, rec,
        ),
    ):
        yield cast(OpenAIAgent, agent), bus, rec


async def outcome(rec: Recorder, request_id: str) -> ProviderResponse | ProviderErrorData:
    with trio.fail_after(10):  # a hang guard only
        [signal] = await rec.wait_for(
            lambda s: s.is_terminal and getattr(s.data, "request_id", None) == request_id
        )
    return cast(ProviderResponse | ProviderErrorData, signal.data)


def chat_bodies(server: OpenAIServer) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path == "/v1/chat/completions"]


def on(model: str, req: ProviderRequest) -> ProviderRequest:
    return attrs.evolve(req, model=model)


def test_registry_serves_openai_with_this_agent() -> None:
    assert agent_class("openai") is OpenAIAgent


async def test_default_limits_per_family_overridden_by_config() -> None:
    assert default_limits_for("gpt-4o-2024-08-06") == RateLimits(500, 30_000, 60.0)
    assert default_limits_for("gpt-4o-mini") == RateLimits(500, 200_000, 60.0)  # longest prefix wins
    assert default_limits_for("ft:gpt-4o-mini:acme::abc123") == RateLimits(500, 200_000, 60.0)
    assert default_limits_for("o3-mini") == RateLimits(1_000, 100_000, 60.0)
    assert default_limits_for("my-finetuned-llama") == RateLimits()  # unknown: no guess
    async with OpenAIProvider(base_url="http://127.0.0.1:9/v1") as provider:
        bus = SignalBus()
        assert OpenAIAgent(config(), bus, provider).limits == RateLimits(500, 200_000, 60.0)
        # A config limit replaces its dimension only; the other keeps the family default.
        limited = OpenAIAgent(config(limits=RateLimits(requests=7)), bus, provider)
        assert limited.limits == RateLimits(7, 200_000, 60.0)


async def test_built_in_limits_hold_only_for_the_official_host_elsewhere_the_upstream_states_them() -> None:
    from duckagents.testing import OpenAIRateLimits

    elsewhere = config(base_url="http://127.0.0.1:9/v1")
    async with OpenAIProvider(base_url="http://127.0.0.1:9/v1") as provider:
        bus = SignalBus()
        # An OpenAI-compatible server serving a model named gpt-4o-mini is not held to OpenAI's tier 1.
        assert OpenAIAgent(elsewhere, bus, provider).limits == RateLimits()
        # Configured limits always apply.
        limited = OpenAIAgent(attrs.evolve(elsewhere, limits=RateLimits(requests=7)), bus, provider)
        assert limited.limits == RateLimits(requests=7)
    # No client-side limit until the upstream's headers give one; then that one.
    headers = OpenAIRateLimits(limit_requests=120, limit_tokens=40_000)
    async with open_openai_server(api_key=KEY, rate_limits=headers) as server:
        local = config(base_url=server.base_url)
        async with openai_agent(server, local) as (agent, bus, rec):
            assert agent.limits == RateLimits()
            await send(bus, request("r", "hi", provider="oa"))
            assert isinstance(await outcome(rec, "r"), ProviderResponse)
            assert agent.limits == RateLimits(requests=120, tokens=40_000, period=60.0)
            assert agent.limiter.headroom(trio.current_time()).requests == pytest.approx(119, abs=1)


async def test_reasoning_model_gets_max_completion_tokens_and_no_sampling_on_the_wire() -> None:
    async with open_openai_server(api_key=KEY, models=None) as server, openai_agent(server) as (_, bus, rec):
        options: dict[str, Any] = {"max_tokens": 50, "temperature": 0.3, "top_p": 0.9}
        await send(bus, on("o3-mini", request("r", "think hard", provider="oa", **options)))
        assert isinstance(await outcome(rec, "r"), ProviderResponse)
        await send(bus, on("gpt-4o", request("g", "be creative", provider="oa", **options)))
        assert isinstance(await outcome(rec, "g"), ProviderResponse)
        reasoning, classic = chat_bodies(server)
        assert reasoning["model"] == "o3-mini" and reasoning["max_completion_tokens"] == 50
        assert not {"max_tokens", "temperature", "top_p"} & reasoning.keys()
        # The same options on a classic model go out unchanged.
        assert (classic["max_tokens"], classic["temperature"], classic["top_p"]) == (50, 0.3, 0.9)


async def test_prepare_drops_sampling_and_caps_max_tokens() -> None:
    async with OpenAIProvider(base_url="http://127.0.0.1:9/v1") as provider:
        agent = OpenAIAgent(config(), SignalBus(), provider)
        prepared = await agent.prepare(on("o4-mini", request("p", temperature=0.5, top_p=0.5, max_tokens=10)))
        assert (prepared.options.temperature, prepared.options.top_p, prepared.options.max_tokens) == (
            None, None, 10,
        )
        capped = await agent.prepare(on("gpt-4", request("c", max_tokens=100_000)))
        assert capped.options.max_tokens == 8_192  # gpt-4's output limit
        untouched = request("u", temperature=0.7)
        assert await agent.prepare(untouched) is untouched


@pytest.mark.parametrize(
    ("model", "req", "missing"),
    [
        ("o3-mini", request("v", messages=[Message.user("what is this?", ImagePart("image/png", PNG))]),
         "vision"),
        ("o1-mini", request("t", tools=(ToolSpec("lookup"),)), "tools"),
        ("gpt-4", request("j", "answer in json", response_format="json_object"), "json_mode"),
        ("o1-preview", request("s", messages=[Message.system("be brief"), Message.user("hi")]),
         "system_prompt"),
        ("gpt-3.5-turbo", attrs.evolve(request("r"), required_features=("vision",)), "vision"),
    ],
)
async def test_unsupported_feature_fails_fast_without_an_upstream_call(
    model: str, req: ProviderRequest, missing: str
) -> None:
    async with open_openai_server(api_key=KEY, models=None) as server, openai_agent(server) as (
        agent, bus, rec,
    ):
        await send(bus, on(model, attrs.evolve(req, provider="oa")))
        failure = await outcome(rec, req.request_id)
        assert isinstance(failure, ProviderErrorData)
        assert failure.kind is ErrorKind.UNSUPPORTED and not failure.retryable
        assert missing in failure.message and model in failure.message and failure.model == model
        assert chat_bodies(server) == []
        assert agent.metrics.snapshot().total_requests == 0  # never reached the limiter or breaker


async def test_unknown_model_is_not_failed_on_a_guess() -> None:
    # An OpenAI-compatible server's model: its features are unknown, so the upstream decides.
    async with open_openai_server(api_key=KEY, models=None) as server, openai_agent(server) as (_, bus, rec):
        await send(bus, on("local-llama", request("x", provider="oa", tools=(ToolSpec("lookup"),))))
        assert isinstance(await outcome(rec, "x"), ProviderResponse)
        [body] = chat_bodies(server)
        assert body["model"] == "local-llama" and body["tools"][0]["function"]["name"] == "lookup"


async def test_streamed_function_call_through_the_agent() -> None:
    call = ToolCall("call_7", "get_weather", json.dumps({"city": "Paris", "unit": "celsius"}))
    async with open_openai_server(api_key=KEY, models=None) as server, openai_agent(server) as (_, bus, rec):
        server.script.push(ScriptedReply(text="Checking.", tool_calls=(call,), chunk_size=6))
        tools = (ToolSpec("get_weather", "Weather by city", {"type": "object", "properties": {}}),)
        await send(bus, request("f", "weather in Paris?", provider="oa", stream=True, tools=tools,
                                tool_choice="auto"))
        response = await outcome(rec, "f")
        assert isinstance(response, ProviderResponse)
        assert response.tool_calls == (call,) and response.finish_reason is FinishReason.TOOL_CALLS
        assert response.content == "Checking." and response.time_to_first_chunk is not None
        chunks = [cast(ProviderChunk, s.data) for s in rec.of("provider_chunk")]
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert "".join(c.delta for c in chunks) == "Checking."
        fragments = [c.tool_call for c in chunks if c.tool_call is not None]
        assert fragments[0].id == "call_7" and fragments[0].name == "get_weather"
        assert "".join(f.arguments for f in fragments) == call.arguments
        [body] = chat_bodies(server)
        assert body["stream"] is True and body["tool_choice"] == "auto"
        assert all(KEY not in repr(s) for s in rec.signals)
