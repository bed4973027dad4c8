"""The Anthropic agent over a real loopback Messages API server: window fitting and trimming, image
validation, refusals (also through the router), per-family limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from duckagents.agents import agent_class
from duckagents.agents._anthropic import AnthropicAgent, default_limits_for, trim_units
from duckagents.app import open_router
from duckagents.bus import SignalBus
from duckagents.config import Config, ProviderConfig
from duckagents.errors import ConfigError, ErrorKind, ProviderError
from duckagents.messages import FinishReason, ImagePart, Message, ToolCall
from duckagents.providers import AnthropicProvider, MockProvider, heuristic_token_count
from duckagents.resilience import RateLimits
from duckagents.signals import ProviderErrorData, ProviderRequest, ProviderResponse
from duckagents.testing import AnthropicServer, ScriptedReply, open_anthropic_server
from tests.helpers import Recorder, request, running_agent, send

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
SYSTEM = "You are a terse assistant."


def config(**options: Any) -> ProviderConfig:
    return ProviderConfig(name="claude", kind="anthropic", options=options)


@asynccontextmanager
async def anthropic_agent(
    server: AnthropicServer, **options: Any
) -> AsyncIterator[tuple[AnthropicAgent, SignalBus, Recorder]]:
    async with (
        AnthropicProvider(base_url=server.url, api_key="sk-ant-test-0123456789") as provider,
        running_agent(config(**options), provider, agent_class=AnthropicAgent, health_interval=3600) as (
            agent, bus, rec,
        ),
    ):
        yield cast(AnthropicAgent, agent), bus, rec


async def outcome(rec: Recorder, request_id: str) -> ProviderResponse | ProviderErrorData:
    with trio.fail_after(10):  # a hang guard only
        [signal] = await rec.wait_for(
            lambda s: s.is_terminal and getattr(s.data, "request_id", None) == request_id
        )
    return cast(ProviderResponse | ProviderErrorData, signal.data)


def sent(server: AnthropicServer, path: str = "/v1/messages") -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path == path]


def words(n: int, word: str) -> str:
    return " ".join([word] * n)


# system 5 words + 12 + 12 | 12 + 3 (tool_use "lookup {...}") + 6 + 6 | last 5: 61 words (server tokens)
CONVERSATION = (
    Message.system(SYSTEM),
    Message.user(words(12, "old")),
    Message.assistant(words(12, "reply")),
    Message.user(words(12, "middle")),
    Message.assistant("", (ToolCall("tu_1", "lookup", '{"q": "x"}'),)),
    Message.tool_result("tu_1", words(6, "found")),
    Message.assistant(words(6, "so")),
    Message.user("final question please answer now"),
)


def test_registry_serves_anthropic_with_this_agent() -> None:
    assert agent_class("anthropic") is AnthropicAgent


async def test_default_limits_per_family_and_bad_option() -> None:
    assert default_limits_for("claude-sonnet-4-6") == RateLimits(50, 38_000, 60.0)
    assert default_limits_for("claude-haiku-4-5") == RateLimits(50, 60_000, 60.0)
    assert default_limits_for("claude-3-7-sonnet-latest") == RateLimits(50, 28_000, 60.0)
    assert default_limits_for("not-claude") == RateLimits()
    async with AnthropicProvider(base_url="http://127.0.0.1:9") as provider:
        assert AnthropicAgent(config(), SignalBus(), provider).limits == RateLimits(50, 38_000, 60.0)
        # The config refuses it (ValueError), and so does the agent given a config that skipped the check.
        with pytest.raises(ValueError, match="context_window"):
            config(context_window="big")
        unchecked = attrs.evolve(config(), options={})
        object.__setattr__(unchecked, "options", {"context_window": "big"})
        with pytest.raises(ConfigError, match="context_window"):
            AnthropicAgent(unchecked, SignalBus(), provider)


def test_trim_units_keep_tool_use_with_its_result() -> None:
    units, tail = trim_units(CONVERSATION)
    assert units == [[1, 2], [3, 4, 5, 6]] and tail == 7  # the system prompt (0) is in no unit


@pytest.mark.parametrize(
    ("window", "kept_user_texts"),
    [
        (60, [words(12, "middle"), "final question please answer now"]),  # one turn dropped is enough
        (30, ["final question please answer now"]),  # both old turns must go
    ],
)
async def test_trimming_keeps_system_and_last_user_turn_and_upstream_gets_the_trimmed_list(
    window: int, kept_user_texts: list[str]
) -> None:
    async with open_anthropic_server() as server, anthropic_agent(server, context_window=window) as (
        agent, bus, rec,
    ):
        trimmable = request("t", provider="claude", messages=CONVERSATION, max_tokens=10, allow_trim=True)
        await send(bus, trimmable)
        assert isinstance(await outcome(rec, "t"), ProviderResponse)
        [body] = sent(server)
        assert body["system"] == SYSTEM
        user_texts = [
            block["text"] for turn in body["messages"] if turn["role"] == "user"
            for block in turn["content"] if block["type"] == "text"
        ]
        assert user_texts == kept_user_texts
        blocks = [b for turn in body["messages"] for b in turn["content"]]
        uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        assert uses == results  # both kept or both dropped, never one without the other
        assert server.count_tokens(body) + 10 <= window
        assert sent(server, "/v1/messages/count_tokens")  # the exact counter decided
        assert agent.trimmed == 1


async def test_too_long_without_allow_trim_fails_fast_with_context_length() -> None:
    async with open_anthropic_server() as server, anthropic_agent(server, context_window=60) as (_, bus, rec):
        await send(bus, request("n", provider="claude", messages=CONVERSATION, max_tokens=10))
        failure = await outcome(rec, "n")
        assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.CONTEXT_LENGTH
        assert "60-token context window" in failure.message and "allow_trim" in failure.message
        assert sent(server) == []


async def test_last_turn_alone_too_long_fails_even_with_trimming() -> None:
    messages = (*CONVERSATION[:-1], Message.user(words(40, "huge")))
    async with open_anthropic_server() as server, anthropic_agent(server, context_window=30) as (_, bus, rec):
        await send(bus, request("h", provider="claude", messages=messages, max_tokens=10, allow_trim=True))
        failure = await outcome(rec, "h")
        assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.CONTEXT_LENGTH
        assert "last user turn" in failure.message and sent(server) == []


async def test_a_request_that_fits_is_sent_whole() -> None:
    async with open_anthropic_server() as server, anthropic_agent(server) as (agent, bus, rec):
        await send(bus, request("s", provider="claude", messages=CONVERSATION, allow_trim=True))
        assert isinstance(await outcome(rec, "s"), ProviderResponse)
        [body] = sent(server)
        assert len(body["messages"]) == 7  # every turn went out (the tool result as a user turn)
        assert agent.trimmed == 0


def image_request(request_id: str, *images: ImagePart) -> ProviderRequest:
    return request(request_id, provider="claude", messages=[Message.user("what is in it?", *images)])


@pytest.mark.parametrize(
    ("images", "fragment"),
    [
        ((ImagePart("image/bmp", PNG),), "media type 'image/bmp'"),
        ((ImagePart("image/png", "A" * (7 * 1024 * 1024)),), "the limit is 5242880 bytes"),
        (tuple(ImagePart("image/png", PNG) for _ in range(101)), "at most 100"),
    ],
)
async def test_bad_images_fail_fast_with_invalid_request(
    images: tuple[ImagePart, ...], fragment: str
) -> None:
    async with open_anthropic_server() as server, anthropic_agent(server) as (agent, bus, rec):
        await send(bus, image_request("i", *images))
        failure = await outcome(rec, "i")
        assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.INVALID_REQUEST
        assert fragment in failure.message
        assert sent(server) == [] and agent.metrics.snapshot().total_requests == 0


async def test_a_good_image_and_json_mode() -> None:
    async with open_anthropic_server() as server, anthropic_agent(server) as (_, bus, rec):
        await send(bus, image_request("ok", ImagePart("image/png", PNG)))
        assert isinstance(await outcome(rec, "ok"), ProviderResponse)
        [body] = sent(server)
        assert body["messages"][0]["content"][1]["source"]["media_type"] == "image/png"
        await send(bus, request("j", "json please", provider="claude", response_format="json_object"))
        failure = await outcome(rec, "j")
        assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.UNSUPPORTED
        assert len(sent(server)) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_refusal_is_a_distinct_outcome(stream: bool) -> None:
    async with open_anthropic_server() as server, anthropic_agent(server) as (agent, bus, rec):
        server.script.push(ScriptedReply(text="I can't help with that.", finish_reason=FinishReason.REFUSAL))
        await send(bus, request("r", "something bad", provider="claude", stream=stream))
        response = await outcome(rec, "r")
        assert isinstance(response, ProviderResponse)
        assert response.finish_reason is FinishReason.REFUSAL
        assert response.content == "I can't help with that."
        assert agent.refusals == 1 and (await agent.status()).detail["refusals"] == "1"


async def test_refusal_through_the_router_is_final_and_never_retried_elsewhere() -> None:
    backup = MockProvider()
    async with open_anthropic_server() as server:
        server.script.push(ScriptedReply(text="No.", finish_reason=FinishReason.REFUSAL))
        cfg = Config(
            providers=(
                ProviderConfig(name="claude", kind="anthropic", base_url=server.url, priority=0),
                ProviderConfig(name="backup", kind="mock", priority=1),
            )
        )
        async with open_router(cfg, providers={"backup": backup}) as router:
            with trio.fail_after(10):
                response = await router.complete("something bad")
        assert response.provider == "claude" and response.finish_reason is FinishReason.REFUSAL
        assert response.attempt == 1 and backup.calls == 0
        assert len(sent(server)) == 1


async def test_prepare_leaves_a_fitting_request_identical() -> None:
    async with open_anthropic_server() as server, AnthropicProvider(base_url=server.url) as provider:
        agent = AnthropicAgent(config(context_window=1000), SignalBus(), provider)
        req = request("p", messages=CONVERSATION, max_tokens=10, allow_trim=True)
        assert await agent.prepare(req) is req
        assert sent(server, "/v1/messages/count_tokens") == []  # surely fits: not even counted
        assert agent.features().context_window == 1000
        trimmed = await agent.prepare(attrs.evolve(req, options=attrs.evolve(req.options, max_tokens=980)))
        assert trimmed.messages[0] == CONVERSATION[0] and trimmed.messages[-1] == CONVERSATION[-1]


# A turn: (user words, assistant words, with a tool call?)
TURNS = st.lists(st.tuples(st.integers(1, 30), st.integers(0, 30), st.booleans()), max_size=6)


def conversation(turns: list[tuple[int, int, bool]], system: bool, last: int) -> tuple[Message, ...]:
    messages = [Message.system(words(5, "rules"))] if system else []
    for i, (asked, answered, tool) in enumerate(turns):
        messages.append(Message.user(words(asked, f"q{i}")))
        if tool:
            messages.append(Message.assistant("", (ToolCall(f"t{i}", "lookup", "{}"),)))
            messages.append(Message.tool_result(f"t{i}", words(3, "found")))
        messages.append(Message.assistant(words(answered, f"a{i}")))
    messages.append(Message.user(words(last, "now")))
    return tuple(messages)


@settings(max_examples=60, deadline=None)
@given(turns=TURNS, system=st.booleans(), last=st.integers(1, 40), window=st.integers(40, 400))
async def test_trimming_invariants(turns: list[tuple[int, int, bool]], system: bool, last: int,
                                   window: int) -> None:
    messages = conversation(turns, system, last)
    agent = AnthropicAgent(config(context_window=window), SignalBus(), MockProvider())
    budget = window - 10  # max_tokens
    units, tail = trim_units(messages)
    try:
        prepared = await agent.prepare(request("p", messages=messages, max_tokens=10, allow_trim=True))
    except ProviderError as exc:
        assert exc.kind is ErrorKind.CONTEXT_LENGTH
        kept = [m for i, m in enumerate(messages) if i >= tail or m.role == "system"]
        assert heuristic_token_count(kept) > budget  # not even the protected part fits
        return
    trimmed = prepared.messages
    assert heuristic_token_count(trimmed) <= budget
    assert trimmed[-(len(messages) - tail):] == messages[tail:]  # the last user turn and after, intact
    assert [m for m in trimmed if m.role == "system"] == [m for m in messages if m.role == "system"]
    called = {c.id for m in trimmed for c in m.tool_calls}
    assert all(m.tool_call_id in called for m in trimmed if m.role == "tool")
    dropped = len(messages) - len(trimmed)
    removed = [len(u) for u in units]
    k = next(k for k in range(len(units) + 1) if sum(removed[:k]) == dropped)  # whole oldest turns only
    if k:  # and no more than needed: keeping one more turn would not fit
        one_more = [m for i, m in enumerate(messages) if i not in {j for u in units[: k - 1] for j in u}]
        assert heuristic_token_count(one_more) > budget


async def test_router_sends_a_trimmable_request_to_the_agent_that_can_trim_it() -> None:
    """The router checks the window against what trimming must keep, not the whole history."""
    async with open_anthropic_server() as server:
        cfg = Config(
            providers=(
                ProviderConfig(
                    name="claude", kind="anthropic", base_url=server.url, options={"context_window": 60}
                ),
            )
        )
        async with open_router(cfg) as router:
            with trio.fail_after(10):
                with pytest.raises(ProviderError) as info:
                    await router.complete(list(CONVERSATION), max_tokens=10)
                response = await router.complete(list(CONVERSATION), max_tokens=10, allow_trim=True)
        assert info.value.kind is ErrorKind.NO_PROVIDER and "context window" in info.value.message
        assert response.provider == "claude"
        [body] = sent(server)
        assert body["system"] == SYSTEM and len(body["messages"]) < len(CONVERSATION) - 1
        assert server.count_tokens(body) + 10 <= 60
