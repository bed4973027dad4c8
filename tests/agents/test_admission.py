"""Admission control on its own: every call it admits or refuses leaves the limiter, breaker and metrics
settled, and the agent hears of breaker moves and upstream blocks."""

from __future__ import annotations

import pytest
import trio

from duckagents.agents import ProviderMetrics
from duckagents.agents._admission import AdmissionControl
from duckagents.agents._health import RecentOutcomes
from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import Usage
from duckagents.providers import Completion
from duckagents.resilience import BreakerConfig, BreakerState, CircuitBreaker, RateLimiter, RateLimits


class Control:
    """An AdmissionControl over fresh state machines, counting its callbacks."""

    def __init__(self, limits: RateLimits = RateLimits(requests=10, tokens=1000), threshold: int = 5) -> None:
        self.limiter = RateLimiter(limits)
        self.breaker = CircuitBreaker(BreakerConfig(failure_threshold=threshold, open_timeout=30.0))
        self.metrics = ProviderMetrics()
        self.recent = RecentOutcomes()
        self.verdicts = 0
        self.blocks = 0
        self.admission = AdmissionControl(
            self.limiter, self.breaker, self.metrics, self.recent,
            on_breaker_verdict=self._verdict, on_upstream_block=self._block,
        )

    def _verdict(self) -> None:
        self.verdicts += 1

    def _block(self) -> None:
        self.blocks += 1


async def test_a_success_settles_the_reservation_with_the_real_usage(autojump_clock: object) -> None:
    c = Control(RateLimits(requests=10, tokens=1000, period=3600.0))
    reservation = await c.admission.admit(300, trio.current_time() + 10, "m")
    assert c.limiter.headroom(trio.current_time()).tokens == 700
    assert c.metrics.snapshot().in_flight == 1 and c.verdicts == 1
    sent = trio.current_time()
    await trio.sleep(2)
    c.admission.succeeded(reservation, sent, Completion("m", "hi", usage=Usage(10, 20)), None)
    snap = c.metrics.snapshot()
    assert snap.in_flight == 0 and snap.successful_requests == 1 and snap.total_tokens == 30
    assert snap.avg_latency == pytest.approx(2.0)
    headroom = c.limiter.headroom(trio.current_time())
    assert headroom.tokens == pytest.approx(970 + 1000 * 2 / 3600)  # 30 used of 300 reserved, 2 s refill
    assert c.verdicts == 2


async def test_an_open_breaker_refuses_and_gives_the_reservation_back(autojump_clock: object) -> None:
    c = Control()
    c.breaker.force_open(trio.current_time())
    with pytest.raises(ProviderError) as info:
        await c.admission.admit(300, trio.current_time() + 10, "m")
    assert info.value.kind is ErrorKind.CIRCUIT_OPEN
    headroom = c.limiter.headroom(trio.current_time())
    assert headroom.requests == 10 and headroom.tokens == 1000  # cancelled, not settled
    assert c.metrics.snapshot() == ProviderMetrics().snapshot() and c.verdicts == 1


async def test_admission_waits_for_the_limiter_within_the_deadline_only(autojump_clock: object) -> None:
    c = Control(RateLimits(requests=1, period=60.0))
    start = trio.current_time()
    await c.admission.admit(0, start + 100, "m")
    with pytest.raises(ProviderError) as info:
        await c.admission.admit(0, start + 10, "m")  # the next slot is 60 s away
    assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.retry_after == pytest.approx(60.0)
    await c.admission.admit(0, start + 100, "m")  # waits for the refill instead
    assert trio.current_time() - start == pytest.approx(60.0)


async def test_an_interrupted_call_is_a_timeout_only_past_its_deadline(autojump_clock: object) -> None:
    c = Control(threshold=1)
    now = trio.current_time()
    reservation = await c.admission.admit(0, now + 10, "m")
    c.admission.interrupted(reservation, now, now + 10)  # cancelled by the caller: no verdict
    assert c.breaker.state(now) is BreakerState.CLOSED and c.recent.failure_rate == 0.0
    reservation = await c.admission.admit(0, now + 10, "m")
    await trio.sleep(10)
    c.admission.interrupted(reservation, now, now + 10)  # the deadline passed: the upstream was slow
    assert c.breaker.state(trio.current_time()) is BreakerState.OPEN and c.recent.failure_rate == 1.0
    assert c.metrics.snapshot().failed_requests == 2 and c.metrics.snapshot().in_flight == 0


async def test_an_upstream_429_blocks_the_limiter_and_is_reported(autojump_clock: object) -> None:
    c = Control()
    now = trio.current_time()
    reservation = await c.admission.admit(100, now + 10, "m")
    error = ProviderError(ErrorKind.RATE_LIMITED, "slow down", retry_after=5.0)
    c.admission.failed(reservation, now, error)
    assert c.blocks == 1 and c.limiter.blocked_until == pytest.approx(now + 5.0)
    assert c.breaker.state(now) is BreakerState.CLOSED  # the limiter's business, not the breaker's
    assert c.recent.failure_rate == 1.0 and c.metrics.snapshot().failed_requests == 1
