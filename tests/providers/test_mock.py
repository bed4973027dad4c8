"""The mock provider: deterministic answers, scripted failures, seeded latency, streams and features."""

from __future__ import annotations

import contextlib

import pytest
import trio

from duckagents.errors import AgentFault, ConfigError, ErrorKind, ProviderError
from duckagents.messages import Features, FinishReason, ImagePart, Message, RequestOptions, ToolCall, ToolSpec
from duckagents.providers import Provider, StreamDelta, StreamEnd, StreamEvent, heuristic_token_count
from duckagents.providers._mock import Latency, MockProvider, MockReply, mock_answer
from duckagents.signals import ProviderRequest


def req(text: str = "hello", *, stream: bool = False, **options: object) -> ProviderRequest:
    return ProviderRequest("r1", (Message.user(text),), options=RequestOptions(stream=stream, **options))  # type: ignore[arg-type]


async def collect(provider: MockProvider, request: ProviderRequest) -> list[StreamEvent]:
    async with contextlib.aclosing(provider.stream(request)) as events:  # type: ignore[type-var]
        return [event async for event in events]


def test_implements_the_provider_protocol() -> None:
    assert isinstance(MockProvider(), Provider)


async def test_default_answer_is_a_friendly_deterministic_echo() -> None:
    provider = MockProvider()
    first = await provider.complete(req("hello"))
    second = await MockProvider().complete(req("hello"))
    assert first == second
    assert first.content == mock_answer("hello")
    assert "mock" in first.content and first.content.endswith("You said: hello")
    assert first.finish_reason is FinishReason.STOP
    assert first.usage.prompt_tokens == heuristic_token_count(req("hello").messages)
    assert first.usage.completion_tokens > 0
    assert provider.calls == 1 and provider.requests[-1].request_id == "r1"


async def test_scripted_replies_are_used_in_order_then_echo() -> None:
    provider = MockProvider(replies=["one", MockReply("two", finish_reason=FinishReason.LENGTH)])
    assert (await provider.complete(req())).content == "one"
    second = await provider.complete(req())
    assert (second.content, second.finish_reason) == ("two", FinishReason.LENGTH)
    assert (await provider.complete(req("x"))).content == mock_answer("x")


async def test_stream_chunks_are_paced_by_chunk_delay(autojump_clock: trio.testing.MockClock) -> None:
    provider = MockProvider(replies=["abcdefghij"], chunk_size=4, chunk_delay=0.5)
    times: list[float] = []
    pieces: list[str] = []
    start = trio.current_time()
    async with contextlib.aclosing(provider.stream(req(stream=True))) as events:  # type: ignore[type-var]
        async for event in events:
            times.append(trio.current_time() - start)
            if isinstance(event, StreamDelta):
                pieces.append(event.text)
            else:
                assert isinstance(event, StreamEnd)
                assert event.completion.content == "abcdefghij"
    assert pieces == ["abcd", "efgh", "ij"]
    assert times[:3] == [0.0, 0.5, 1.0]


async def test_fail_next_raises_the_kind_count_times_then_recovers() -> None:
    provider = MockProvider()
    provider.fail_next(ErrorKind.RATE_LIMITED, count=2, retry_after=7.0, status=429)
    for _ in range(2):
        with pytest.raises(ProviderError) as info:
            await provider.complete(req())
        assert info.value.kind is ErrorKind.RATE_LIMITED
        assert info.value.retry_after == 7.0 and info.value.status == 429
        assert info.value.retryable
    assert (await provider.complete(req("ok"))).content == mock_answer("ok")


async def test_mid_stream_failure_after_some_chunks() -> None:
    provider = MockProvider(replies=["0123456789"], chunk_size=2)
    provider.fail_next("upstream_5xx", after_chunks=2)
    seen: list[str] = []
    with pytest.raises(ProviderError) as info:
        async with contextlib.aclosing(provider.stream(req(stream=True))) as events:  # type: ignore[type-var]
            async for event in events:
                assert isinstance(event, StreamDelta)
                seen.append(event.text)
    assert info.value.kind is ErrorKind.UPSTREAM_5XX
    assert seen == ["01", "23"]


async def test_crash_next_raises_a_bug_not_a_provider_error() -> None:
    provider = MockProvider()
    provider.crash_next()
    with pytest.raises(RuntimeError, match="injected crash"):
        await provider.complete(req())
    await provider.complete(req())  # only once


async def test_crash_agent_next_raises_an_agent_fault() -> None:
    provider = MockProvider()
    provider.crash_agent_next(count=2)
    for _ in range(2):
        with pytest.raises(AgentFault, match="injected agent fault"):
            await provider.complete(req())
    await provider.complete(req())


async def test_a_call_cancelled_before_it_starts_leaves_the_scripted_outcome_to_the_next() -> None:
    # An attempt whose deadline passed while it queued is cancelled at its first schedule point: the
    # crash it would have met must still come (test_load counts that one restart).
    provider = MockProvider()
    provider.crash_agent_next()
    provider.fail_next(ErrorKind.UPSTREAM_5XX)
    with trio.CancelScope() as scope:
        scope.cancel()
        await provider.complete(req())
    assert scope.cancelled_caught
    with pytest.raises(AgentFault):
        await provider.complete(req())
    with pytest.raises(ProviderError) as info:
        await provider.complete(req())
    assert info.value.kind is ErrorKind.UPSTREAM_5XX


async def test_hang_ignores_cancellation_for_its_duration(autojump_clock: trio.testing.MockClock) -> None:
    provider = MockProvider()
    provider.hang_next(duration=100.0)
    start = trio.current_time()
    with trio.move_on_after(1.0) as scope:
        await provider.complete(req())
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(100.0)


async def test_seeded_uniform_latency_is_reproducible(autojump_clock: trio.testing.MockClock) -> None:
    async def delays(seed: int) -> list[float]:
        provider = MockProvider(latency=Latency("uniform", 0.1, 0.9), seed=seed)
        out = []
        for _ in range(5):
            start = trio.current_time()
            await provider.complete(req())
            out.append(trio.current_time() - start)
        return out

    first, again, other = await delays(1), await delays(1), await delays(2)
    assert first == pytest.approx(again, abs=1e-9)
    assert first != pytest.approx(other, abs=1e-3)
    assert all(0.1 <= d <= 0.9 for d in first)
    assert len(set(first)) > 1


async def test_fixed_latency(autojump_clock: trio.testing.MockClock) -> None:
    provider = MockProvider(latency=0.25)
    start = trio.current_time()
    await provider.complete(req())
    assert trio.current_time() - start == pytest.approx(0.25)


async def test_tool_call_replies_complete_and_stream() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    provider = MockProvider(replies=[MockReply(tool_calls=(call,)), MockReply("", tool_calls=(call,))])
    tools = (ToolSpec("get_weather"),)
    done = await provider.complete(req(tools=tools))
    assert done.tool_calls == (call,) and done.finish_reason is FinishReason.TOOL_CALLS
    events = await collect(provider, req(stream=True, tools=tools))
    deltas = [e.tool_call for e in events if isinstance(e, StreamDelta) and e.tool_call is not None]
    assert [(d.index, d.id, d.name, d.arguments) for d in deltas] == [
        (0, "call_1", "get_weather", call.arguments)
    ]
    assert isinstance(events[-1], StreamEnd) and events[-1].completion.tool_calls == (call,)


async def test_features_are_configurable_and_enforced() -> None:
    provider = MockProvider(
        features=Features(tools=False, vision=False, context_window=50),
        model_features={"big": Features(tools=True, vision=True, context_window=100_000)},
    )
    assert not provider.features().tools and provider.features("big").tools
    with pytest.raises(ProviderError) as info:
        await provider.complete(req(tools=(ToolSpec("f"),)))
    assert info.value.kind is ErrorKind.UNSUPPORTED and "tools" in info.value.message
    image = ProviderRequest("r", (Message.user("look", ImagePart(url="http://x/y.png")),))
    with pytest.raises(ProviderError, match="vision"):
        await provider.complete(image)
    with pytest.raises(ProviderError) as too_long:
        await provider.complete(req("word " * 400))
    assert too_long.value.kind is ErrorKind.CONTEXT_LENGTH
    big = ProviderRequest("r", (Message.user("look", ImagePart(url="http://x/y.png")),), model="big")
    assert (await provider.complete(big)).model == "big"


async def test_health_models_and_token_estimate() -> None:
    provider = MockProvider(models=("m1", "m2"), healthy=False)
    probe = await provider.health()
    assert not probe.ok and probe.detail["models"] == "m1,m2"
    assert [m.name for m in await provider.list_models()] == ["m1", "m2"]
    messages = (Message.system("be brief"), Message.user("hi"))
    count = await provider.estimate_tokens(messages)
    assert count.tokens == heuristic_token_count(messages) and count.exact


async def test_crash_on_crashes_calls_whose_prompt_contains_the_marker() -> None:
    provider = MockProvider.from_options({"crash_on": "BOOM"})
    with pytest.raises(AgentFault, match="asked the mock to crash"):  # the agent's fault: it crashes
        await provider.complete(req("please go BOOM now"))
    assert (await provider.complete(req("calm"))).content.endswith("You said: calm")
    with pytest.raises(ConfigError, match="crash_on"):
        MockProvider.from_options({"crash_on": ""})


def test_from_options_builds_a_scripted_provider() -> None:
    provider = MockProvider.from_options(
        {
            "replies": ["hi", {"text": "there", "chunk_size": 2}],
            "failures": [{"kind": "overloaded", "retry_after": 3}],
            "latency": {"kind": "uniform", "low": 0.1, "high": 0.2},
            "features": {"vision": False},
            "model_features": {"m2": {"tools": False}},
            "chunk_delay": 0.01,
            "seed": 7,
        },
        default_model="m1",
    )
    assert provider.default_model == "m1"
    assert provider.latency == Latency("uniform", 0.1, 0.2)
    assert not provider.features().vision and provider.features().tools
    assert not provider.features("m2").tools and not provider.features("m2").vision


async def test_from_options_failures_and_replies_take_effect() -> None:
    provider = MockProvider.from_options({"replies": ["hi"], "failures": [{"kind": "overloaded"}]})
    with pytest.raises(ProviderError) as info:
        await provider.complete(req())
    assert info.value.kind is ErrorKind.OVERLOADED
    assert (await provider.complete(req())).content == "hi"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"colour": "red"}, "unknown option"),
        ({"features": {"telepathy": True}}, "telepathy"),
        ({"failures": [{"kind": "nope"}]}, "failures"),
        ({"chunk_size": "big"}, "chunk_size"),
    ],
)
def test_from_options_rejects_bad_options_clearly(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        MockProvider.from_options(options)
