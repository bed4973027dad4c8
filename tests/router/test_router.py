"""The router over a real supervision tree of mock agents: strategies, failover, retries, crashes, hangs,
cancellation, shutdown, and exactly one terminal signal per request signal."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import trio
import trio.testing

from duckagents.app import open_tree
from duckagents.bus import SignalBus
from duckagents.config import Config, ModelConfig
from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import Features, FinishReason, ImagePart, Message, ToolSpec
from duckagents.providers import Completion, MockProvider, MockReply
from duckagents.resilience import BreakerConfig
from duckagents.router import (
    DISPATCH,
    SOURCE,
    Candidate,
    CheapestStrategy,
    LeastBusyStrategy,
    LowestLatencyStrategy,
    PriorityStrategy,
    RequestShape,
    RoundRobinStrategy,
    is_final,
    make_strategy,
)
from duckagents.signals import ProviderErrorData, ProviderRequest, ProviderResponse, Signal
from tests.helpers import Recorder, assert_one_terminal_per_request, mock_config, running_tree

TOOLS = (ToolSpec("lookup"),)

# --- strategies, pure ------------------------------------------------------------------------------


def cands(*specs: dict[str, object]) -> list[Candidate]:
    return [Candidate(name=f"c{i}", order=i, **spec) for i, spec in enumerate(specs)]  # type: ignore[arg-type]


def names(ranked: list[Candidate]) -> list[str]:
    return [c.name for c in ranked]


def test_priority_ranks_lower_priority_first_then_config_order() -> None:
    ranked = PriorityStrategy().rank(cands({"priority": 5}, {"priority": 1}, {"priority": 1}), RequestShape())
    assert names(ranked) == ["c1", "c2", "c0"]


def test_round_robin_rotates_one_step_per_call() -> None:
    strategy = RoundRobinStrategy()
    pool = cands({}, {}, {})
    firsts = [strategy.rank(pool, RequestShape())[0].name for _ in range(4)]
    assert firsts == ["c0", "c1", "c2", "c0"]
    assert names(strategy.rank(pool, RequestShape())) == ["c1", "c2", "c0"]


def test_round_robin_is_weighted_and_spreads_the_heavier_agent_out() -> None:
    strategy = RoundRobinStrategy()
    pool = [Candidate(name="big", order=0, weight=3.0), Candidate(name="small", order=1, weight=1.0)]
    firsts = [strategy.rank(pool, RequestShape())[0].name for _ in range(8)]
    assert firsts == ["big", "big", "small", "big"] * 2  # 3:1, never four in a row
    # Over any candidate set, each agent gets its weight's share.
    strategy = RoundRobinStrategy()
    trio_pool = cands({"weight": 1.0}, {"weight": 2.0}, {"weight": 5.0})
    counts = Counter(strategy.rank(trio_pool, RequestShape())[0].name for _ in range(800))
    assert counts == {"c0": 100, "c1": 200, "c2": 500}


def test_the_latency_strategy_follows_recent_latency_not_the_all_time_mean() -> None:
    from duckagents.router._agent_view import LATENCY_ALPHA, AgentView

    view = AgentView(mock_config("a"), 0)
    for _ in range(50):  # a long fast history...
        view.observe_terminal(ProviderResponse("r", "a", "m", latency=0.1), 0.0)
    for _ in range(5):  # ...then it turned slow
        view.observe_terminal(ProviderResponse("r", "a", "m", latency=2.0), 0.0)
    expected = 2.0 - 1.9 * (1 - LATENCY_ALPHA) ** 5
    assert view.latency == pytest.approx(expected) and view.latency > 1.5  # the mean would be ~0.27
    other = AgentView(mock_config("b"), 1)
    other.observe_terminal(ProviderResponse("r", "b", "m", latency=0.5), 0.0)
    ranked = LowestLatencyStrategy().rank([view.candidate(None), other.candidate(None)], RequestShape())
    assert names(ranked) == ["b", "a"]


def test_least_busy_ranks_by_active_then_priority() -> None:
    ranked = LeastBusyStrategy().rank(
        cands({"active": 3}, {"active": 1, "priority": 2}, {"active": 1, "priority": 1}), RequestShape()
    )
    assert names(ranked) == ["c2", "c1", "c0"]


def test_lowest_latency_tries_unmeasured_first_then_fastest() -> None:
    ranked = LowestLatencyStrategy().rank(
        cands({"latency": 0.5}, {"latency": None}, {"latency": 0.1}), RequestShape()
    )
    assert names(ranked) == ["c1", "c2", "c0"]


def test_cheapest_uses_input_estimate_and_output_budget() -> None:
    pool = cands(
        {"cost_per_1k_input": 1.0, "cost_per_1k_output": 10.0},  # cheap in, dear out
        {"cost_per_1k_input": 5.0, "cost_per_1k_output": 1.0},
    )
    # Long prompt, short answer: c0 = 10*1 + 0.01*10 = 10.1 vs c1 = 50 + 0.01 -> c0.
    assert names(CheapestStrategy().rank(pool, RequestShape(10_000, max_tokens=10)))[0] == "c0"
    # Short prompt, long answer: c0 = 0.01 + 40 vs c1 = 0.05 + 4 -> c1.
    assert names(CheapestStrategy().rank(pool, RequestShape(10, max_tokens=4000)))[0] == "c1"


def test_make_strategy_knows_every_configured_name() -> None:
    for name in ("priority", "round_robin", "least_busy", "lowest_latency", "cheapest"):
        assert make_strategy(name).name == name
    with pytest.raises(ValueError, match="known"):
        make_strategy("random")


# --- strategies through the router -----------------------------------------------------------------


async def test_priority_strategy_picks_the_preferred_agent(autojump_clock: object) -> None:
    async with running_tree(mock_config("a", priority=5), mock_config("b", priority=1)) as (tree, _):
        for _ in range(3):
            assert (await tree.router.complete("hi")).provider == "b"


async def test_round_robin_alternates(autojump_clock: object) -> None:
    async with running_tree(mock_config("a"), mock_config("b"), strategy="round_robin") as (tree, _):
        served = [(await tree.router.complete("hi")).provider for _ in range(4)]
    assert served == ["a", "b", "a", "b"]


async def test_least_busy_spreads_concurrent_requests(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(latency=10.0), "b": MockProvider(latency=10.0)}
    async with running_tree(mock_config("a"), mock_config("b"), mocks=mocks, strategy="least_busy") as (
        tree,
        _,
    ):
        served: list[str] = []

        async def one() -> None:
            served.append((await tree.router.complete("hi")).provider)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
    assert sorted(served) == ["a", "a", "b", "b"]
    assert mocks["a"].calls == mocks["b"].calls == 2


async def test_lowest_latency_measures_then_prefers_the_fast_agent(autojump_clock: object) -> None:
    mocks = {"slow": MockProvider(latency=2.0), "fast": MockProvider(latency=0.5)}
    async with running_tree(
        mock_config("slow"), mock_config("fast"), mocks=mocks, strategy="lowest_latency"
    ) as (tree, _):
        served = [(await tree.router.complete("hi")).provider for _ in range(4)]
    assert served == ["slow", "fast", "fast", "fast"]


async def test_cheapest_among_agents_with_the_needed_features(autojump_clock: object) -> None:
    mocks = {
        "dear": MockProvider(),
        "cheap-no-tools": MockProvider(features=Features(tools=False)),
        "mid": MockProvider(),
    }
    async with running_tree(
        mock_config("dear", cost_per_1k_input=10.0, cost_per_1k_output=10.0),
        mock_config("cheap-no-tools", cost_per_1k_input=0.1, cost_per_1k_output=0.1),
        mock_config("mid", cost_per_1k_input=1.0, cost_per_1k_output=1.0),
        mocks=mocks,
        strategy="cheapest",
    ) as (tree, _):
        assert (await tree.router.complete("hi")).provider == "cheap-no-tools"
        assert (await tree.router.complete("hi", tools=TOOLS)).provider == "mid"


# --- features --------------------------------------------------------------------------------------


async def test_feature_routing_and_clear_error_when_nobody_fits(autojump_clock: object) -> None:
    mocks = {
        "plain": MockProvider(features=Features(tools=False, vision=False, context_window=200)),
        "tooly": MockProvider(features=Features(tools=True, vision=False, context_window=100_000)),
        "seeing": MockProvider(features=Features(tools=False, vision=True, json_mode=True)),
    }
    configs = (mock_config("plain"), mock_config("tooly", priority=1), mock_config("seeing", priority=2))
    image = ImagePart(url="http://127.0.0.1/cat.png")
    async with running_tree(*configs, mocks=mocks) as (tree, rec):
        router = tree.router
        assert (await router.complete("hi")).provider == "plain"
        assert (await router.complete("hi", tools=TOOLS)).provider == "tooly"
        assert (await router.complete([Message.user("what is this", image)])).provider == "seeing"
        assert (await router.complete("hi", required_features=("json_mode",))).provider == "seeing"
        assert (await router.complete("hi", response_format="json_object")).provider == "seeing"
        # Too long for plain's 200-token window: the next agent with room takes it.
        assert (await router.complete("word " * 400)).provider == "tooly"
        with pytest.raises(ProviderError) as info:
            await router.complete([Message.user("use a tool on this", image)], tools=TOOLS)
        error = info.value
        assert error.kind is ErrorKind.NO_PROVIDER and not error.retryable
        assert "tools, vision" in error.message
        assert "plain: lacks tools, vision" in error.message and "tooly: lacks vision" in error.message
        with pytest.raises(ProviderError, match="unknown feature"):
            await router.complete("hi", required_features=("telepathy",))
        # No agent was ever asked to do what it cannot.
        assert all(isinstance(s.data, ProviderResponse) for s in rec.terminals() if s.source != SOURCE)


async def test_pinned_provider_and_unknown_provider(autojump_clock: object) -> None:
    async with running_tree(mock_config("a"), mock_config("b", priority=9)) as (tree, _):
        assert (await tree.router.complete("hi", provider="b")).provider == "b"
        with pytest.raises(ProviderError) as info:
            await tree.router.complete("hi", provider="nope")
        assert info.value.kind is ErrorKind.NO_PROVIDER and "a, b" in info.value.message


# --- retries and failover --------------------------------------------------------------------------


async def test_retryable_error_fails_over_with_one_terminal_per_request(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(), "b": MockProvider()}
    mocks["a"].fail_next(ErrorKind.UPSTREAM_5XX)
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        response = await tree.router.complete("hi", request_id="r1")
        assert (response.provider, response.attempt) == ("b", 2)
    finals = [s for s in rec.signals if is_final(s)]
    assert [s.data for s in finals] == [response]
    attempts = rec.of("provider_request", source=DISPATCH)
    assert [(s.subject, s.provider) for s in attempts] == [("r1#1", "a"), ("r1#2", "b")]
    [first] = rec.terminals("r1#1")
    assert first.source == "/agents/a" and first.data.kind is ErrorKind.UPSTREAM_5XX  # type: ignore[union-attr]
    assert_one_terminal_per_request(rec)


async def test_non_retryable_and_refusal_are_never_retried(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(replies=[MockReply("I will not", finish_reason=FinishReason.REFUSAL)]),
             "b": MockProvider()}
    mocks["a"].fail_next(ErrorKind.AUTH, message="bad key")
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        with pytest.raises(ProviderError) as info:
            await tree.router.complete("hi")
        assert info.value.kind is ErrorKind.AUTH and info.value.provider == "a"
        refused = await tree.router.complete("hi")
        assert refused.finish_reason is FinishReason.REFUSAL and refused.attempt == 1
        assert mocks["b"].calls == 0
    assert_one_terminal_per_request(rec)


async def test_partial_stream_is_not_retried(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(replies=["0123456789"], chunk_size=2), "b": MockProvider()}
    mocks["a"].fail_next(ErrorKind.UPSTREAM_5XX, after_chunks=2)
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        received: list[str] = []
        with pytest.raises(ProviderError) as info:
            async with tree.router.stream("hi") as stream:
                async for chunk in stream:
                    received.append(chunk.delta)
        assert received == ["01", "23"]
        assert info.value.partial and info.value.kind is ErrorKind.UPSTREAM_5XX
        assert stream.error is info.value and stream.response is None
        assert mocks["b"].calls == 0
    assert_one_terminal_per_request(rec)


async def test_streaming_success_gives_chunks_then_the_response(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(replies=["streamed answer"], chunk_size=5)}
    async with running_tree(mock_config("a"), mocks=mocks) as (tree, _):
        async with tree.router.stream("hi") as stream:
            pieces = [chunk.delta async for chunk in stream]
        assert pieces == ["strea", "med a", "nswer"]
        assert stream.response is not None and stream.response.content == "streamed answer"
        # Bare iteration (no async with) works too.
        again = tree.router.stream("hi")
        assert "".join([c.delta async for c in again]).startswith("Quack!")
        assert again.response is not None


async def test_retries_use_backoff_and_stop_after_max_attempts(autojump_clock: object) -> None:
    calls: list[float] = []

    class Timed(MockProvider):
        async def complete(self, request: ProviderRequest) -> Completion:
            calls.append(trio.current_time())
            return await super().complete(request)

    mocks = {"a": Timed()}
    mocks["a"].fail_next(ErrorKind.OVERLOADED, count=3)
    async with running_tree(
        mock_config("a"), mocks=mocks, max_attempts=3, backoff_initial=1.0, backoff_max=1.5
    ) as (tree, rec):
        with pytest.raises(ProviderError) as info:
            await tree.router.complete("hi")
        assert info.value.kind is ErrorKind.OVERLOADED and info.value.attempt == 3
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(calls)]
    assert gaps == [1.0, 1.5]
    assert_one_terminal_per_request(rec)


# --- breaker and rate limits -----------------------------------------------------------------------


async def test_open_breaker_is_skipped_until_half_open_then_trial_closes_it(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(), "b": MockProvider()}
    mocks["a"].fail_next(ErrorKind.UPSTREAM_5XX, count=2)
    breaker = BreakerConfig(failure_threshold=2, open_timeout=30.0)
    async with running_tree(
        mock_config("a", breaker=breaker), mock_config("b", priority=1), mocks=mocks
    ) as (tree, rec):
        router = tree.router
        for _ in range(2):
            assert (await router.complete("hi")).provider == "b"  # a failed, b took over
        await rec.wait_for(lambda s: s.type == "provider_status" and s.data.breaker_state == "open")
        assert (await router.complete("hi")).provider == "b"
        assert mocks["a"].calls == 2  # not even tried while open
        await trio.sleep(31)
        await rec.wait_for(lambda s: s.type == "provider_status" and s.data.breaker_state == "half_open")
        trial = await router.complete("hi")
        assert trial.provider == "a"
        await rec.wait_for(
            lambda s: s.provider == "a" and s.type == "provider_status" and s.data.breaker_state == "closed",
            count=2,  # the initial one, and the one after the trial
        )
        assert (await router.complete("hi")).provider == "a"
    assert_one_terminal_per_request(rec)


async def test_rate_limited_agent_cools_down_while_another_serves(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(), "b": MockProvider()}
    mocks["a"].fail_next(ErrorKind.RATE_LIMITED, retry_after=20.0, status=429)
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        router = tree.router
        start = trio.current_time()
        assert (await router.complete("hi")).provider == "b"
        assert (await router.complete("hi")).provider == "b"
        assert mocks["a"].calls == 1
        await trio.sleep_until(start + 21)
        assert (await router.complete("hi")).provider == "a"
    assert_one_terminal_per_request(rec)


async def test_when_all_are_rate_limited_it_waits_if_the_deadline_allows(autojump_clock: object) -> None:
    mocks = {"a": MockProvider()}
    mocks["a"].fail_next(ErrorKind.RATE_LIMITED, retry_after=5.0)
    async with running_tree(mock_config("a"), mocks=mocks, backoff_initial=0.0) as (tree, rec):
        start = trio.current_time()
        response = await tree.router.complete("hi", timeout=60)
        assert response.attempt == 2 and trio.current_time() - start == pytest.approx(5.0, abs=0.01)
        mocks["a"].fail_next(ErrorKind.RATE_LIMITED, retry_after=5.0)
        with pytest.raises(ProviderError) as info:
            await tree.router.complete("hi", timeout=2)
        assert info.value.kind is ErrorKind.RATE_LIMITED
        assert info.value.retry_after is not None and 2 < info.value.retry_after <= 5.0
    assert_one_terminal_per_request(rec)


# --- crashes, hangs, cancellation, shutdown --------------------------------------------------------


async def test_agent_crash_is_restarted_and_the_request_answered_once(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(), "b": MockProvider()}
    mocks["a"].crash_agent_next()
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        response = await tree.router.complete("hi", request_id="crash")
        assert (response.provider, response.attempt) == ("b", 2)
        await rec.wait_for(lambda s: s.type == "supervisor_event" and s.data.event == "restarted")
        assert tree.agent_supervisors["a"].restarts == 1 and tree.agents["a"].incarnation == 2
        # The crashed agent answered its attempt itself: retryable, the provider declared its own fault.
        [lost] = rec.terminals("crash#1")
        assert lost.source == "/agents/a" and lost.data.kind is ErrorKind.AGENT_CRASHED  # type: ignore[union-attr]
        assert lost.data.retryable  # type: ignore[union-attr]
        assert len([s for s in rec.signals if is_final(s) and s.subject == "crash"]) == 1
        # The restarted agent serves again.
        assert (await tree.router.complete("hi", provider="a")).provider == "a"
    assert_one_terminal_per_request(rec)


async def test_a_provider_bug_fails_the_request_with_internal_and_is_not_retried(
    autojump_clock: object,
) -> None:
    mocks = {"a": MockProvider(), "b": MockProvider()}
    mocks["a"].crash_next()
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        with pytest.raises(ProviderError) as info:
            await tree.router.complete("hi", request_id="bug")
        assert info.value.kind is ErrorKind.INTERNAL and info.value.provider == "a"
        assert mocks["b"].calls == 0  # the same input would meet the same bug elsewhere
        assert tree.supervisor.event_counts["crashed"] == 0 and tree.agents["a"].incarnation == 1
        assert (await tree.router.complete("hi", provider="a")).provider == "a"
    assert_one_terminal_per_request(rec)


async def test_a_crash_put_down_to_the_request_is_not_retried(autojump_clock: object) -> None:
    """The crashed agent marks the attempt whose own handling crashed it as not retryable: a poison
    request stops there instead of walking through the fleet."""
    mocks = {"a": MockProvider(), "b": MockProvider()}
    mocks["a"].fail_next("upstream_5xx")
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        agent = tree.agents["a"]
        build_failure = agent.failure

        def failure(active: object, error: ProviderError) -> ProviderErrorData:
            # A bug past the agent's containment, met only by this request's handling.
            if error.kind is not ErrorKind.AGENT_CRASHED:
                raise RuntimeError("bug while building the terminal")
            return build_failure(active, error)  # type: ignore[arg-type]

        agent.failure = failure  # type: ignore[method-assign]
        with pytest.raises(ProviderError) as info:
            await tree.router.complete("hi", request_id="poison")
        assert info.value.kind is ErrorKind.AGENT_CRASHED and not info.value.retryable
        assert mocks["b"].calls == 0
        [answer] = rec.terminals("poison#1")
        assert answer.source == "/agents/a"
        await rec.wait_for(lambda s: s.type == "supervisor_event" and s.data.event == "restarted")  # type: ignore[union-attr]
    assert_one_terminal_per_request(rec)


async def test_a_crash_put_down_to_the_request_does_not_follow_a_fallback_chain(
    autojump_clock: object,
) -> None:
    """Nor does the poison reach another agent by way of a fallback model."""
    mocks = {"a": MockProvider(default_model="m-a"), "b": MockProvider(default_model="m-b")}
    mocks["a"].fail_next("upstream_5xx")
    config = Config(
        providers=(
            mock_config("a", models=("m-a",), default_model="m-a"),
            mock_config("b", models=("m-b",), default_model="m-b"),
        ),
        models={"m-a": ModelConfig(fallbacks=("m-b",))},
        health_interval=1000.0,
    )
    bus = SignalBus()
    rec = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        async with open_tree(config, bus=bus, providers=mocks) as tree:
            assert (await tree.router.complete("hi", model="m-b")).provider == "b"  # b serves m-b
            calls = mocks["b"].calls
            agent = tree.agents["a"]
            build_failure = agent.failure

            def failure(active: object, error: ProviderError) -> ProviderErrorData:
                if error.kind is not ErrorKind.AGENT_CRASHED:
                    raise RuntimeError("bug while building the terminal")
                return build_failure(active, error)  # type: ignore[arg-type]

            agent.failure = failure  # type: ignore[method-assign]
            with pytest.raises(ProviderError) as info:
                await tree.router.complete("hi", model="m-a", request_id="poison")
            assert info.value.kind is ErrorKind.AGENT_CRASHED and not info.value.retryable
            assert mocks["b"].calls == calls  # the fallback model's agent never saw it
        bus.close()
    assert_one_terminal_per_request(rec)


async def test_a_request_is_retried_after_one_crash_at_most(autojump_clock: object) -> None:
    mocks = {name: MockProvider() for name in "abc"}
    for mock in mocks.values():
        mock.crash_agent_next()
    configs = [mock_config(name, priority=i) for i, name in enumerate("abc")]
    async with running_tree(*configs, mocks=mocks) as (tree, rec):
        with pytest.raises(ProviderError) as info:
            await tree.router.complete("hi", request_id="unlucky")
        assert info.value.kind is ErrorKind.AGENT_CRASHED and info.value.attempt == 2
        assert (mocks["a"].calls, mocks["b"].calls, mocks["c"].calls) == (1, 1, 0)
    assert_one_terminal_per_request(rec)


async def test_lone_agent_crash_waits_for_the_restart(autojump_clock: object) -> None:
    mocks = {"a": MockProvider()}
    mocks["a"].crash_agent_next()
    async with running_tree(mock_config("a"), mocks=mocks) as (tree, rec):
        response = await tree.router.complete("hi")
        assert (response.provider, response.attempt) == ("a", 2)
    assert_one_terminal_per_request(rec)


async def test_hung_agent_is_answered_for_at_its_deadline(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(), "b": MockProvider()}
    mocks["a"].hang_next(duration=500.0)
    async with running_tree(
        mock_config("a", timeout=10.0), mock_config("b", priority=1), mocks=mocks
    ) as (tree, rec):
        start = trio.current_time()
        response = await tree.router.complete("hi", request_id="hang", timeout=100)
        assert (response.provider, response.attempt) == ("b", 2)
        assert trio.current_time() - start == pytest.approx(10.0 + tree.router.terminal_grace, abs=0.1)
        [timed_out] = rec.terminals("hang#1")
        assert timed_out.source == DISPATCH and timed_out.data.kind is ErrorKind.TIMEOUT  # type: ignore[union-attr]
        await trio.sleep(600)  # the hang ends; the agent must not answer the attempt again
        assert len(rec.terminals("hang#1")) == 1
        assert not tree.agents["a"].active_requests
    assert_one_terminal_per_request(rec)


async def test_cancel_ends_the_request_and_stops_the_attempt(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(latency=100.0)}
    async with running_tree(mock_config("a"), mocks=mocks) as (tree, rec):
        router = tree.router
        with router.bus.expect("c1") as waiter:
            await router.submit(ProviderRequest("c1", (Message.user("hi"),)))
            await trio.sleep(1)
            assert router.cancel("c1")
            final = await waiter.wait()
        assert final.source == SOURCE
        assert isinstance(final.data, ProviderErrorData) and final.data.kind is ErrorKind.CANCELLED
        assert not router.cancel("c1")  # already ended
        await trio.sleep(1)
        assert not tree.agents["a"].active_requests and not router.requests
        # A cancelled caller cancels its request too.
        with trio.move_on_after(1):
            await router.complete("hi", request_id="c2")
        await rec.wait_for(lambda s: is_final(s) and s.subject == "c2")
        assert rec.terminals("c2")[0].data.kind is ErrorKind.CANCELLED  # type: ignore[union-attr]
    assert_one_terminal_per_request(rec)


async def test_shutdown_gives_every_request_in_flight_its_final_result(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(latency=100.0), "b": MockProvider(latency=100.0)}
    async with running_tree(mock_config("a"), mock_config("b"), mocks=mocks, strategy="round_robin") as (
        tree,
        rec,
    ):
        for i in range(6):
            await tree.router.submit(ProviderRequest(f"s{i}", (Message.user("hi"),)))
        await trio.sleep(1)
        assert tree.router.in_flight == 6
    finals = [s for s in rec.signals if is_final(s)]
    assert sorted(s.subject for s in finals) == [f"s{i}" for i in range(6)]  # type: ignore[type-var]
    assert {s.data.kind for s in finals} == {ErrorKind.SHUTDOWN}  # type: ignore[union-attr]
    assert_one_terminal_per_request(rec)
    assert not tree.router.requests


async def test_drain_refuses_new_requests_and_lets_those_in_flight_finish(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(latency=5.0), "b": MockProvider(latency=5.0)}
    mocks["a"].fail_next(ErrorKind.UPSTREAM_5XX)  # one of them fails over to b during the drain
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        router = tree.router
        for i in range(4):
            await router.submit(ProviderRequest(f"d{i}", (Message.user("hi"),)))
        await trio.sleep(1)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(router.drain, 30.0)
            await trio.testing.wait_all_tasks_blocked()
            assert router.draining
            with pytest.raises(ProviderError) as info:
                await router.complete("too late")
            assert info.value.kind is ErrorKind.SHUTDOWN
        assert trio.current_time() - start < 30.0  # returned once the last one finished
        finals = {s.subject: s.data for s in await rec.wait_for(is_final, count=4)}
        assert set(finals) == {f"d{i}" for i in range(4)}
        assert all(isinstance(d, ProviderResponse) for d in finals.values())
        assert [d.attempt for d in finals.values()].count(2) == 1  # the failover happened during the drain
        assert router.in_flight == 0 and router.running  # the router keeps running, refusing
    assert_one_terminal_per_request(rec)


async def test_drain_stops_what_is_left_at_its_timeout_with_shutdown(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(latency=100.0)}
    async with running_tree(mock_config("a"), mocks=mocks) as (tree, rec):
        router = tree.router
        for i in range(3):
            await router.submit(ProviderRequest(f"slow{i}", (Message.user("hi"),)))
        async with trio.open_nursery() as nursery:
            outcome: list[object] = []

            async def caller() -> None:  # a complete() caller's request, routed in its own task
                try:
                    await router.complete("inline", request_id="inline")
                except ProviderError as exc:
                    outcome.append(exc.kind)

            nursery.start_soon(caller)
            await trio.sleep(1)
            start = trio.current_time()
            assert await tree.drain(2.0) == 4
            assert trio.current_time() - start == pytest.approx(2.0, abs=0.1)
        assert outcome == [ErrorKind.SHUTDOWN]
        finals = {s.subject: s.data for s in await rec.wait_for(is_final, count=4)}
        assert set(finals) == {"slow0", "slow1", "slow2", "inline"}
        for data in finals.values():
            assert isinstance(data, ProviderErrorData) and data.kind is ErrorKind.SHUTDOWN
            assert "drain timeout (2 s)" in data.message
    assert_one_terminal_per_request(rec)


async def test_a_cancelled_drain_stops_what_is_left_at_once(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(latency=100.0)}
    async with running_tree(mock_config("a"), mocks=mocks) as (tree, rec):
        await tree.router.submit(ProviderRequest("slow", (Message.user("hi"),)))
        await trio.sleep(1)
        start = trio.current_time()
        with trio.move_on_after(1.0):  # a second signal
            await tree.drain(30.0)
        [final] = await rec.wait_for(is_final)
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.1)
        data = final.data
        assert isinstance(data, ProviderErrorData) and data.kind is ErrorKind.SHUTDOWN
        assert "at once" in data.message
    assert_one_terminal_per_request(rec)


async def test_submit_final_is_what_bus_expect_sees(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(), "b": MockProvider()}
    mocks["a"].fail_next(ErrorKind.NETWORK)
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, _):
        with tree.bus.expect("sub") as waiter:
            await tree.router.submit(ProviderRequest("sub", (Message.user("hi"),)))
            final = await waiter.wait()
        # The attempt-level failure (subject sub#1) does not look like the request's own terminal.
        assert final.source == SOURCE and isinstance(final.data, ProviderResponse)
        assert final.data.provider == "b"
        with pytest.raises(ProviderError, match="already in flight"):
            await tree.router.submit(ProviderRequest("dup", (Message.user("hi"),), deadline=1e9))
            await tree.router.submit(ProviderRequest("dup", (Message.user("hi"),)))


async def test_status_and_features_reflect_every_agent(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(features=Features(tools=False)), "b": MockProvider(healthy=False)}
    async with running_tree(mock_config("a"), mock_config("b"), mocks=mocks) as (tree, _):
        statuses = await tree.router.status()
        assert [s.provider for s in statuses] == ["a", "b"]
        assert statuses[0].reachable and not statuses[1].reachable
        replies = await tree.router.features()
        assert [(r.provider, r.supported["tools"]) for r in replies] == [("a", False), ("b", True)]


async def test_open_router_with_no_config_answers_from_the_friendly_mock(autojump_clock: object) -> None:
    from duckagents.app import open_router

    async with open_router() as router:
        response = await router.complete("hello")
        assert response.provider == "mock"
        assert "mock" in response.content and response.content.endswith("You said: hello")
        assert [s.provider for s in await router.status()] == ["mock"]
    with pytest.raises(ProviderError) as info:
        await router.complete("too late")
    assert info.value.kind is ErrorKind.SHUTDOWN


async def test_a_cancelled_or_failed_attempt_releases_its_budget_hold(autojump_clock: object) -> None:
    from duckagents.costs import Budget

    priced = {"cost_per_1k_input": 0.0, "cost_per_1k_output": 1.0, "budget": Budget(1.0, "day")}
    mocks = {"a": MockProvider(latency=100.0)}
    async with running_tree(mock_config("a", **priced), mocks=mocks) as (tree, _):
        async def cancelled_caller() -> None:
            with pytest.raises(ProviderError, match="cancelled"):
                await tree.router.complete("hi", max_tokens=10, request_id="c")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_caller)
            await trio.sleep(1)
            [spend] = await tree.router.spend()
            assert spend.held == pytest.approx(0.01)  # 10 output tokens at $1 per 1,000, held while it runs
            assert tree.router.cancel("c")
        [spend] = await tree.router.spend()
        assert (spend.spent, spend.held) == (0.0, 0.0)
        mocks["a"].latency = MockProvider().latency
        mocks["a"].fail_next(ErrorKind.UPSTREAM_5XX, count=3)
        with pytest.raises(ProviderError):
            await tree.router.complete("hi", max_tokens=10)
        [spend] = await tree.router.spend()
        assert (spend.spent, spend.held) == (0.0, 0.0)  # failed attempts cost nothing
        answer = await tree.router.complete("hi", max_tokens=10)
        [spend] = await tree.router.spend()
        assert answer.usage.cost is not None and spend.spent == pytest.approx(answer.usage.cost)
        assert spend.held == 0.0


async def test_an_answer_the_router_has_not_handled_yet_is_not_answered_again(autojump_clock: object) -> None:
    # A starved router: the agent's terminal is on the bus (handed to the router's signal loop) well
    # before the deadline, but the loop only gets to it after the grace, when the request has stopped
    # waiting. The router must not make up a second terminal for the attempt: the agent took the claim.
    never_trips = BreakerConfig(failure_threshold=1000)
    mocks = {"a": MockProvider()}
    async with running_tree(mock_config("a", breaker=never_trips), mocks=mocks) as (tree, rec):
        router = tree.router
        handle = router._handle
        late: list[Signal] = []

        def starved_handle(signal: Signal) -> None:
            if signal.type in ("provider_response", "provider_error") and signal.source != DISPATCH:
                late.append(signal)  # the loop will get to it later
            else:
                handle(signal)

        router._handle = starved_handle  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:

            async def catch_up_late() -> None:
                await trio.sleep(5 + router.terminal_grace + 0.5)
                router._handle = handle  # type: ignore[method-assign]
                for signal in late:
                    handle(signal)

            nursery.start_soon(catch_up_late)
            response = await router.complete("hi", request_id="starved", timeout=5)
        assert response.provider == "a" and response.content  # the agent's answer, not a made-up timeout
        assert len(rec.terminals("starved#1")) == 1
        assert len(router.bus.claims) == 0  # both parties are done with the claim
    assert_one_terminal_per_request(rec)


async def test_a_hung_agent_settles_the_claim_the_router_took_for_it(autojump_clock: object) -> None:
    mocks = {"a": MockProvider()}
    mocks["a"].hang_next(duration=500.0)
    async with running_tree(mock_config("a", timeout=10.0), mocks=mocks) as (tree, rec):
        response = await tree.router.complete("hi", request_id="hung", timeout=100)
        assert response.attempt == 2
        await trio.sleep(600)
        # The router answered on the agent's behalf (taking the claim); the agent, told so, settled it.
        assert len(rec.terminals("hung#1")) == 1 and rec.terminals("hung#1")[0].source == DISPATCH
        assert len(tree.router.bus.claims) == 0
    assert_one_terminal_per_request(rec)
