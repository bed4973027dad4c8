"""The tree's metrics fed from signals, without a server: what each signal does to which figure."""

from __future__ import annotations

import attrs
from prometheus_client.parser import text_string_to_metric_families

from duckagents.bus import SignalBus
from duckagents.config import ProviderConfig
from duckagents.errors import ErrorKind
from duckagents.http import Metrics
from duckagents.http._metrics import MAX_MODELS
from duckagents.messages import Message, Usage
from duckagents.router import DISPATCH, SOURCE, attempt_subject
from duckagents.signals import (
    Headroom,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    Signal,
    SupervisorEvent,
    make_signal,
)

PROVIDERS = (
    ProviderConfig(name="a", kind="mock", models=("m1",), cost_per_1k_input=2.0, cost_per_1k_output=4.0),
    ProviderConfig(name="b", kind="mock", models=("m1", "m2")),
)


def figures(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def at(time_us: int, signal: Signal) -> Signal:
    return attrs.evolve(signal, time=time_us)


def test_a_request_with_a_failover_is_counted_once_with_its_attempts() -> None:
    m = Metrics(SignalBus(), PROVIDERS, in_flight=lambda: 0)
    rid = "r1"
    request = ProviderRequest(rid, (Message.user("hi"),), model="m1")
    m.observe(at(1_000_000, Signal(request.TYPE, SOURCE, request, subject=rid)))
    for attempt, provider in ((1, "b"), (2, "a")):
        dispatched = attrs.evolve(request, provider=provider, attempt=attempt, deadline=100.0)
        m.observe(
            Signal(
                request.TYPE, DISPATCH, dispatched, subject=attempt_subject(rid, attempt), provider=provider
            )
        )
        if attempt == 1:
            assert m.attempts_in_flight(0.0) == {"a": 0, "b": 1}
            failure = ProviderErrorData(rid, ErrorKind.UPSTREAM_5XX, "x", provider="b", model="m1", attempt=1)
            m.observe(
                Signal(failure.TYPE, "/agents/b", failure, subject=attempt_subject(rid, 1), provider="b")
            )
    response = ProviderResponse(
        rid, "a", "m1", "ok", usage=Usage(100, 50), latency=0.2, time_to_first_chunk=0.05, attempt=2
    )
    m.observe(Signal(response.TYPE, "/agents/a", response, subject=attempt_subject(rid, 2), provider="a"))
    m.observe(at(1_750_000, Signal(response.TYPE, SOURCE, response, subject=rid, provider="a")))
    got = figures(m)

    def f(name: str, **labels: str) -> float:
        return got.get((name, frozenset(labels.items())), 0.0)

    assert f("duckagents_requests_started_total") == 1
    assert f("duckagents_requests_total", provider="a", model="m1", kind="ok") == 1
    assert f("duckagents_attempts_total", provider="b", model="m1", kind="upstream_5xx") == 1
    assert f("duckagents_attempts_total", provider="a", model="m1", kind="ok") == 1
    assert f("duckagents_failovers_total", provider="a") == 1
    # duration from intake to final (0.75 s), not the answering attempt's own 0.2 s
    assert f("gen_ai_client_operation_duration_seconds_sum", provider="a", model="m1", kind="ok") == 0.75
    assert f("gen_ai_client_operation_time_to_first_chunk_seconds_sum", provider="a", model="m1") == 0.05
    assert f("gen_ai_client_token_usage_sum", provider="a", model="m1", token_type="input") == 100
    assert f("gen_ai_client_token_usage_sum", provider="a", model="m1", token_type="output") == 50
    assert f("duckagents_cost_usd_total", provider="a", model="m1") == (100 * 2.0 + 50 * 4.0) / 1000
    assert f("duckagents_attempts_in_flight", provider="a") == 0 and f("duckagents_requests_in_flight") == 0


@attrs.frozen
class CostedUsage(Usage):
    """A usage that carries its own cost, as responses will (another issue adds ``usage.cost``)."""

    cost: float = 0.0


def test_usage_cost_wins_over_configured_prices() -> None:
    m = Metrics(SignalBus(), PROVIDERS)
    response = ProviderResponse("r", "a", "m1", usage=CostedUsage(1000, 1000, cost=0.125))
    m.observe(Signal(response.TYPE, SOURCE, response, subject="r", provider="a"))
    assert figures(m)[("duckagents_cost_usd_total", frozenset({("provider", "a"), ("model", "m1")}))] == 0.125


def test_status_and_supervisor_events_set_the_gauges_and_readiness_inputs() -> None:
    m = Metrics(SignalBus(), PROVIDERS)
    status = ProviderStatus("a", 0.5, "half_open", Headroom(requests=3.0, tokens=None), reachable=False)
    m.observe(make_signal(status, "/agents/a"))
    got = figures(m)
    assert got[("duckagents_breaker_state", frozenset({("provider", "a"), ("state", "half_open")}))] == 1
    assert got[("duckagents_breaker_state", frozenset({("provider", "a"), ("state", "closed")}))] == 0
    assert got[("duckagents_provider_health", frozenset({("provider", "a")}))] == 0.5
    assert got[("duckagents_provider_reachable", frozenset({("provider", "a")}))] == 0
    assert got[("duckagents_ratelimit_headroom_requests", frozenset({("provider", "a")}))] == 3
    assert ("duckagents_ratelimit_headroom_tokens", frozenset({("provider", "a")})) not in got  # unlimited
    m.observe_status(attrs.evolve(status, headroom=Headroom()))
    assert ("duckagents_ratelimit_headroom_requests", frozenset({("provider", "a")})) not in figures(m)
    for event in ("crashed", "restarted", "crashed", "gave_up"):
        m.observe(
            make_signal(SupervisorEvent("duckagents", "agent:a", event, reason="boom"), "/supervisor/x")
        )
    assert m.down == {"agent:a": "gave_up: boom"}
    got = figures(m)
    assert got[("duckagents_restarts_total", frozenset({("child", "agent:a")}))] == 1
    assert (
        got[("duckagents_supervisor_events_total", frozenset({("child", "agent:a"), ("event", "crashed")}))]
        == 2
    )
    m.observe(make_signal(SupervisorEvent("duckagents", "agent:a", "started"), "/supervisor/x"))
    assert m.down == {}


def test_model_labels_are_bounded_and_made_up_names_are_unknown() -> None:
    m = Metrics(SignalBus(), PROVIDERS)
    for i in range(MAX_MODELS + 10):
        response = ProviderResponse(f"r{i}", "b", f"upstream-model-{i}")
        m.observe(Signal(response.TYPE, SOURCE, response, subject=f"r{i}", provider="b"))
    failure = ProviderErrorData("x", ErrorKind.NO_PROVIDER, "none", model="made-up")
    m.observe(Signal(failure.TYPE, SOURCE, failure, subject="x"))
    models = {dict(labels)["model"] for (name, labels) in figures(m) if name == "duckagents_requests_total"}
    assert "other" in models and "unknown" in models and "made-up" not in models
    assert len(models) == MAX_MODELS + 2


def test_attempts_whose_end_was_never_seen_stop_counting_after_their_deadline() -> None:
    m = Metrics(SignalBus(), PROVIDERS)
    request = ProviderRequest("r", (Message.user("hi"),), provider="a", deadline=10.0)
    m.observe(Signal(request.TYPE, DISPATCH, request, subject=attempt_subject("r", 1), provider="a"))
    assert m.attempts_in_flight(now=20.0)["a"] == 1
    assert m.attempts_in_flight(now=100.0)["a"] == 0


async def test_run_counts_from_the_bus_and_reports_drops() -> None:
    import trio

    bus = SignalBus()
    m = Metrics(bus, PROVIDERS, buffer=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        for _ in range(50):  # published faster than the task reads: the bounded subscription drops
            bus.publish_nowait(make_signal(SupervisorEvent("s", "agent:a", "restarted"), "/supervisor/s"))
        await trio.sleep(0.01)
        got = figures(m)
        restarts = got[("duckagents_restarts_total", frozenset({("child", "agent:a")}))]
        dropped = got[("duckagents_metrics_signals_dropped_total", frozenset())]
        assert restarts + dropped == 50 and dropped > 0
        bus.close()
    assert m.dropped == 0  # unsubscribed
