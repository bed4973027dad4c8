"""Rate limiter: example-based edges, properties, a loopback integration, and a stateful window check."""

from __future__ import annotations

import copy

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from duckagents.providers import RateLimitInfo, parse_rate_limit
from duckagents.resilience import Admission, RateLimiter, RateLimits, Reservation
from duckagents.signals import Headroom
from duckagents.testing import HTTPRequest, LoopbackServer, Reply, serve_loopback

T0 = 1000.0


def admitted(admission: Admission) -> Reservation:
    assert admission.admitted and admission.reservation is not None, admission
    return admission.reservation


# --- requests and tokens -------------------------------------------------------------------------


def test_burst_up_to_the_limit_then_steady_refill() -> None:
    limiter = RateLimiter(RateLimits(requests=3, period=60.0))
    for _ in range(3):
        admitted(limiter.admit(T0))
    refused = limiter.admit(T0)
    assert refused == Admission(admitted=False, retry_at=T0 + 20.0)
    assert not limiter.admit(T0 + 19.9).admitted
    admitted(limiter.admit(T0 + 20.0))
    assert limiter.admit(T0 + 20.0).retry_at == pytest.approx(T0 + 40.0)


def test_tokens_limit_and_retry_at() -> None:
    limiter = RateLimiter(RateLimits(tokens=1000, period=60.0))
    assert admitted(limiter.admit(T0, 600)) == Reservation(tokens=600, at=T0)
    refused = limiter.admit(T0, 600)
    assert not refused.admitted
    assert refused.retry_at == pytest.approx(T0 + 200 / (1000 / 60))  # 12 s to refill 200 tokens
    assert refused.retry_at is not None
    admitted(limiter.admit(refused.retry_at, 600))


def test_more_tokens_than_the_limit_is_never_admissible() -> None:
    limiter = RateLimiter(RateLimits(requests=10, tokens=100))
    assert limiter.admit(T0, 101) == Admission(admitted=False, retry_at=None, reservation=None)
    assert limiter.admit(T0 + 1e6, 101) == Admission(admitted=False)
    admitted(limiter.admit(T0, 100))


def test_both_limits_apply_together() -> None:
    limiter = RateLimiter(RateLimits(requests=2, tokens=100, period=10.0))
    admitted(limiter.admit(T0, 10))
    admitted(limiter.admit(T0, 10))
    # tokens would allow it, requests do not: refill of one request takes 10 / 2 = 5 s
    assert limiter.admit(T0, 10).retry_at == T0 + 5.0
    limiter = RateLimiter(RateLimits(requests=2, tokens=100, period=10.0))
    admitted(limiter.admit(T0, 100))
    # requests would allow it, tokens do not: 50 tokens at 10 per second take 5 s
    assert limiter.admit(T0, 50).retry_at == pytest.approx(T0 + 5.0)


def test_unlimited_never_blocks() -> None:
    limiter = RateLimiter(RateLimits())
    for _ in range(10_000):
        admitted(limiter.admit(T0, 1_000_000))
    limiter.observe(T0, RateLimitInfo(remaining_requests=0, remaining_tokens=0, reset_requests=60.0))
    admitted(limiter.admit(T0))
    assert limiter.headroom(T0) == Headroom(requests=None, tokens=None, retry_at=None)


@pytest.mark.parametrize(
    "kwargs", [{"requests": 0}, {"tokens": -5}, {"period": 0.0}, {"requests": 1, "period": -1.0}]
)
def test_limits_reject_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimits(**kwargs)  # type: ignore[arg-type]


def test_negative_token_counts_are_refused() -> None:
    limiter = RateLimiter(RateLimits(tokens=10))
    with pytest.raises(ValueError):
        limiter.admit(T0, -1)
    with pytest.raises(ValueError):
        limiter.settle(admitted(limiter.admit(T0, 1)), -1, T0)


# --- settle and cancel ---------------------------------------------------------------------------


def test_settle_refunds_an_overestimate() -> None:
    limiter = RateLimiter(RateLimits(tokens=1000, period=60.0))
    reservation = admitted(limiter.admit(T0, 600))
    assert limiter.headroom(T0).tokens == 400
    limiter.settle(reservation, 100, T0)
    assert limiter.headroom(T0).tokens == 900
    admitted(limiter.admit(T0, 900))


def test_settle_charges_an_underestimate_into_debt() -> None:
    limiter = RateLimiter(RateLimits(tokens=1000, period=60.0))
    reservation = admitted(limiter.admit(T0, 1000))
    limiter.settle(reservation, 1500, T0)  # 500 tokens of debt
    headroom = limiter.headroom(T0)
    assert (headroom.requests, headroom.tokens) == (None, 0.0)
    assert headroom.retry_at == pytest.approx(T0 + 30.0)
    refused = limiter.admit(T0, 0)  # even a free request waits for the debt to be paid back
    assert not refused.admitted and refused.retry_at == pytest.approx(T0 + 30.0)
    assert limiter.admit(T0, 100).retry_at == pytest.approx(T0 + 36.0)


def test_refund_never_overfills_the_bucket() -> None:
    limiter = RateLimiter(RateLimits(tokens=1000, period=60.0))
    reservation = admitted(limiter.admit(T0, 500))
    limiter.settle(reservation, 0, T0 + 600)  # long after the bucket refilled on its own
    assert limiter.headroom(T0 + 600).tokens == 1000


def test_cancel_refunds_request_and_tokens() -> None:
    limiter = RateLimiter(RateLimits(requests=1, tokens=100, period=60.0))
    reservation = admitted(limiter.admit(T0, 80))
    assert not limiter.admit(T0, 10).admitted
    limiter.cancel(reservation, T0)
    assert limiter.headroom(T0) == Headroom(requests=1.0, tokens=100.0, retry_at=None)
    admitted(limiter.admit(T0, 100))


# --- observe -------------------------------------------------------------------------------------


def test_observe_lowers_but_never_raises_our_count() -> None:
    limiter = RateLimiter(RateLimits(requests=10, tokens=1000, period=60.0))
    limiter.observe(T0, RateLimitInfo(remaining_requests=2, remaining_tokens=5000))
    assert limiter.headroom(T0) == Headroom(requests=2.0, tokens=1000.0)
    limiter.observe(T0, RateLimitInfo(remaining_requests=8))
    assert limiter.headroom(T0).requests == 2.0
    admitted(limiter.admit(T0))
    admitted(limiter.admit(T0))
    assert limiter.admit(T0).retry_at == pytest.approx(T0 + 6.0)  # our own refill: 10 per 60 s


def test_observe_reset_keeps_our_refill_behind_the_upstreams() -> None:
    # We allow 60 per 60 s (1 per second); the upstream says 0 left and full again only in 120 s.
    limiter = RateLimiter(RateLimits(requests=60, period=60.0))
    limiter.observe(T0, RateLimitInfo(limit_requests=60, remaining_requests=0, reset_requests=120.0))
    # Our refill starts at T0 + 60 so that it reaches 60 exactly at T0 + 120, never above the upstream.
    assert limiter.admit(T0).retry_at == pytest.approx(T0 + 61.0)
    assert limiter.headroom(T0 + 120.0).requests == pytest.approx(60.0)
    # An upstream that refills faster than we do changes nothing about our own pace.
    fast = RateLimiter(RateLimits(requests=60, period=60.0))
    fast.observe(T0, RateLimitInfo(remaining_requests=0, reset_requests=1.0))
    assert fast.admit(T0).retry_at == pytest.approx(T0 + 1.0)


def test_retry_after_blocks_every_admission_until_it_passes() -> None:
    limiter = RateLimiter(RateLimits(requests=100, tokens=10_000))
    limiter.observe(T0, RateLimitInfo(retry_after=5.0))
    assert limiter.blocked_until == T0 + 5.0
    assert limiter.admit(T0 + 4.999, 0) == Admission(admitted=False, retry_at=T0 + 5.0)
    assert limiter.headroom(T0 + 1).retry_at == T0 + 5.0
    limiter.observe(T0 + 1, RateLimitInfo(retry_after=1.0))  # a shorter block never shortens the first
    assert limiter.admit(T0 + 4.0).retry_at == T0 + 5.0
    admitted(limiter.admit(T0 + 5.0, 10_000))


@pytest.mark.parametrize("hint", [float("nan"), float("inf"), float("-inf"), -3.0])
def test_garbage_wait_hints_are_ignored(hint: float) -> None:
    limiter = RateLimiter(RateLimits(requests=1, period=1.0))
    limiter.observe(T0, RateLimitInfo(retry_after=hint, remaining_requests=0, reset_requests=hint))
    assert limiter.blocked_until is None
    assert limiter.admit(T0).retry_at == pytest.approx(T0 + 1.0)  # our own refill, nothing more


def test_long_wait_hints_are_capped_at_max_wait() -> None:
    limiter = RateLimiter(RateLimits(requests=10, period=1.0, max_wait=30.0))
    limiter.observe(T0, RateLimitInfo(retry_after=999_999_999.0))
    assert limiter.blocked_until == T0 + 30.0
    capped = RateLimiter(RateLimits(requests=10, period=1.0))
    capped.observe(T0, RateLimitInfo(remaining_requests=0, limit_requests=10, reset_requests=1e12))
    assert capped.admit(T0).retry_at is not None and capped.admit(T0).retry_at <= T0 + 300.0  # type: ignore[operator]


# --- headroom ------------------------------------------------------------------------------------


def test_headroom_values() -> None:
    limiter = RateLimiter(RateLimits(requests=4, tokens=400, period=4.0))
    assert limiter.headroom(T0) == Headroom(requests=4.0, tokens=400.0, retry_at=None)
    admitted(limiter.admit(T0, 300))
    assert limiter.headroom(T0) == Headroom(requests=3.0, tokens=100.0, retry_at=None)
    assert limiter.headroom(T0 + 0.5) == Headroom(requests=3.5, tokens=150.0, retry_at=None)
    for _ in range(3):
        admitted(limiter.admit(T0, 0))
    assert limiter.headroom(T0) == Headroom(requests=0.0, tokens=100.0, retry_at=T0 + 1.0)
    assert limiter.headroom(T0 + 100) == Headroom(requests=4.0, tokens=400.0, retry_at=None)


# --- properties ----------------------------------------------------------------------------------

limits_strategy = st.builds(
    RateLimits,
    requests=st.one_of(st.none(), st.integers(1, 20)),
    tokens=st.one_of(st.none(), st.integers(1, 5000)),
    period=st.sampled_from([0.1, 1.0, 7.0, 60.0]),
)


@settings(max_examples=200, deadline=None)
@given(
    limits=limits_strategy,
    start=st.floats(0, 1e6),
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(0, 6000)), min_size=1, max_size=30),
    probe=st.integers(0, 6000),
)
def test_retry_at_is_honest(
    limits: RateLimits, start: float, steps: list[tuple[float, int]], probe: int
) -> None:
    """After any history, a refusal's retry_at is a time at which that very request is admitted."""
    limiter = RateLimiter(limits)
    now = start
    for dt, tokens in steps:
        now += dt
        limiter.admit(now, tokens)
    answer = limiter.admit(now, probe)
    if answer.admitted:
        return
    if limits.tokens is not None and probe > limits.tokens:
        assert answer.retry_at is None
        return
    assert answer.retry_at is not None and answer.retry_at > now
    admitted(limiter.admit(answer.retry_at, probe))


def test_retry_at_survives_float_rounding() -> None:
    # Found by search: computed naively, start + (need - available) / rate lands one rounding step before
    # the bucket really holds 8942 tokens, so an admit at that retry_at would be refused.
    limiter = RateLimiter(RateLimits(tokens=54425, period=3600.0))
    admitted(limiter.admit(1230.54, 53729))
    refused = limiter.admit(1230.54 + 0.872, 8942)
    assert refused.retry_at is not None
    admitted(limiter.admit(refused.retry_at, 8942))


# --- over a real loopback socket -----------------------------------------------------------------


async def test_observe_a_429_and_headers_from_a_loopback_upstream() -> None:
    """Feed what a real HTTP 429 (headers parsed by providers/_http) says into the limiter."""

    async def app(request: HTTPRequest, fault: object) -> Reply:
        return Reply.json(
            {"error": {"message": "slow down"}},
            status=429,
            headers={
                "retry-after": "7",
                "x-ratelimit-limit-requests": "50",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2m0s",
                "x-ratelimit-remaining-tokens": "900",
            },
        )

    limiter = RateLimiter(RateLimits(requests=50, tokens=10_000, period=60.0))
    server = LoopbackServer(app)
    async with serve_loopback(server), httpx.AsyncClient(base_url=server.url) as client:
        reservation = admitted(limiter.admit(T0, 100))
        response = await client.post("/v1/chat/completions", json={})
    assert response.status_code == 429
    headers = response.headers
    info = parse_rate_limit(headers)
    assert info is not None
    # Settle first, then observe, so that the upstream's count has the last word.
    limiter.settle(reservation, 0, T0)  # a 429 consumed nothing upstream
    limiter.observe(T0, info)
    headroom = limiter.headroom(T0)
    assert (headroom.requests, headroom.tokens) == (0.0, 900.0)
    assert limiter.blocked_until == T0 + 7.0
    assert headroom.retry_at == pytest.approx(T0 + 61.2)  # the later of the block and the refill
    # The upstream refills its 50 requests over 120 s, slower than our 50 per 60 s: our refill is held
    # back 60 s so that we reach 50 together at T0 + 120, and the first request fits at T0 + 61.2.
    later = limiter.admit(T0 + 7.0)
    assert not later.admitted and later.retry_at == pytest.approx(T0 + 60 + 60 / 50)


# --- stateful window check -----------------------------------------------------------------------

EPSILON = 1e-6  # relative slack for float rounding in the bound checks


class LimiterMachine(RuleBasedStateMachine):
    """Check the token-bucket window bound against a log of every admission and correction.

    Each log entry is ``(time, requests, tokens)``: +1 request and +estimate tokens for an admission,
    +/-difference tokens for a settle, -1 request and -estimate tokens for a cancel. For a bucket of
    capacity C refilling at r = C / period, the net usage in any window [s, b] that ends at an admission
    is at most C + r * (b - s): the bucket held at most C at s, gained at most r * (b - s), and is not
    negative right after admitting. (A settle charge may overshoot in hindsight; it is paid back before
    anything else is admitted.) observe() only removes content, so it can only tighten this.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.log: list[tuple[float, int, int]] = []
        self.outstanding: list[Reservation] = []
        self.blocked_until = float("-inf")

    @initialize(limits=limits_strategy)
    def setup(self, limits: RateLimits) -> None:
        self.limits = limits
        self.limiter = RateLimiter(limits)

    @rule(dt=st.one_of(st.sampled_from([0.0, 0.01, 0.5, 1.0]), st.floats(0, 70)))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(tokens=st.integers(0, 6000))
    def admit(self, tokens: int) -> None:
        probe = copy.deepcopy(self.limiter)
        answer = self.limiter.admit(self.now, tokens)
        if self.limits.tokens is not None and tokens > self.limits.tokens:
            assert answer == Admission(admitted=False)
            return
        if not answer.admitted:
            assert answer.retry_at is not None and answer.retry_at > self.now
            assert answer.retry_at >= self.blocked_until
            # tight: noticeably earlier than retry_at the same request is refused ...
            earlier = answer.retry_at - EPSILON * max(1.0, self.limits.period)
            if earlier > self.now:
                assert not copy.deepcopy(probe).admit(earlier, tokens).admitted
            # ... and honest: at retry_at, nothing else changed, it is admitted.
            assert probe.admit(answer.retry_at, tokens).admitted
            return
        assert self.now >= self.blocked_until, "admitted during an upstream retry-after block"
        reservation = admitted(answer)
        assert reservation == Reservation(tokens=tokens, at=self.now)
        self.outstanding.append(reservation)
        self.log.append((self.now, 1, tokens))
        self.check_windows_ending_now()

    @precondition(lambda self: self.outstanding)
    @rule(index=st.integers(0, 1000), actual=st.integers(0, 6000))
    def settle(self, index: int, actual: int) -> None:
        reservation = self.outstanding.pop(index % len(self.outstanding))
        self.limiter.settle(reservation, actual, self.now)
        self.log.append((self.now, 0, actual - reservation.tokens))

    @precondition(lambda self: self.outstanding)
    @rule(index=st.integers(0, 1000))
    def cancel(self, index: int) -> None:
        reservation = self.outstanding.pop(index % len(self.outstanding))
        self.limiter.cancel(reservation, self.now)
        self.log.append((self.now, -1, -reservation.tokens))

    @rule(
        remaining_requests=st.one_of(st.none(), st.integers(0, 20)),
        remaining_tokens=st.one_of(st.none(), st.integers(0, 5000)),
        reset=st.one_of(st.none(), st.floats(0, 120)),
        retry_after=st.one_of(st.none(), st.floats(0, 30)),
    )
    def observe(
        self,
        remaining_requests: int | None,
        remaining_tokens: int | None,
        reset: float | None,
        retry_after: float | None,
    ) -> None:
        info = RateLimitInfo(
            remaining_requests=remaining_requests,
            reset_requests=reset,
            remaining_tokens=remaining_tokens,
            reset_tokens=reset,
            retry_after=retry_after,
        )
        self.limiter.observe(self.now, info)
        if retry_after:
            self.blocked_until = max(self.blocked_until, self.now + retry_after)

    def check_windows_ending_now(self) -> None:
        for dimension, capacity in ((1, self.limits.requests), (2, self.limits.tokens)):
            if capacity is None:
                continue
            rate = capacity / self.limits.period
            slack = EPSILON * capacity
            # The binding windows start at a logged event; check every start within one period.
            for start, *_ in self.log:
                if self.now - start > self.limits.period:
                    continue
                used = sum(e[dimension] for e in self.log if start <= e[0] <= self.now)
                bound = capacity + rate * (self.now - start)
                assert used <= bound + slack, (dimension, start, used, bound)

    @invariant()
    def headroom_agrees_with_admit(self) -> None:
        headroom = self.limiter.headroom(self.now)
        for value, capacity in (
            (headroom.requests, self.limits.requests),
            (headroom.tokens, self.limits.tokens),
        ):
            assert (value is None) == (capacity is None)
            if value is not None and capacity is not None:
                assert 0.0 <= value <= capacity
        answer = copy.deepcopy(self.limiter).admit(self.now, 0)
        assert answer.admitted == (headroom.retry_at is None)
        assert answer.retry_at == headroom.retry_at


LimiterMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_limiter_respects_its_window_bound = LimiterMachine.TestCase


def test_adopting_an_upstream_limit_keeps_the_configured_cap_on_waits() -> None:
    limiter = RateLimiter(RateLimits(max_wait=30.0))
    assert limiter.adopt(RateLimitInfo(limit_requests=60, limit_tokens=1000))
    assert limiter.limits == RateLimits(requests=60, tokens=1000, period=60.0, max_wait=30.0)
    # An absurd upstream hint is still clamped to the configured cap, not the default one.
    limiter.observe(T0, RateLimitInfo(retry_after=10_000.0))
    assert limiter.blocked_until == T0 + 30.0
