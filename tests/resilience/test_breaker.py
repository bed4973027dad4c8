"""Circuit breaker: example-based edges, a loopback integration, and a stateful model check."""

from __future__ import annotations

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from duckagents.errors import ErrorKind
from duckagents.providers import kind_for_status
from duckagents.resilience import (
    DEFAULT_TRIPPING_KINDS,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
)
from duckagents.testing import HTTPRequest, LoopbackServer, Reply, serve_loopback

T0 = 1000.0


def trip(breaker: CircuitBreaker, now: float, times: int, kind: ErrorKind = ErrorKind.UPSTREAM_5XX) -> None:
    for _ in range(times):
        assert breaker.allow(now)
        breaker.record_failure(now, kind)


# --- defaults and closed state -------------------------------------------------------------------


def test_defaults_are_the_seeds() -> None:
    config = BreakerConfig()
    assert (config.failure_threshold, config.open_timeout, config.half_open_trials) == (5, 60.0, 1)
    assert (
        config.tripping_kinds
        == DEFAULT_TRIPPING_KINDS
        == {
            ErrorKind.UPSTREAM_5XX,
            ErrorKind.TIMEOUT,
            ErrorKind.NETWORK,
            ErrorKind.OVERLOADED,
            ErrorKind.PROTOCOL,
        }
    )
    assert CircuitBreaker().state(T0) is BreakerState.CLOSED


def test_opens_on_the_fifth_consecutive_failure() -> None:
    breaker = CircuitBreaker()
    trip(breaker, T0, 4)
    assert breaker.state(T0) is BreakerState.CLOSED
    assert breaker.snapshot(T0).consecutive_failures == 4
    trip(breaker, T0 + 1, 1)
    assert breaker.state(T0 + 1) is BreakerState.OPEN
    assert breaker.retry_at(T0 + 1) == T0 + 61
    assert not breaker.allow(T0 + 1)


def test_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker()
    trip(breaker, T0, 4)
    assert breaker.allow(T0)
    breaker.record_success(T0)
    assert breaker.snapshot(T0).consecutive_failures == 0
    trip(breaker, T0, 4)
    assert breaker.state(T0) is BreakerState.CLOSED


@pytest.mark.parametrize(
    "kind",
    [ErrorKind.INVALID_REQUEST, ErrorKind.AUTH, ErrorKind.CONTEXT_LENGTH, ErrorKind.RATE_LIMITED],
)
def test_client_side_errors_do_not_trip(kind: ErrorKind) -> None:
    breaker = CircuitBreaker()
    for _ in range(50):
        assert breaker.allow(T0)
        assert breaker.record_failure(T0, kind) is False
    assert breaker.snapshot(T0).consecutive_failures == 0
    assert breaker.state(T0) is BreakerState.CLOSED


def test_a_400_status_maps_to_a_kind_that_does_not_trip() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1))
    assert breaker.allow(T0)
    assert breaker.record_failure(T0, kind_for_status(400)) is False
    assert breaker.state(T0) is BreakerState.CLOSED


def test_unclassified_failure_counts_and_tripping_kinds_are_configurable() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1))
    assert breaker.allow(T0)
    assert breaker.record_failure(T0) is True
    assert breaker.state(T0) is BreakerState.OPEN

    strict = CircuitBreaker(BreakerConfig(failure_threshold=1, tripping_kinds=frozenset({"rate_limited"})))
    assert strict.config.tripping_kinds == {ErrorKind.RATE_LIMITED}
    assert strict.allow(T0)
    assert strict.record_failure(T0, ErrorKind.UPSTREAM_5XX) is False
    assert strict.allow(T0)
    assert strict.record_failure(T0, ErrorKind.RATE_LIMITED) is True
    assert strict.state(T0) is BreakerState.OPEN


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"open_timeout": -1.0}, {"half_open_trials": 0}]
)
def test_config_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


# --- open and half-open --------------------------------------------------------------------------


def test_open_refuses_until_the_timeout_then_admits_one_trial() -> None:
    breaker = CircuitBreaker()
    trip(breaker, T0, 5)
    assert not breaker.allow(T0 + 59.999)
    assert breaker.state(T0 + 59.999) is BreakerState.OPEN
    assert breaker.state(T0 + 60) is BreakerState.HALF_OPEN
    assert breaker.retry_at(T0 + 60) is None
    assert breaker.allow(T0 + 60)
    assert not breaker.allow(T0 + 60)  # the only trial slot is taken
    assert breaker.snapshot(T0 + 60).trials_in_flight == 1


def test_trial_success_closes() -> None:
    breaker = CircuitBreaker()
    trip(breaker, T0, 5)
    assert breaker.allow(T0 + 60)
    breaker.record_success(T0 + 61)
    snap = breaker.snapshot(T0 + 61)
    assert (snap.state, snap.consecutive_failures, snap.opened_at) == (BreakerState.CLOSED, 0, None)
    assert breaker.allow(T0 + 61) and breaker.allow(T0 + 61)


def test_trial_failure_reopens_with_a_fresh_timeout() -> None:
    breaker = CircuitBreaker()
    trip(breaker, T0, 5)
    assert breaker.allow(T0 + 60)
    breaker.record_failure(T0 + 70, ErrorKind.TIMEOUT)
    assert breaker.state(T0 + 70) is BreakerState.OPEN
    assert breaker.snapshot(T0 + 70).opened_at == T0 + 70
    assert breaker.retry_at(T0 + 70) == T0 + 130
    assert not breaker.allow(T0 + 129.9)
    assert breaker.allow(T0 + 130)


def test_several_trials_and_release_frees_a_slot() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, open_timeout=10.0, half_open_trials=3))
    trip(breaker, T0, 1)
    assert [breaker.allow(T0 + 10) for _ in range(4)] == [True, True, True, False]
    breaker.release(T0 + 11)  # a trial was cancelled: no verdict, slot free again
    assert breaker.state(T0 + 11) is BreakerState.HALF_OPEN
    assert breaker.allow(T0 + 11)
    assert not breaker.allow(T0 + 11)


def test_uncounted_failure_in_half_open_frees_the_slot_without_a_verdict() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, open_timeout=10.0))
    trip(breaker, T0, 1)
    assert breaker.allow(T0 + 10)
    assert breaker.record_failure(T0 + 10, ErrorKind.INVALID_REQUEST) is False
    assert breaker.state(T0 + 10) is BreakerState.HALF_OPEN
    assert breaker.allow(T0 + 10)


def test_a_call_from_before_the_opening_cannot_free_a_trial_slot() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, open_timeout=10.0))
    assert breaker.allow(T0)  # a long stream, admitted while closed
    trip(breaker, T0, 1)
    assert breaker.allow(T0 + 10)  # the one trial
    breaker.release(T0 + 11)  # whichever of the two ended, only one slot may exist
    assert not breaker.allow(T0 + 11)
    breaker.release(T0 + 12)  # now both have ended
    assert breaker.allow(T0 + 12)


def test_late_failure_while_open_does_not_extend_the_timeout() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, open_timeout=10.0))
    assert breaker.allow(T0)
    trip(breaker, T0, 1)
    breaker.record_failure(T0 + 5, ErrorKind.NETWORK)
    assert breaker.retry_at(T0 + 5) == T0 + 10


def test_force_open_holds_until_reset() -> None:
    breaker = CircuitBreaker()
    breaker.force_open(T0)
    assert breaker.state(T0 + 10_000) is BreakerState.FORCED_OPEN
    assert not breaker.allow(T0 + 10_000)
    assert breaker.retry_at(T0 + 10_000) is None
    assert breaker.snapshot(T0 + 10_000).forced
    assert breaker.snapshot(T0 + 10_000).opened_at == T0
    breaker.reset(T0 + 10_001)
    snap = breaker.snapshot(T0 + 10_001)
    assert (snap.state, snap.forced, snap.consecutive_failures) == (BreakerState.CLOSED, False, 0)
    assert breaker.allow(T0 + 10_001)


def test_forced_open_ignores_late_verdicts_of_calls_admitted_before() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1))
    assert breaker.allow(T0) and breaker.allow(T0)
    breaker.force_open(T0 + 1)
    breaker.record_success(T0 + 2)  # a success does not close a forced breaker
    assert breaker.record_failure(T0 + 3, ErrorKind.UPSTREAM_5XX) is True  # counted kind, no transition
    assert breaker.state(T0 + 1000) is BreakerState.FORCED_OPEN
    assert breaker.snapshot(T0 + 1000).opened_at == T0 + 1


def test_disabled_admits_everything_and_never_trips() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1))
    trip(breaker, T0, 1)
    assert breaker.state(T0) is BreakerState.OPEN
    breaker.disable(T0 + 1)
    snap = breaker.snapshot(T0 + 1)
    assert (snap.state, snap.consecutive_failures, snap.opened_at) == (BreakerState.DISABLED, 0, None)
    for _ in range(20):
        assert breaker.allow(T0 + 1)
        assert breaker.record_failure(T0 + 1, ErrorKind.UPSTREAM_5XX) is False
    assert breaker.state(T0 + 1_000) is BreakerState.DISABLED
    assert breaker.retry_at(T0 + 1) is None
    breaker.force_open(T0 + 2)  # operator switches go from any state to any
    assert breaker.state(T0 + 2) is BreakerState.FORCED_OPEN
    breaker.disable(T0 + 3)
    breaker.reset(T0 + 4)
    assert breaker.state(T0 + 4) is BreakerState.CLOSED
    trip(breaker, T0 + 4, 1)
    assert breaker.state(T0 + 4) is BreakerState.OPEN


def test_reset_closes_an_open_breaker() -> None:
    breaker = CircuitBreaker()
    trip(breaker, T0, 5)
    breaker.reset(T0 + 1)
    assert breaker.allow(T0 + 1)
    trip(breaker, T0 + 1, 4)
    assert breaker.state(T0 + 1) is BreakerState.CLOSED


# --- over a real loopback socket -----------------------------------------------------------------


async def test_breaker_shields_a_failing_upstream_over_loopback() -> None:
    """Drive the breaker the way an agent does, against a real HTTP server answering 503 then 200."""
    healthy = False

    async def app(request: HTTPRequest, fault: object) -> Reply:
        return Reply.json({"ok": True}) if healthy else Reply.json({"error": "down"}, status=503)

    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, open_timeout=30.0))
    server = LoopbackServer(app)
    async with serve_loopback(server), httpx.AsyncClient(base_url=server.url) as client:

        async def call(now: float) -> str:
            if not breaker.allow(now):
                return "refused"
            response = await client.get("/v1/ping")
            if response.status_code >= 400:
                breaker.record_failure(now, kind_for_status(response.status_code))
                return "failed"
            breaker.record_success(now)
            return "ok"

        assert [await call(T0) for _ in range(5)] == ["failed"] * 3 + ["refused"] * 2
        assert server.request_count == 3  # refused calls never reached the upstream
        healthy = True
        assert await call(T0 + 29) == "refused"
        assert await call(T0 + 30) == "ok"  # the half-open trial
        assert breaker.state(T0 + 30) is BreakerState.CLOSED
        assert server.request_count == 4


# --- stateful model check ------------------------------------------------------------------------


@attrs.define
class Call:
    """A call the breaker admitted; ``episode`` is the half-open episode it is a trial of, or None."""

    episode: int | None


class BreakerMachine(RuleBasedStateMachine):
    """Compare the breaker with a reference model that tracks every admitted call explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.calls: list[Call] = []
        # reference model
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at: float | None = None
        self.episode = 0

    @initialize(
        threshold=st.integers(1, 4),
        timeout=st.sampled_from([0.0, 1.0, 10.0, 60.0]),
        trials=st.integers(1, 3),
        kinds=st.one_of(st.just(DEFAULT_TRIPPING_KINDS), st.frozensets(st.sampled_from(list(ErrorKind)))),
    )
    def setup(self, threshold: int, timeout: float, trials: int, kinds: frozenset[ErrorKind]) -> None:
        self.config = BreakerConfig(threshold, timeout, trials, kinds)
        self.breaker = CircuitBreaker(self.config)

    # --- the model ---

    def model_advance(self) -> None:
        if (
            self.state is BreakerState.OPEN
            and self.opened_at is not None
            and self.now >= self.opened_at + self.config.open_timeout
        ):
            self.state = BreakerState.HALF_OPEN
            self.episode += 1

    def model_open(self) -> None:
        self.state, self.opened_at = BreakerState.OPEN, self.now

    def model_close(self) -> None:
        self.state, self.failures, self.opened_at = BreakerState.CLOSED, 0, None

    def current_trials(self) -> int:
        if self.state is not BreakerState.HALF_OPEN:
            return 0
        return sum(1 for call in self.calls if call.episode == self.episode)

    # --- rules ---

    @rule(dt=st.one_of(st.sampled_from([0.0, 0.5, 1.0, 9.999, 10.0, 59.999, 60.0]), st.floats(0, 150)))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def allow(self) -> None:
        self.model_advance()
        allowed = self.breaker.allow(self.now)
        if self.state in (BreakerState.CLOSED, BreakerState.DISABLED):
            assert allowed
        elif self.state is BreakerState.OPEN:
            assert not allowed, "admitted while open before the timeout"
        elif self.state is BreakerState.FORCED_OPEN:
            assert not allowed, "admitted while forced open"
        else:
            trials = self.current_trials()
            if allowed:
                assert trials < self.config.half_open_trials
            if all(call.episode == self.episode for call in self.calls):
                # With no older call outstanding the breaker knows its trials exactly: no lost slots.
                assert allowed == (trials < self.config.half_open_trials)
        if allowed:
            episode = self.episode if self.state is BreakerState.HALF_OPEN else None
            self.calls.append(Call(episode))

    @precondition(lambda self: self.calls)
    @rule(index=st.integers(0, 1000))
    def succeed(self, index: int) -> None:
        self.calls.pop(index % len(self.calls))
        self.model_advance()
        self.breaker.record_success(self.now)
        if self.state is BreakerState.CLOSED:
            self.failures = 0
        elif self.state is BreakerState.HALF_OPEN:
            self.model_close()

    @precondition(lambda self: self.calls)
    @rule(index=st.integers(0, 1000), kind=st.one_of(st.none(), st.sampled_from(list(ErrorKind))))
    def fail(self, index: int, kind: ErrorKind | None) -> None:
        self.calls.pop(index % len(self.calls))
        self.model_advance()
        counted = self.state is not BreakerState.DISABLED and (
            kind is None or kind in self.config.tripping_kinds
        )
        assert self.breaker.record_failure(self.now, kind) is counted
        if not counted:
            return
        if self.state is BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= self.config.failure_threshold:
                self.model_open()
        elif self.state is BreakerState.HALF_OPEN:
            self.failures += 1
            self.model_open()

    @precondition(lambda self: self.calls)
    @rule(index=st.integers(0, 1000))
    def release(self, index: int) -> None:
        self.calls.pop(index % len(self.calls))
        self.breaker.release(self.now)

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open(self.now)
        self.model_open()
        self.state = BreakerState.FORCED_OPEN

    @rule()
    def disable(self) -> None:
        self.breaker.disable(self.now)
        self.model_close()
        self.state = BreakerState.DISABLED

    @rule()
    def reset(self) -> None:
        self.breaker.reset(self.now)
        self.model_close()

    # --- invariants ---

    @invariant()
    def same_state_as_the_model(self) -> None:
        self.model_advance()
        snap = self.breaker.snapshot(self.now)
        assert snap.state is self.state
        assert snap.consecutive_failures == self.failures
        assert snap.opened_at == self.opened_at
        assert snap.forced == (self.state is BreakerState.FORCED_OPEN)
        expected_retry = (
            self.opened_at + self.config.open_timeout
            if self.state is BreakerState.OPEN and self.opened_at is not None
            else None
        )
        assert self.breaker.retry_at(self.now) == expected_retry

    @invariant()
    def half_open_trials_are_bounded(self) -> None:
        self.model_advance()
        assert self.current_trials() <= self.config.half_open_trials
        # The breaker's own count may over-estimate (older calls) but never under-estimate.
        assert self.breaker.snapshot(self.now).trials_in_flight >= self.current_trials()


BreakerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_matches_the_model = BreakerMachine.TestCase
