"""``request.lua`` (an agent's two script calls per request) decides exactly as the Python machines do.

The reference is what ``AdmissionControl`` does in one process: ``RateLimiter.admit``, then
``CircuitBreaker.allow`` for an admitted call (cancelling its reservation when the breaker refuses); at
the end ``settle``, ``adopt`` + ``observe`` of the upstream's word, and one verdict (success, failure of
a kind, release). Hypothesis drives that composition and two :class:`FleetGate` replicas on one shared
limiter and breaker with the same random sequences; every answer, the headroom and the breaker snapshot
after every step must be identical (floats bit for bit).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.errors import ErrorKind
from duckagents.fleet import Fleet, FleetGate, FleetReservation, open_fleet
from duckagents.resilience import (
    DEFAULT_TRIPPING_KINDS,
    BreakerConfig,
    CircuitBreaker,
    RateLimiter,
    RateLimitInfo,
    RateLimits,
    Verdict,
)
from duckagents.testing import RedisServer

from .support import fleet_config

BOUND = 60.0  # per example; a guard against a hang, not a timing assertion

# Mostly limited: a refund (a refused trial, a settle) shows only in a bucket that is counted.
limits_strategy = st.builds(
    RateLimits,
    requests=st.one_of(st.integers(1, 12), st.integers(1, 12), st.none()),
    tokens=st.one_of(st.integers(1, 4000), st.integers(1, 4000), st.none()),
    period=st.sampled_from([0.5, 7.0, 60.0]),
)
config_strategy = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 4),
    open_timeout=st.sampled_from([0.0, 1.0, 10.0]),
    half_open_trials=st.integers(1, 3),
    tripping_kinds=st.one_of(
        st.just(DEFAULT_TRIPPING_KINDS), st.frozensets(st.sampled_from(list(ErrorKind)))
    ),
)
info_strategy = st.one_of(
    st.none(),
    st.builds(
        RateLimitInfo,
        limit_requests=st.one_of(st.none(), st.integers(1, 30)),
        remaining_requests=st.one_of(st.none(), st.integers(-2, 20)),
        reset_requests=st.one_of(st.none(), st.floats(0, 90)),
        limit_tokens=st.one_of(st.none(), st.integers(1, 8000)),
        remaining_tokens=st.one_of(st.none(), st.integers(-50, 5000)),
        reset_tokens=st.one_of(st.none(), st.floats(0, 90)),
        retry_after=st.one_of(st.none(), st.floats(0, 20)),
    ),
)
replica = st.integers(0, 1)
verdict = st.one_of(
    st.tuples(st.just(Verdict.SUCCESS), st.none()),
    st.tuples(st.just(Verdict.FAILURE), st.one_of(st.none(), st.sampled_from(list(ErrorKind)))),
    st.tuples(st.just(Verdict.FAILURE), st.sampled_from(sorted(DEFAULT_TRIPPING_KINDS))),
    st.tuples(st.just(Verdict.RELEASE), st.none()),
)
operation = st.one_of(
    st.tuples(st.just("advance"), st.one_of(st.sampled_from([0.0, 0.5, 1.0, 10.0]), st.floats(0, 70))),
    st.tuples(st.just("admit"), replica, st.integers(0, 60)),
    st.tuples(st.just("admit"), replica, st.integers(0, 5000)),
    st.tuples(st.just("finish"), replica, st.integers(0, 1000), st.integers(0, 5000), verdict, info_strategy),
    st.tuples(st.just("finish"), replica, st.integers(0, 1000), st.integers(0, 50), verdict, st.none()),
)

_examples = itertools.count()


@asynccontextmanager
async def two_replicas(server: RedisServer) -> AsyncIterator[tuple[Fleet, Fleet]]:
    config = fleet_config(server.url)
    async with open_fleet(config) as one, open_fleet(config) as two:
        yield one, two


def python_finish(
    limiter: RateLimiter, breaker: CircuitBreaker, reservation: Any, now: float, actual: int,
    how: tuple[Verdict, ErrorKind | None], info: RateLimitInfo | None,
) -> None:
    """AdmissionControl's end of a call: settle, adopt + observe, then the verdict."""
    limiter.settle(reservation, actual, now)
    if info is not None:
        limiter.adopt(info)
        limiter.observe(now, info)
    if how[0] is Verdict.SUCCESS:
        breaker.record_success(now)
    elif how[0] is Verdict.FAILURE:
        breaker.record_failure(now, how[1])
    else:
        breaker.release(now)


async def run_both(
    fleets: tuple[Fleet, Fleet], limits: RateLimits, config: BreakerConfig, ops: list[tuple[Any, ...]]
) -> None:
    provider = f"example-{next(_examples)}"
    limiter, breaker = RateLimiter(limits), CircuitBreaker(config)
    gates = [FleetGate(f, provider, limits, config, server_clock=False) for f in fleets]
    for gate in gates:
        gate.close()  # compare replies only: a notice could land between two steps
    now = 1000.0
    outstanding: list[FleetReservation] = []
    with trio.fail_after(BOUND):
        for step, op in enumerate(ops):
            kind = op[0]
            gate = gates[op[1]] if kind != "advance" else gates[step % 2]
            called = breaker_replied = False  # did this step call the gate, and answer the breaker?
            if kind == "advance":
                now += op[1]
            elif kind == "admit":
                expected = limiter.admit(now, op[2])
                allowed = None
                if expected.reservation is not None:
                    allowed = breaker.allow(now)
                    if not allowed:
                        limiter.cancel(expected.reservation, now)
                got = await gate.admit(now, op[2])
                assert got.admission.admitted == expected.admitted, (step, op)
                assert got.admission.retry_at == expected.retry_at, (step, op)
                assert got.allowed is bool(allowed), (step, op)
                if allowed is False:
                    assert got.breaker_retry_at == breaker.retry_at(now), (step, op)
                if got.reservation is not None:
                    outstanding.append(got.reservation)
                called, breaker_replied = True, allowed is not None
            elif kind == "finish" and outstanding:
                reservation = outstanding.pop(op[2] % len(outstanding))
                python_finish(limiter, breaker, reservation, now, op[3], op[4], op[5])
                gate.finish(reservation, now, op[3], op[4][0], kind=op[4][1], observed=op[5])
                if op[5] is not None:
                    gates[1 - op[1]].shared_limiter.adopt(op[5])  # every replica hears the upstream
                await gate.fleet.finishes.wait_idle()
                called = breaker_replied = True
            if called:
                # Every script call answers the headroom it left.
                assert gate.shared_limiter.latest == limiter.headroom(now), (step, op)
            if breaker_replied:
                assert gate.shared_breaker.latest == breaker.snapshot(now), (step, op)
                assert gate.retry_at(now) == breaker.retry_at(now), (step, op)
            # Both replicas see one limiter and one breaker: read them through the other connection.
            other = gates[(op[1] + 1) % 2] if kind != "advance" else gates[(step + 1) % 2]
            await other.refresh(now)
            assert other.shared_limiter.latest == limiter.headroom(now), (step, op)
            assert other.snapshot(now) == breaker.snapshot(now), (step, op)
            assert gate.lost_verdicts == 0
    assert not any(fleet.health.degraded for fleet in fleets)


async def test_request_script_decides_exactly_like_admission_control(redis_server: RedisServer) -> None:
    async with two_replicas(redis_server) as fleets:

        @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            limits=limits_strategy,
            config=config_strategy,
            ops=st.lists(operation, min_size=10, max_size=40),
        )
        def check(limits: RateLimits, config: BreakerConfig, ops: list[tuple[Any, ...]]) -> None:
            trio.from_thread.run(run_both, fleets, limits, config, ops)

        await trio.to_thread.run_sync(check)


async def test_a_refused_trial_gives_its_reservation_back(redis_server: RedisServer) -> None:
    """Pinned: an open breaker refuses an admitted call, whose request and tokens go back to the bucket."""
    limits = RateLimits(requests=2, tokens=100, period=60.0)
    config = BreakerConfig(failure_threshold=1, open_timeout=10.0)
    ops: list[tuple[Any, ...]] = [
        ("admit", 0, 40),
        ("finish", 0, 0, 40, (Verdict.FAILURE, ErrorKind.UPSTREAM_5XX), None),
        ("admit", 1, 30),  # open: refused, and the reservation is cancelled
        ("advance", 10.0),
        ("admit", 1, 30),  # half-open: the trial
        ("admit", 0, 10),  # no trial slot left
        (
            "finish", 1, 0, 25, (Verdict.SUCCESS, None),
            RateLimitInfo(remaining_requests=0, reset_requests=30.0),
        ),
        ("admit", 0, 10),
    ]
    async with two_replicas(redis_server) as fleets:
        await run_both(fleets, limits, config, ops)
