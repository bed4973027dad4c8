"""Operator controls through the router (router.controls) over a real tree of mock agents: breaker switches,
drain/resume, model listing, the control_reply every control gets, and status that is current to the last
request."""

from __future__ import annotations

import json

import pytest
import trio

from duckagents.errors import ControlError, ErrorKind, ProviderError
from duckagents.providers import MockProvider
from duckagents.resilience import BreakerConfig
from duckagents.router import CONTROL_SOURCE, DISPATCH, is_final
from duckagents.signals import ControlAction, ControlReply, ProgressEvent, ProviderResponse, make_signal
from tests.helpers import Recorder, assert_one_terminal_per_request, mock_config, running_tree


def replies(rec: Recorder) -> list[ControlReply]:
    return [s.data for s in rec.of("control_reply") if isinstance(s.data, ControlReply)]


async def test_force_open_takes_the_agent_out_until_reset(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(), "b": MockProvider()}
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        router = tree.router
        reply = await router.controls.force_open_breaker("a", principal="token:OPS")
        assert (reply.ok, reply.breaker_state, reply.principal, reply.provider) == (
            True, "forced_open", "token:OPS", "a"
        )
        # The router routes by it as soon as the control returned, without waiting for a status.
        assert router.views["a"].breaker_state == "forced_open"
        assert [(await router.complete("hi")).provider for _ in range(3)] == ["b"] * 3
        assert mocks["a"].calls == 0
        [status_a, _] = await router.status()
        assert status_a.breaker_state == "forced_open"
        await rec.wait_for(lambda s: s.type == "provider_status" and s.data.breaker_state == "forced_open")
        with pytest.raises(ProviderError) as info:  # pinned to a forced-open agent: refused at once
            await router.complete("hi", provider="a")
        assert info.value.kind is ErrorKind.NO_PROVIDER and "forced open" in info.value.message
        await router.controls.reset_breaker("a")
        assert (await router.complete("hi")).provider == "a"
    [forced, reset] = replies(rec)
    assert (forced.action, reset.action) == (ControlAction.BREAKER_FORCE_OPEN, ControlAction.BREAKER_RESET)
    assert reset.breaker_state == "closed" and reset.principal == "api"
    controls = rec.of("provider_control", source=CONTROL_SOURCE)
    assert [(s.provider, s.data.action) for s in controls] == [  # type: ignore[union-attr]
        ("a", ControlAction.BREAKER_FORCE_OPEN), ("a", ControlAction.BREAKER_RESET)
    ]
    # Each reply answers its control (same subject) and says who did what.
    assert [s.subject for s in rec.of("control_reply")] == [s.subject for s in controls]
    assert_one_terminal_per_request(rec)


async def test_disabled_breaker_never_trips(autojump_clock: object) -> None:
    mocks = {"a": MockProvider()}
    mocks["a"].fail_next(ErrorKind.UPSTREAM_5XX, count=6)
    breaker = BreakerConfig(failure_threshold=2)
    async with running_tree(mock_config("a", breaker=breaker), mocks=mocks, max_attempts=1) as (tree, rec):
        await tree.router.controls.disable_breaker("a", principal="cli")
        for _ in range(6):
            with pytest.raises(ProviderError) as info:
                await tree.router.complete("hi")
            assert info.value.kind is ErrorKind.UPSTREAM_5XX and info.value.breaker_state == "disabled"
        assert (await tree.router.complete("hi")).provider == "a"
        [status] = await tree.router.status()
        assert status.breaker_state == "disabled" and status.metrics.failed_requests == 6
    assert_one_terminal_per_request(rec)


async def test_drain_sends_no_new_attempts_and_lets_those_in_flight_finish(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(latency=1.0), "b": MockProvider(latency=1.0)}
    async with running_tree(
        mock_config("a"), mock_config("b"), mocks=mocks, strategy="round_robin"
    ) as (tree, rec):
        router = tree.router
        results: list[ProviderResponse] = []

        async def one(i: int) -> None:
            await trio.sleep(i * 0.1)
            results.append(await router.complete(f"q{i}", request_id=f"q{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
            await trio.sleep(1.05)  # a has attempts in flight
            assert router.views["a"].active > 0
            reply = await router.controls.drain("a", principal="token:OPS")
            assert reply.draining and router.views["a"].draining
            await router.bus.publish(make_signal(ProgressEvent("test", "mark", "drained"), "/test"))
            assert await router.controls.wait_idle("a", within=5.0)
        assert len(results) == 40  # nothing lost
        mark = next(i for i, s in enumerate(rec.signals) if s.type == "progress" and s.source == "/test")
        later = [s for s in rec.signals[mark:] if s.type == "provider_request" and s.provider == "a"]
        assert later == []
        served_by_a = [r for r in results if r.provider == "a"]
        assert served_by_a  # the attempts in flight at the drain finished there
        [status_a, _] = await router.status()
        assert status_a.draining
        await router.controls.resume("a")
        assert not router.views["a"].draining
        assert {(await router.complete("x")).provider for _ in range(4)} == {"a", "b"}
    assert_one_terminal_per_request(rec)


async def test_a_draining_agent_refuses_new_attempts_as_retryable(autojump_clock: object) -> None:
    """An attempt that reaches the agent after it drained (sent by someone else) goes elsewhere."""
    mocks = {"a": MockProvider(), "b": MockProvider()}
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        agent = tree.agents["a"]
        await tree.router.controls.drain("a")
        tree.router.views["a"].draining = False  # as if the router had not learnt it yet
        response = await tree.router.complete("hi", request_id="late")
        assert (response.provider, response.attempt) == ("b", 2)
        assert agent.draining and mocks["a"].calls == 0
        [refusal] = rec.terminals("late#1")
        assert refusal.data.kind is ErrorKind.SHUTDOWN and "draining" in refusal.data.message  # type: ignore[union-attr]
        assert [(a.provider, a.outcome) for a in response.attempts] == [("a", "shutdown"), ("b", "response")]
    assert_one_terminal_per_request(rec)


async def test_bad_controls_are_clear_errors(autojump_clock: object) -> None:
    async with running_tree(mock_config("a"), mocks={"a": MockProvider()}) as (tree, rec):
        controls = tree.router.controls
        with pytest.raises(ControlError, match="unknown provider 'nope'; known: a"):
            await controls.drain("nope")
        with pytest.raises(ControlError, match="unknown control 'explode'"):
            await controls.send("a", "explode")
        with pytest.raises(ControlError, match="no local models to load"):
            await controls.load_model("a", "m")
        with pytest.raises(ControlError, match="model_pull needs the model"):
            await controls.send("a", ControlAction.MODEL_PULL)
        with pytest.raises(ControlError, match="no tree"):  # running_tree's tree is an open_tree: it has one
            tree.router.controls.reloader = None
            await controls.reload()
        models = await controls.list_models("a")
        assert [m.name for m in models] == ["mock-1"]
    failed = [r for r in replies(rec) if not r.ok]
    assert [(r.action, r.provider) for r in failed] == [(ControlAction.MODEL_LOAD, "a")]


async def test_status_counts_each_request_as_it_ends(autojump_clock: object) -> None:
    mocks = {"a": MockProvider(latency=0.5), "b": MockProvider()}
    mocks["a"].fail_next(ErrorKind.UPSTREAM_5XX)
    # health_interval 1000 s: no agent reports during the test, the counts come from the router's view.
    async with running_tree(mock_config("a"), mock_config("b", priority=1), mocks=mocks) as (tree, rec):
        router = tree.router
        response = await router.complete("hi", request_id="r1")
        assert response.provider == "b"
        a, b = await router.status()
        assert (a.metrics.total_requests, a.metrics.failed_requests) == (1, 1)
        assert (b.metrics.total_requests, b.metrics.successful_requests, b.metrics.in_flight) == (1, 1, 0)
        await router.complete("again", provider="b")
        a, b = await router.status()
        assert b.metrics.total_requests == 2 and b.metrics.latency.samples == 2
        # Failover made visible: the final result lists each attempt.
        assert [(x.attempt, x.provider, x.outcome) for x in response.attempts] == [
            (1, "a", "upstream_5xx"), (2, "b", "response")
        ]
        assert response.attempts[0].latency == pytest.approx(0.5)
        document = router.status_document()
        assert json.loads(json.dumps(document)) == document  # plain JSON
        assert document["object"] == "list" and document["in_flight"] == 0 and not document["closing"]
        [doc_a, doc_b] = document["data"]
        fields = ("provider", "kind", "breaker_state", "draining", "serving", "down")
        assert {k: doc_a[k] for k in fields} == {
            "provider": "a", "kind": "mock", "breaker_state": "closed", "draining": False, "serving": True,
            "down": None,
        }
        assert (doc_a["metrics"]["total_requests"], doc_a["metrics"]["failed_requests"]) == (1, 1)
        assert doc_b["metrics"]["successful_requests"] == 2 and doc_b["up"]
        assert doc_b["health"] == pytest.approx(1.0) and doc_b["metrics"]["in_flight"] == 0
        assert set(doc_b["metrics"]["latency"]) == {"p50", "p95", "p99", "samples"}
        assert doc_b["headroom"] == {"requests": None, "tokens": None, "retry_after": None}
    finals = [s.data for s in rec.signals if is_final(s)]
    assert [len(f.attempts) for f in finals] == [2, 0]  # type: ignore[union-attr]
    assert all(s.source != DISPATCH or s.type != "control_reply" for s in rec.signals)
