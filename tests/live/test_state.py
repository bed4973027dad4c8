"""LiveState: the figures of the live views, folded from envelopes made by the codec from real signals."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckagents.codec import signal_to_dict
from duckagents.errors import ErrorKind
from duckagents.live import LiveState
from duckagents.live._state import AGENTS_MAX, BUCKET_SECONDS, FEED_KEPT, KINDS_MAX
from duckagents.messages import Message, Usage
from duckagents.signals import (
    Headroom,
    LatencySummary,
    MetricsSnapshot,
    Payload,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    SupervisorEvent,
    make_signal,
)

T0 = 1_700_000_000.0


def envelope(data: Payload, source: str, subject: str | None = None, **extra: Any) -> dict[str, Any]:
    signal = make_signal(data, source)
    if subject is not None:
        signal = attrs.evolve(signal, subject=subject)
    return {**signal_to_dict(signal), **extra}


def status(provider: str = "alpha", breaker: str = "closed", **detail: str) -> dict[str, Any]:
    report = ProviderStatus(
        provider,
        0.9,
        breaker,
        Headroom(requests=150.0, tokens=None),
        MetricsSnapshot(total_requests=12, latency=LatencySummary(p50=0.2, p95=0.5, samples=12)),
        True,
        {"agent_id": f"{provider}#3", "provider_kind": "openai", "default_model": "gpt-x",
         "limit_requests": "600", "active": "2", **detail},
    )  # fmt: skip
    return envelope(report, f"/agents/{provider}")


def test_a_status_sets_the_card_figures() -> None:
    state = LiveState()
    state.apply(status(), T0)
    agent = state.agents["alpha"]
    assert (agent.kind, agent.model, agent.health, agent.breaker, agent.up) == (
        "openai",
        "gpt-x",
        0.9,
        "closed",
        True,
    )
    assert (agent.headroom_requests, agent.limit_requests, agent.headroom_tokens) == (150.0, 600.0, None)
    assert agent.restarts == 2  # incarnation 3: two restarts before this page connected
    assert agent.in_flight(T0) == 2  # what the agent said, until attempts are seen live
    assert agent.latency(0.5) == 0.2 and agent.latency(0.95) == 0.5
    assert agent.spend == 0.0  # an agent's spend is in every status (nothing priced was answered yet)


def test_a_breaker_change_flashes_and_counts_down_to_half_open() -> None:
    state = LiveState()
    state.apply(status(), T0)
    assert state.agents["alpha"].flashing(T0) == ""
    state.apply(status(breaker="open", breaker_retry_in="30.000"), T0 + 1)
    agent = state.agents["alpha"]
    assert agent.breaker == "open" and agent.flashing(T0 + 1.5) == "breaker"
    assert agent.half_open_at == T0 + 31 and agent.flashing(T0 + 5) == ""
    forced = status(breaker="forced_open")
    forced["data"]["draining"] = True  # the operator controls' status field
    state.apply(forced, T0 + 2)
    assert agent.breaker == "forced_open" and agent.half_open_at is None and agent.draining


def test_a_crash_marks_the_agent_down_until_its_restart() -> None:
    state = LiveState()
    state.apply(status(), T0)
    crash = SupervisorEvent(
        "agent:alpha", "agent:alpha", "crashed", "RuntimeError: boom", 2, "RuntimeError", "boom"
    )
    state.apply(envelope(crash, "/supervisor/agent:alpha"), T0 + 1)
    agent = state.agents["alpha"]
    assert (
        agent.up is False and agent.flashing(T0 + 1) == "crash" and agent.last_crash == "RuntimeError: boom"
    )
    restarted = SupervisorEvent("agent:alpha", "agent:alpha", "restarted", "", 3)
    state.apply(envelope(restarted, "/supervisor/agent:alpha"), T0 + 2)
    assert agent.up is True and agent.restarts == 3
    # The root's view of the same agent (its supervisor as a child) is not the agent's restart count.
    root = SupervisorEvent("duckagents", "agent:alpha", "restarted", "", 9)
    state.apply(envelope(root, "/supervisor/duckagents"), T0 + 3)
    assert agent.restarts == 3


def _request(rid: str, attempt: int = 0, provider: str | None = None) -> dict[str, Any]:
    request = ProviderRequest(
        rid, (Message.user("hi"),), model="gpt-x", provider=provider, attempt=max(1, attempt)
    )
    if attempt:
        return envelope(request, "/router/dispatch", f"{rid}#{attempt}")
    return envelope(request, "/router")


def test_a_request_that_failed_over_is_one_feed_entry_with_its_attempts() -> None:
    state = LiveState()
    state.apply(_request("r1"), T0)
    state.apply(_request("r1", 1, "alpha"), T0 + 0.01)
    assert state.agents["alpha"].in_flight(T0) == 1 and state.feed["r1"].ok is None
    failure = ProviderErrorData("r1", ErrorKind.UPSTREAM_5XX, "down", True, "alpha", "gpt-x", attempt=1)
    state.apply(envelope(failure, "/agents/alpha", "r1#1"), T0 + 0.1)
    state.apply(_request("r1", 2, "beta"), T0 + 0.11)
    answer = ProviderResponse("r1", "beta", "mock-1", "ok", usage=Usage(3, 4), latency=0.25, attempt=2)
    state.apply(envelope(answer, "/agents/beta", "r1#2"), T0 + 0.36)
    state.apply(envelope(answer, "/router"), T0 + 0.4)
    entry = state.feed["r1"]
    assert (entry.ok, entry.provider, entry.model, entry.attempts, entry.tried) == (
        True, "beta", "mock-1", 2, ["alpha", "beta"]
    )  # fmt: skip
    assert entry.failover and entry.outcome == "stop" and entry.latency == pytest.approx(0.4)
    assert state.agents["alpha"].in_flight(T0 + 1) == 0 and state.agents["beta"].in_flight(T0 + 1) == 0
    assert state.agents["beta"].latency(0.5) == 0.25
    minute = state.recent(60, T0 + 1)
    assert (minute.ok, minute.failed, minute.errors, minute.latencies) == (1, 0, {"upstream_5xx": 1}, [0.25])


def test_a_request_refused_before_any_attempt_counts_as_an_error_of_its_kind() -> None:
    state = LiveState()
    state.apply(_request("r2"), T0)
    refused = ProviderErrorData("r2", ErrorKind.NO_PROVIDER, "nobody", attempt=0)
    state.apply(envelope(refused, "/router"), T0 + 0.01)
    assert state.feed["r2"].ok is False and state.feed["r2"].outcome == "no_provider"
    assert state.recent(60, T0 + 1).errors == {"no_provider": 1}


def test_spend_is_the_last_status_total_plus_the_answers_since() -> None:
    state = LiveState()
    assert state.agent("alpha").spend is None  # nothing known yet
    report = ProviderStatus("alpha", 1.0, "closed", metrics=MetricsSnapshot(cost=1.5))
    reported = envelope(report, "/agents/alpha")
    state.apply(reported, T0)
    answer = ProviderResponse("r", "alpha", "m", usage=Usage(10, 20, cost=0.25), latency=0.1)
    state.apply(envelope(answer, "/agents/alpha", "r#1"), T0 + 1)
    assert state.agents["alpha"].spend == 1.75
    state.apply(reported, T0 + 2)  # the next status includes that answer
    assert state.agents["alpha"].spend == 1.5


def test_the_status_document_is_a_snapshot_and_fleet_replicas_are_kept_apart() -> None:
    state = LiveState()
    document = {
        "object": "list",
        "data": [
            {"provider": "alpha", "kind": "openai", "up": True, "health": 0.5, "breaker_state": "disabled",
             "draining": True, "models": ["gpt-x"], "detail": {"agent_id": "alpha#1"},
             "metrics": {"in_flight": 4, "total_requests": 10, "cost": 0.25,
                         "latency": {"p50": 0.1, "p95": 0.3, "samples": 5}}},
            {"provider": "alpha", "instance": "eu-2", "up": False, "breaker_state": "open"},
            {"not": "an agent"},
        ],
        "in_flight": 4,
        "replicas": [{"instance": "eu-2", "degraded": False}, {"instance": "eu-3", "degraded": True},
                     {"no": "instance"}],
    }  # fmt: skip
    state.apply_status_document(document, T0)
    assert set(state.agents) == {"alpha", "eu-2/alpha"}
    assert state.replicas["eu-3"].degraded and not state.replicas["eu-2"].degraded
    alpha = state.agents["alpha"]
    assert (alpha.breaker, alpha.draining, alpha.in_flight(T0), alpha.model) == ("disabled", True, 4, "gpt-x")
    assert (alpha.requests, alpha.spend) == (10, 0.25)
    assert state.agents["eu-2/alpha"].up is False and set(state.replicas) == {"eu-2", "eu-3"}
    degraded = {
        "type": "fleet_degraded",
        "instance": "eu-2",
        "data": {"instance": "eu-2", "reason": "redis timeout", "expected_replicas": 3},
    }
    state.apply(degraded, T0 + 1)
    assert state.replicas["eu-2"].degraded and state.replicas["eu-2"].reason == "redis timeout"
    rejoined = {
        "type": "fleet_rejoined",
        "instance": "eu-2",
        "data": {"instance": "eu-2", "degraded_for": 4.5, "dropped_signals": 0},
    }
    state.apply(rejoined, T0 + 2)
    assert not state.replicas["eu-2"].degraded and state.replicas["eu-2"].reason == ""


def test_everything_kept_is_bounded() -> None:
    state = LiveState()
    for n in range(FEED_KEPT + 50):
        state.apply(_request(f"r{n}"), T0)
    assert len(state.feed) == FEED_KEPT and "r0" not in state.feed
    for n in range(AGENTS_MAX + 10):
        state.apply(status(f"p{n}"), T0)
    assert len(state.agents) == AGENTS_MAX
    for n in range(KINDS_MAX + 10):
        failure = ProviderErrorData(f"k{n}", ErrorKind.NETWORK, "x", provider="p0", attempt=1)
        event = envelope(failure, "/agents/p0", f"k{n}#1")
        event["data"]["kind"] = f"kind-{n}"
        state.apply(event, T0)
    assert len(state.recent(60, T0).errors) == KINDS_MAX + 1  # the rest are "other"
    state.apply(_request("late"), T0 + BUCKET_SECONDS * 100)
    state.apply(
        envelope(ProviderErrorData("late", ErrorKind.TIMEOUT, "x"), "/router"), T0 + BUCKET_SECONDS * 100
    )
    assert len(state.buckets) == 1  # old buckets go as new ones come


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
KEYS = st.sampled_from(["type", "id", "subject", "instance", "data", "source"])
TYPES = st.sampled_from(["provider_status", "supervisor_event", "provider_request", "provider_response",
                         "provider_error", "control_reply", "fleet_degraded", "fleet_rejoined",
                         "other"])  # fmt: skip
DATA_KEYS = st.sampled_from(["provider", "request_id", "detail", "headroom", "metrics", "latency",
                             "usage", "supervisor", "child", "event", "restarts", "attempt", "kind",
                             "health"])  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(
    st.lists(
        st.tuples(
            TYPES,
            st.dictionaries(KEYS, JSON, max_size=4),
            st.dictionaries(DATA_KEYS, JSON | st.sampled_from(["alpha", "agent:alpha", "r#1"]), max_size=6),
        ),
        max_size=5,
    ),
    JSON,
)
def test_whatever_arrives_never_raises(
    events: list[tuple[str, dict[str, Any], dict[str, Any]]], doc: Any
) -> None:
    state = LiveState()
    for kind, envelope_fields, data in events:
        state.apply({**envelope_fields, "type": kind, "data": data}, T0)
        state.apply({**envelope_fields, "type": kind}, T0)
    state.apply_status_document(doc if isinstance(doc, dict) else {"agents": doc}, T0)
    for agent in state.agents.values():
        agent.in_flight(T0)
        agent.latency(0.5)
        _ = agent.spend
    state.window(T0)
