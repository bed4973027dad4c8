"""The provider agent on its own: limiter, breaker, metrics, health, hooks and the one-terminal rule."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from duckagents.agents import ProviderAgent
from duckagents.agents._health import RecentOutcomes, headroom_fraction, health_score
from duckagents.bus import SignalBus
from duckagents.config import ProviderConfig
from duckagents.errors import AgentFault, ErrorKind, ProviderError, Secret
from duckagents.messages import FinishReason, Message
from duckagents.providers import Completion, HealthProbe, MockProvider
from duckagents.resilience import BreakerConfig, BreakerState, RateLimits
from duckagents.signals import (
    FeatureCheck,
    Headroom,
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    TokenEstimate,
    make_signal,
)
from tests.helpers import Recorder, request, running_agent, send


def config(**kwargs: object) -> ProviderConfig:
    return ProviderConfig(name="m", kind="mock", **kwargs)  # type: ignore[arg-type]


async def test_request_gets_one_response_with_attempt_and_subject(autojump_clock: object) -> None:
    async with running_agent() as (agent, bus, rec):
        subject = await send(bus, request("r1", attempt=3, provider="m"))
        [terminal] = await rec.wait_for(lambda s: s.is_terminal)
        assert terminal.subject == subject and terminal.source == "/agents/m"
        response = terminal.data
        assert isinstance(response, ProviderResponse)
        assert (response.request_id, response.provider, response.attempt) == ("r1", "m", 3)
        assert response.content.endswith("You said: hello")
        snapshot = agent.metrics.snapshot()
        assert (snapshot.total_requests, snapshot.successful_requests, snapshot.in_flight) == (1, 1, 0)
        assert snapshot.total_tokens == response.usage.total_tokens > 0
        assert not agent.active_requests


async def test_requests_for_other_agents_are_ignored(autojump_clock: object) -> None:
    provider = MockProvider()
    async with running_agent(provider=provider) as (_, bus, rec):
        await send(bus, request("x", provider="someone-else"))
        await send(bus, request("unaddressed"))
        await trio.sleep(1)
        assert provider.calls == 0 and not rec.terminals()


async def test_stream_chunks_have_increasing_indexes_then_one_terminal(autojump_clock: object) -> None:
    provider = MockProvider(replies=["abcdefghijkl"], chunk_size=3, chunk_delay=0.1)
    async with running_agent(provider=provider) as (agent, bus, rec):
        await send(bus, request("s", provider="m", stream=True))
        [terminal] = await rec.wait_for(lambda s: s.is_terminal)
        chunks = [s.data for s in rec.of("provider_chunk")]
        assert all(isinstance(c, ProviderChunk) for c in chunks)
        assert [c.index for c in chunks] == [0, 1, 2, 3]  # type: ignore[union-attr]
        assert "".join(c.delta for c in chunks) == "abcdefghijkl"  # type: ignore[union-attr]
        assert all(c.subject == "s" for c in rec.of("provider_chunk"))  # chunks are caller-level
        assert terminal.data.time_to_first_chunk is not None  # type: ignore[union-attr]
        assert agent.metrics.snapshot().time_to_first_chunk.samples == 1


async def test_errors_are_enriched_with_agent_context(autojump_clock: object) -> None:
    provider = MockProvider()
    provider.fail_next(ErrorKind.UPSTREAM_5XX, status=502)
    async with running_agent(provider=provider) as (agent, bus, rec):
        await send(bus, request("e", provider="m", attempt=2))
        [terminal] = await rec.wait_for(lambda s: s.is_terminal)
        failure = terminal.data
        assert isinstance(failure, ProviderErrorData)
        assert failure.kind is ErrorKind.UPSTREAM_5XX and failure.retryable
        assert (failure.provider, failure.model, failure.attempt) == ("m", "mock-1", 2)
        assert failure.agent_id == "m#1" and failure.breaker_state == "closed"
        assert failure.upstream_status == 502 and not failure.partial
        assert agent.metrics.snapshot().failed_requests == 1


async def test_secrets_never_reach_an_error_signal(autojump_clock: object) -> None:
    key = "sk-test-1234567890abcdefghij"
    provider = MockProvider(api_key=Secret(key))
    provider.fail_next(ErrorKind.AUTH, message=f"bad key {key} given")
    async with running_agent(provider=provider) as (_, bus, rec):
        await send(bus, request("k", provider="m"))
        [terminal] = await rec.wait_for(lambda s: s.is_terminal)
        assert key not in repr(terminal) and "***" in terminal.data.message  # type: ignore[union-attr]


async def test_breaker_opens_reports_at_once_rejects_then_half_open_trial_closes(
    autojump_clock: object,
) -> None:
    provider = MockProvider()
    provider.fail_next(ErrorKind.UPSTREAM_5XX, count=3)
    cfg = config(breaker=BreakerConfig(failure_threshold=3, open_timeout=30.0))
    async with running_agent(cfg, provider, health_interval=1000.0) as (agent, bus, rec):
        for i in range(3):
            await send(bus, request(f"f{i}", provider="m"))
            await rec.wait_for(lambda s: s.is_terminal, count=i + 1)
        opened = await rec.wait_for(lambda s: s.type == "provider_status" and s.data.breaker_state == "open")
        opened_at = trio.current_time()
        status = opened[0].data
        assert isinstance(status, ProviderStatus) and status.health == 0.0
        assert float(status.detail["breaker_retry_at"]) == pytest.approx(opened_at + 30.0, abs=1.0)
        # What a live view needs to count down to half-open and to name the agent.
        assert float(status.detail["breaker_retry_in"]) == pytest.approx(30.0, abs=1.0)
        assert status.detail["provider_kind"] == "mock" and status.detail["default_model"] == agent.model
        # While open: refused without reaching the provider, with the time left as retry_after.
        await send(bus, request("blocked", provider="m"))
        [refused] = await rec.wait_for(lambda s: s.is_terminal and s.data.request_id == "blocked")
        assert refused.data.kind is ErrorKind.CIRCUIT_OPEN and refused.data.retryable  # type: ignore[union-attr]
        assert 0 < refused.data.retry_after <= 30.0  # type: ignore[union-attr,operator]
        assert provider.calls == 3
        # The open -> half-open transition is reported by the agent's timer, with nobody asking.
        await rec.wait_for(lambda s: s.type == "provider_status" and s.data.breaker_state == "half_open")
        assert trio.current_time() >= opened_at + 30.0
        mark = len(rec.signals)
        await send(bus, request("trial", provider="m"))
        await rec.wait_for(
            lambda s: s.type == "provider_status" and s.data.breaker_state == "closed", after=mark
        )
        assert agent.breaker.state(trio.current_time()) is BreakerState.CLOSED
        [trial] = [s for s in rec.terminals() if s.data.request_id == "trial"]
        assert isinstance(trial.data, ProviderResponse)


async def test_limiter_waits_when_the_deadline_allows_else_refuses(autojump_clock: object) -> None:
    provider = MockProvider()
    cfg = config(limits=RateLimits(requests=2))
    async with running_agent(cfg, provider) as (_, bus, rec):
        now = trio.current_time()
        for rid in ("a", "b"):
            await send(bus, request(rid, provider="m", deadline=now + 100))
        await rec.wait_for(lambda s: s.is_terminal, count=2)
        # The bucket is empty; one request refills in 30 s. A 5 s deadline cannot wait for it.
        await send(bus, request("short", provider="m", deadline=trio.current_time() + 5))
        [short] = await rec.wait_for(lambda s: s.is_terminal and s.data.request_id == "short")
        assert short.data.kind is ErrorKind.RATE_LIMITED  # type: ignore[union-attr]
        assert short.data.retry_after == pytest.approx(30.0, abs=0.5)  # type: ignore[union-attr]
        assert provider.calls == 2
        start = trio.current_time()
        await send(bus, request("long", provider="m", deadline=start + 100))
        [long] = await rec.wait_for(lambda s: s.is_terminal and s.data.request_id == "long")
        assert isinstance(long.data, ProviderResponse)
        assert trio.current_time() - start == pytest.approx(30.0, abs=0.5)
        assert provider.calls == 3


async def test_upstream_retry_after_blocks_the_limiter(autojump_clock: object) -> None:
    provider = MockProvider()
    provider.fail_next(ErrorKind.RATE_LIMITED, retry_after=20.0, status=429)
    async with running_agent(provider=provider) as (agent, bus, rec):
        await send(bus, request("429", provider="m"))
        [first] = await rec.wait_for(lambda s: s.is_terminal)
        assert first.data.retry_after == 20.0  # type: ignore[union-attr]
        status = await rec.wait_for(lambda s: s.type == "provider_status" and s.data.headroom.retry_at)
        assert status[-1].data.headroom.retry_at == pytest.approx(trio.current_time() + 20.0, abs=0.5)  # type: ignore[union-attr]
        await send(bus, request("soon", provider="m", deadline=trio.current_time() + 5))
        [soon] = await rec.wait_for(lambda s: s.is_terminal and s.data.request_id == "soon")
        assert soon.data.kind is ErrorKind.RATE_LIMITED and provider.calls == 1  # type: ignore[union-attr]
        assert agent.breaker.state(trio.current_time()) is BreakerState.CLOSED  # 429 does not trip it


async def test_deadline_times_out_and_counts_against_the_breaker(autojump_clock: object) -> None:
    provider = MockProvider(latency=50.0)
    async with running_agent(provider=provider) as (agent, bus, rec):
        await send(bus, request("slow", provider="m", deadline=trio.current_time() + 2))
        [terminal] = await rec.wait_for(lambda s: s.is_terminal)
        assert terminal.data.kind is ErrorKind.TIMEOUT and terminal.data.retryable  # type: ignore[union-attr]
        assert agent.breaker.snapshot(trio.current_time()).consecutive_failures == 1
        assert agent.metrics.snapshot().in_flight == 0


async def test_concurrency_is_capped_by_max_concurrency(autojump_clock: object) -> None:
    running = 0
    peak = 0

    class Counting(MockProvider):
        async def complete(self, req: ProviderRequest) -> Completion:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await trio.sleep(1)
                return await super().complete(req)
            finally:
                running -= 1

    async with running_agent(config(max_concurrency=2), Counting()) as (_, bus, rec):
        for i in range(7):
            await send(bus, request(f"c{i}", provider="m"))
        await rec.wait_for(lambda s: s.is_terminal, count=7)
        assert peak == 2
        assert all(isinstance(s.data, ProviderResponse) for s in rec.terminals())


async def test_overload_beyond_max_pending_is_refused(autojump_clock: object) -> None:
    provider = MockProvider(latency=10.0)
    async with running_agent(config(max_concurrency=1), provider, max_pending=2) as (_, bus, rec):
        for i in range(4):
            await send(bus, request(f"o{i}", provider="m"))
        terminals = await rec.wait_for(lambda s: s.is_terminal, count=4)
        kinds = sorted(getattr(s.data, "kind", "ok") for s in terminals)
        assert kinds.count(ErrorKind.OVERLOADED) == 2 and kinds.count("ok") == 2


async def test_answer_published_elsewhere_stops_the_attempt_silently(autojump_clock: object) -> None:
    provider = MockProvider(latency=100.0)
    async with running_agent(provider=provider) as (agent, bus, rec):
        subject = await send(bus, request("c", provider="m"))
        await trio.sleep(1)
        assert ("c", 1) in agent.active_requests
        on_behalf = ProviderErrorData("c", ErrorKind.CANCELLED, "cancelled by the caller", provider="m")
        await bus.publish(attrs.evolve(make_signal(on_behalf, "/router/dispatch"), subject=subject))
        await trio.sleep(200)
        assert not agent.active_requests
        assert [s.source for s in rec.terminals()] == ["/router/dispatch"]  # nothing from the agent
        # Cancelled mid-call: released, not judged.
        snap = agent.breaker.snapshot(trio.current_time())
        assert snap.consecutive_failures == 0 and snap.trials_in_flight == 0


async def test_shutdown_answers_every_in_flight_request_once(autojump_clock: object) -> None:
    bus = SignalBus()
    agent = ProviderAgent(config(), bus, MockProvider(latency=100.0))
    rec = Recorder(bus)
    async with trio.open_nursery() as outer:
        outer.start_soon(rec.run)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            for i in range(5):
                await send(bus, request(f"s{i}", provider="m"))
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        await trio.sleep(1)
        terminals = rec.terminals()
        assert sorted(s.subject for s in terminals) == [f"s{i}#1" for i in range(5)]  # type: ignore[type-var]
        assert {s.data.kind for s in terminals} == {ErrorKind.SHUTDOWN}  # type: ignore[union-attr]
        outer.cancel_scope.cancel()


async def test_a_bug_while_handling_a_request_fails_it_with_internal_and_the_agent_keeps_serving(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    provider = MockProvider(latency=1.0)
    provider.crash_next(message="injected crash in the mock provider \ud800 " + "x" * 10_000)
    with caplog.at_level(logging.ERROR, logger="duckagents.agents"):
        async with running_agent(provider=provider) as (agent, bus, rec):
            await send(bus, request("boom", provider="m"))
            await send(bus, request("bystander", provider="m"))
            terminals = await rec.wait_for(lambda s: s.is_terminal, count=2)
            by_id = {t.data.request_id: t.data for t in terminals}  # type: ignore[union-attr]
            failure = by_id["boom"]
            assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.INTERNAL
            assert not failure.retryable and failure.provider == "m" and failure.agent_id == "m#1"
            # Bounded, and valid Unicode whatever the exception quoted (here a lone surrogate).
            assert "RuntimeError: injected crash" in failure.message and len(failure.message) < 400
            failure.message.encode("utf-8")
            assert isinstance(by_id["bystander"], ProviderResponse)
            # Still the same incarnation, and it serves the next request.
            await send(bus, request("after", provider="m"))
            [after] = await rec.wait_for(lambda s: s.is_terminal and s.data.request_id == "after")  # type: ignore[union-attr]
            assert isinstance(after.data, ProviderResponse) and agent.incarnation == 1 and agent.running
            # No verdict on the upstream for our own bug; the call counts as interrupted.
            assert agent.breaker.state(trio.current_time()) is BreakerState.CLOSED
            assert agent.metrics.snapshot().in_flight == 0 and not agent.active_requests
    [record] = [r for r in caplog.records if "boom" in r.getMessage()]
    text = record.getMessage()
    assert "agent m#1: request boom (attempt 1) failed with an internal error" in text
    assert "Traceback (most recent call last)" in text and "RuntimeError: injected crash" in text


async def test_an_agent_fault_crashes_the_agent_which_answers_its_attempts_first(
    autojump_clock: object,
) -> None:
    bus = SignalBus()
    provider = MockProvider(latency=5.0)
    agent = ProviderAgent(config(), bus, provider)
    rec = Recorder(bus)
    async with trio.open_nursery() as outer:
        outer.start_soon(rec.run)
        with pytest.raises(BaseExceptionGroup) as info:
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await send(bus, request("bystander", provider="m"))
                await trio.sleep(1)
                provider.crash_agent_next()
                await send(bus, request("boom", provider="m"))
                await trio.sleep(100)
        await rec.wait_for(lambda s: s.is_terminal, count=2)
        outer.cancel_scope.cancel()
    assert info.group_contains(AgentFault, match="injected agent fault")
    # Each attempt got one answer from the agent before its run ended: agent_crashed, retryable, since the
    # provider declared its own machinery broken (not the request).
    terminals = {t.subject: t.data for t in rec.terminals()}
    assert set(terminals) == {"boom#1", "bystander#1"}
    for data in terminals.values():
        assert isinstance(data, ProviderErrorData) and data.kind is ErrorKind.AGENT_CRASHED
        assert data.retryable and data.agent_id == "m#1"
    # A restart works, and state that describes the upstream survives it.
    rec = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        await nursery.start(agent.run)
        assert agent.incarnation == 2
        await send(bus, request("after", provider="m"))
        [ok] = await rec.wait_for(lambda s: s.is_terminal)
        assert isinstance(ok.data, ProviderResponse) and ok.data.request_id == "after"
        nursery.cancel_scope.cancel()


async def test_a_crash_in_a_requests_own_handling_marks_it_not_retryable(autojump_clock: object) -> None:
    """Past the containment (here: building its terminal), a request's handling crashes the agent: that
    request may carry the poison, so its answer says not retryable; its bystander's says retryable."""

    class BrokenFailures(ProviderAgent):
        def failure(self, active: Any, error: ProviderError) -> ProviderErrorData:
            if active.request.request_id == "poison" and error.kind is not ErrorKind.AGENT_CRASHED:
                raise RuntimeError("bug while building the terminal")
            return super().failure(active, error)

    bus = SignalBus()
    provider = MockProvider(latency=1.0)
    provider.hang_next(duration=10.0)  # the bystander is still in flight when the poison crashes the agent
    agent = BrokenFailures(config(), bus, provider)
    rec = Recorder(bus)
    async with trio.open_nursery() as outer:
        outer.start_soon(rec.run)
        with pytest.raises(BaseExceptionGroup) as info:
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await send(bus, request("bystander", provider="m"))
                await trio.sleep(0.5)
                provider.fail_next("upstream_5xx")
                await send(bus, request("poison", provider="m"))
                await trio.sleep(100)
        await rec.wait_for(lambda s: s.is_terminal, count=2)
        outer.cancel_scope.cancel()
    assert info.group_contains(RuntimeError, match="bug while building the terminal")
    terminals = {t.subject: t.data for t in rec.terminals()}
    assert set(terminals) == {"poison#1", "bystander#1"}
    for data in terminals.values():
        assert isinstance(data, ProviderErrorData) and data.kind is ErrorKind.AGENT_CRASHED
    assert not terminals["poison#1"].retryable  # type: ignore[union-attr]
    assert terminals["bystander#1"].retryable  # type: ignore[union-attr]


async def test_feature_check_and_token_estimate_addressed_and_broadcast(autojump_clock: object) -> None:
    async with running_agent() as (agent, bus, rec):
        check = FeatureCheck("f1", ("tools", "vision", "telepathy"), provider="m")
        await bus.publish(make_signal(check, "/t"))
        await bus.publish(make_signal(FeatureCheck("f2"), "/t"))  # to every agent
        messages = (Message.user("count me please"),)
        await bus.publish(make_signal(TokenEstimate("t1", messages, provider="m"), "/t"))
        replies = await rec.wait_for(lambda s: s.type == "feature_reply", count=2)
        by_id = {s.data.request_id: s.data for s in replies}  # type: ignore[union-attr]
        assert by_id["f1"].supported == {"tools": True, "vision": True, "telepathy": False}  # type: ignore[union-attr]
        assert by_id["f2"].model == "mock-1" and by_id["f2"].features == agent.features()  # type: ignore[union-attr]
        [estimate] = await rec.wait_for(lambda s: s.type == "token_estimate_reply")
        assert estimate.data.tokens == (await agent.provider.estimate_tokens(messages)).tokens  # type: ignore[union-attr]


async def test_status_on_start_carries_probe_detail_and_resources(autojump_clock: object) -> None:
    class WithResources(ProviderAgent):
        async def resources(self) -> dict[str, str]:
            return {"vram": "1 GiB"}

    provider = MockProvider(healthy=False)
    async with running_agent(provider=provider, agent_class=WithResources) as (_, _bus, rec):
        [status] = await rec.wait_for(lambda s: s.type == "provider_status")
        data = status.data
        assert isinstance(data, ProviderStatus)
        assert not data.reachable and data.detail["vram"] == "1 GiB" and data.detail["models"] == "mock-1"
        assert data.health == pytest.approx(health_score(BreakerState.CLOSED, False, 0.0, None, 1.0))


async def test_periodic_health_probe_follows_the_interval(autojump_clock: object) -> None:
    provider = MockProvider()
    async with running_agent(provider=provider, health_interval=10.0) as (_, _bus, rec):
        start = trio.current_time()
        await rec.wait_for(lambda s: s.type == "provider_status", count=4)
        assert trio.current_time() - start == pytest.approx(30.0, abs=0.01)


async def test_hooks_prepare_classify_default_limits_background(autojump_clock: object) -> None:
    class Picky(ProviderAgent):
        background_ran = False

        def default_limits(self, model: str) -> RateLimits:
            return RateLimits(requests=1, tokens=None, period=60.0)

        async def prepare(self, request: ProviderRequest) -> ProviderRequest:
            if "forbidden" in request.messages[-1].text:
                raise ProviderError(ErrorKind.INVALID_REQUEST, "forbidden word")
            return request

        def classify(self, request: ProviderRequest, completion: Completion) -> Completion:
            if "refuse" in completion.content:
                return attrs.evolve(completion, finish_reason=FinishReason.REFUSAL)
            return completion

        async def background(self) -> None:
            Picky.background_ran = True

    provider = MockProvider(replies=["I refuse"])
    async with running_agent(provider=provider, agent_class=Picky) as (agent, bus, rec):
        assert agent.limits == RateLimits(requests=1)
        await send(bus, request("bad", "a forbidden word", provider="m"))
        [bad] = await rec.wait_for(lambda s: s.is_terminal)
        assert bad.data.kind is ErrorKind.INVALID_REQUEST and provider.calls == 0  # type: ignore[union-attr]
        await send(bus, request("ok", provider="m"))
        [_, ok] = await rec.wait_for(lambda s: s.is_terminal, count=2)
        assert ok.data.finish_reason is FinishReason.REFUSAL  # type: ignore[union-attr]
        assert Picky.background_ran


async def test_config_limits_override_default_limits() -> None:
    class Defaults(ProviderAgent):
        def default_limits(self, model: str) -> RateLimits:
            return RateLimits(requests=10, tokens=1000)

    agent = Defaults(config(limits=RateLimits(tokens=50)), SignalBus(), MockProvider())
    assert agent.limits == RateLimits(requests=10, tokens=50, period=60.0)


def test_health_score_formula() -> None:
    assert health_score(BreakerState.CLOSED, True, 0.0, None, 1.0) == 1.0
    assert health_score(BreakerState.OPEN, True, 0.0, None, 1.0) == 0.0
    assert health_score(BreakerState.HALF_OPEN, True, 0.0, None, 1.0) == 0.5
    assert health_score(BreakerState.CLOSED, False, 0.0, None, 1.0) == 0.25
    # Half the recent requests failed, p50 = 2 s (latency factor 1/2), limiter empty.
    assert health_score(BreakerState.CLOSED, True, 0.5, 2.0, 0.0) == pytest.approx(0.6 * 0.5 + 0.2 * 0.5)
    limits = RateLimits(requests=100, tokens=1000)
    assert headroom_fraction(Headroom(requests=50, tokens=900), limits) == 0.5
    assert headroom_fraction(Headroom(requests=50, tokens=900, retry_at=3.0), limits) == 0.0
    assert headroom_fraction(Headroom(), RateLimits()) == 1.0
    recent = RecentOutcomes(size=4)
    for kind in (ErrorKind.UPSTREAM_5XX, ErrorKind.CANCELLED, ErrorKind.INVALID_REQUEST):
        recent.failure(kind)
    recent.success()
    assert recent.failure_rate == 0.5  # the caller's own mistakes and cancellations do not count


def test_probe_result_type_is_used_for_reachability() -> None:
    assert HealthProbe(False).ok is False


# --- registry --------------------------------------------------------------------------------------


def test_registry_picks_subclasses_and_falls_back_to_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    from duckagents.agents import _registry as registry

    assert registry.agent_class("mock") is ProviderAgent
    for kind in ("openai", "anthropic", "ollama", "tgi"):
        assert issubclass(registry.agent_class(kind), ProviderAgent)
    missing = registry.Registration(
        ("duckagents.providers._mock", "MockProvider"), ("duckagents.agents.nope", "NopeAgent")
    )
    monkeypatch.setitem(registry._BUILTIN, "future", missing)
    assert registry.agent_class("future") is ProviderAgent  # its module is not written yet


def test_registry_builds_providers_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from duckagents.agents import _registry as registry
    from duckagents.errors import ConfigError
    from duckagents.providers import OpenAIProvider

    cfg = ProviderConfig(
        name="gpt", kind="openai", base_url="http://127.0.0.1:9/v1", api_key_env="K", default_model="gpt-4o",
        options={"organization": "org-1"},
    )
    with pytest.raises(ValueError, match="unknown key 'not_a_provider_option'"):
        attrs.evolve(cfg, options={"not_a_provider_option": 1})  # the config refuses what no one reads
    factory = registry.provider_factory(cfg, environ={"K": "sk-registry-0123456789abcdef"})
    provider = factory()
    assert isinstance(provider, OpenAIProvider) and provider.default_model == "gpt-4o"
    assert provider.secrets[0].reveal() == "sk-registry-0123456789abcdef"
    assert factory() is not provider  # a restart gets a fresh client
    with pytest.raises(ConfigError, match="K"):
        registry.provider_factory(cfg, environ={})
    mock_cfg = ProviderConfig(name="m", kind="mock", options={"replies": ["scripted"]})
    mock_factory = registry.provider_factory(mock_cfg)
    assert mock_factory() is mock_factory()  # one mock serves every restart: its script survives
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        ProviderConfig(name="m", kind="mock", options={"bogus": 1})
    with pytest.raises(ConfigError, match="unknown provider kind"):
        registry.provider_class("carrier-pigeon")
    agent = registry.build_agent(mock_cfg, SignalBus())
    assert type(agent) is ProviderAgent and agent.name == "m"


# --- stream timeouts and cost -----------------------------------------------------------------------


async def test_a_stream_with_no_first_chunk_in_time_fails_retryable_and_not_partial(
    autojump_clock: object,
) -> None:
    cfg = config(first_chunk_timeout=2.0)
    async with running_agent(cfg, MockProvider(latency=30.0)) as (agent, bus, rec):
        await send(bus, request("s", provider="m", stream=True))
        [terminal] = await rec.wait_for(lambda s: s.is_terminal)
        failure = terminal.data
        assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.TIMEOUT
        assert failure.retryable and not failure.partial
        assert "no first chunk within 2 s (first_chunk_timeout)" in failure.message
        assert trio.current_time() == pytest.approx(2.0, abs=0.1)  # not the request's deadline
        assert agent.breaker.snapshot(trio.current_time()).consecutive_failures == 1  # the upstream is slow


async def test_a_stream_silent_between_chunks_fails_partial(autojump_clock: object) -> None:
    cfg = config(idle_chunk_timeout=5.0)
    mock = MockProvider(replies=["abcdefgh"], chunk_size=2, chunk_delay=60.0)
    async with running_agent(cfg, mock) as (_, bus, rec):
        await send(bus, request("s", provider="m", stream=True))
        [terminal] = await rec.wait_for(lambda s: s.is_terminal)
        chunks = [s.data for s in rec.signals if isinstance(s.data, ProviderChunk)]
        failure = terminal.data
        assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.TIMEOUT
        assert failure.partial and "no chunk for 5 s (idle_chunk_timeout)" in failure.message
        assert [c.delta for c in chunks] == ["ab"]
    # Chunks that keep coming within the idle timeout are fine, however long the whole stream takes.
    steady = MockProvider(replies=["abcdefgh"], chunk_size=2, chunk_delay=4.0)
    timeouts = config(idle_chunk_timeout=5.0, first_chunk_timeout=5.0)
    async with running_agent(timeouts, steady) as (_, bus, rec):
        await send(bus, request("t", provider="m", stream=True))
        [done] = await rec.wait_for(lambda s: s.is_terminal)
        assert isinstance(done.data, ProviderResponse) and done.data.content == "abcdefgh"


async def test_every_response_carries_its_cost_and_metrics_sum_it_per_model(autojump_clock: object) -> None:
    from duckagents.agents._metrics import COST_MODELS, OTHER_MODELS, ProviderMetrics

    async with running_agent() as (agent, bus, rec):  # a mock: local, free
        await send(bus, request("free", provider="m"))
        [free] = await rec.wait_for(lambda s: s.is_terminal)
        assert isinstance(free.data, ProviderResponse) and free.data.usage.cost == 0.0
    priced = config(cost_per_1k_input=0.001, cost_per_1k_output=0.002)
    async with running_agent(priced) as (agent, bus, rec):
        await send(bus, request("paid", provider="m"))
        [paid] = await rec.wait_for(lambda s: s.is_terminal)
        response = paid.data
        assert isinstance(response, ProviderResponse)
        usage = response.usage
        assert usage.cost == pytest.approx(usage.prompt_tokens * 1e-6 + usage.completion_tokens * 2e-6)
        status = await agent.status()
        assert status.metrics.cost == pytest.approx(usage.cost)
        assert status.metrics.cost_by_model == {"mock-1": pytest.approx(usage.cost)}
    metrics = ProviderMetrics()
    for i in range(COST_MODELS + 10):
        metrics.record_cost(f"model-{i}", 1.0)
    by_model = metrics.snapshot().cost_by_model
    assert len(by_model) == COST_MODELS + 1 and by_model[OTHER_MODELS] == 10.0  # bounded
