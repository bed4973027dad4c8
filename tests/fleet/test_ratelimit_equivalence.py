"""The Lua rate limiter makes exactly the Python RateLimiter's decisions.

Hypothesis generates operation sequences (admit, settle with or without upstream headers, cancel,
observe, headroom, time steps); each runs against ``resilience.RateLimiter`` and against
``ratelimit.lua`` in a real redis-server, driven through two replicas (two connections) taking turns on
one shared bucket. Every answer and the headroom after every step must be identical, to the last bit:
the script repeats the Python arithmetic in the same order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.fleet import Fleet, SharedRateLimiter, open_fleet
from duckagents.resilience import RateLimiter, RateLimitInfo, RateLimits
from duckagents.testing import RedisServer

from .support import fleet_config

BOUND = 60.0  # per example; a generous guard against a hang, not a timing assertion

limits_strategy = st.builds(
    RateLimits,
    requests=st.one_of(st.none(), st.integers(1, 20)),
    tokens=st.one_of(st.none(), st.integers(1, 5000)),
    period=st.sampled_from([0.1, 1.0, 7.0, 60.0, 3600.0]),
    max_wait=st.sampled_from([300.0, 45.0, 5.0]),
)
# Waits from outside: usual ones, and the ones RateLimiter.observe ignores (negative, NaN, infinite) or
# clamps to max_wait.
odd_wait = st.sampled_from([-1.0, -0.0, math.nan, math.inf, -math.inf, 1e9, 301.0])

# Upstream numbers around ours: below, equal and above our limits, so that observe() lowers our count
# and the upstream's limit and reset decide how long our refill is held back.
maybe_count = st.one_of(st.none(), st.integers(-5, 30))
maybe_tokens = st.one_of(st.none(), st.integers(-100, 6000))
maybe_limit_requests = st.one_of(st.none(), st.integers(1, 60))
maybe_limit_tokens = st.one_of(st.none(), st.integers(1, 10_000))
maybe_seconds = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 60.0, 120.0]), st.floats(0, 150), odd_wait)

info_strategy = st.builds(
    RateLimitInfo,
    limit_requests=maybe_limit_requests,
    remaining_requests=maybe_count,
    reset_requests=maybe_seconds,
    limit_tokens=maybe_limit_tokens,
    remaining_tokens=maybe_tokens,
    reset_tokens=maybe_seconds,
    retry_after=st.one_of(st.none(), st.floats(0, 30), odd_wait),
)


@attrs.frozen
class RelativeInfo:
    """Upstream headers as fractions of our own limits and period, made concrete once the limits are
    known: without them, random upstream numbers rarely land where the limit and reset of an upstream
    change how long our refill is held back."""

    remaining: float | None
    limit: float | None
    reset: float | None
    retry_after: float | None

    def concrete(self, limits: RateLimits) -> RateLimitInfo:
        def scaled(fraction: float | None, base: int | None) -> int | None:
            return None if fraction is None else round(fraction * (base if base is not None else 10))

        reset = None if self.reset is None else self.reset * limits.period
        return RateLimitInfo(
            remaining_requests=scaled(self.remaining, limits.requests),
            limit_requests=scaled(self.limit, limits.requests),
            reset_requests=reset,
            remaining_tokens=scaled(self.remaining, limits.tokens),
            limit_tokens=scaled(self.limit, limits.tokens),
            reset_tokens=reset,
            retry_after=self.retry_after,
        )


fraction = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(-0.2, 3.0))
relative_info = st.builds(
    RelativeInfo,
    remaining=fraction,
    limit=st.one_of(st.none(), st.floats(0.05, 4.0)),
    reset=st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.0]), st.floats(0, 3.0)),
    retry_after=st.one_of(st.none(), st.floats(0, 30), odd_wait),
)
any_info = st.one_of(info_strategy, relative_info)

replica = st.integers(0, 1)
operation = st.one_of(
    st.tuples(st.just("advance"), st.one_of(st.sampled_from([0.0, 0.01, 0.5, 1.0]), st.floats(0, 70))),
    st.tuples(st.just("admit"), replica, st.integers(0, 6000)),
    st.tuples(st.just("admit"), replica, st.integers(0, 50)),
    st.tuples(st.just("settle"), replica, st.integers(0, 1000), st.integers(0, 6000), st.none()),
    st.tuples(
        st.just("settle"), replica, st.integers(0, 1000), st.integers(0, 6000), any_info, st.booleans()
    ),
    # A dimension left unlimited takes the upstream's stated limit (RateLimiter.adopt), on every replica.
    st.tuples(st.just("adopt"), replica, any_info, st.sampled_from([60.0, 60.0, 1.0, 7.0])),
    st.tuples(st.just("cancel"), replica, st.integers(0, 1000)),
    st.tuples(st.just("observe"), replica, any_info),
    st.tuples(st.just("advance"), st.floats(0, 2.0).map(lambda f: f * 60.0)),
)


def concrete(info: RateLimitInfo | RelativeInfo | None, limits: RateLimits) -> RateLimitInfo | None:
    return info.concrete(limits) if isinstance(info, RelativeInfo) else info


_examples = itertools.count()


@asynccontextmanager
async def two_replicas(server: RedisServer) -> AsyncIterator[tuple[Fleet, Fleet]]:
    """Two connections (replicas) to one fleet."""
    config = fleet_config(server.url)
    async with open_fleet(config) as one, open_fleet(config) as two:
        yield one, two


async def run_both(
    fleets: tuple[Fleet, Fleet], limits: RateLimits, start: float, ops: list[tuple[Any, ...]]
) -> None:
    """Run ``ops`` against a fresh Python limiter and a fresh shared bucket, comparing every step."""
    bucket = f"example-{next(_examples)}"
    python = RateLimiter(limits)
    replicas = [SharedRateLimiter(f, "provider", limits, bucket=bucket, server_clock=False) for f in fleets]
    now = start
    outstanding = []
    with trio.fail_after(BOUND):
        for step, op in enumerate(ops):
            kind = op[0]
            shared = replicas[op[1]] if kind != "advance" else replicas[0]
            shared.latest = None  # so that only a call made in this step is compared below
            if kind == "advance":
                now += op[1]
            elif kind == "admit":
                expected = python.admit(now, op[2])
                got = await shared.admit(now, op[2])
                assert got == expected, (step, op)
                if expected.reservation is not None:
                    outstanding.append(expected.reservation)
            elif kind == "settle" and outstanding:
                reservation = outstanding.pop(op[2] % len(outstanding))
                info = concrete(op[4], limits)
                adopt = len(op) > 5 and op[5]
                python.settle(reservation, op[3], now)
                if info is not None:
                    if adopt:
                        python.adopt(info)
                    python.observe(now, info)  # settle first, then observe: one script call does both
                await shared.settle(reservation, op[3], now, info, adopt=adopt)
                if info is not None and adopt:
                    replicas[1 - op[1]].adopt(info)  # every replica hears the same upstream
            elif kind == "adopt":
                info = concrete(op[2], limits)
                assert info is not None
                adopted = python.adopt(info, op[3])
                assert [r.adopt(info, op[3]) for r in replicas] == [adopted, adopted], (step, op)
            elif kind == "cancel" and outstanding:
                reservation = outstanding.pop(op[2] % len(outstanding))
                python.cancel(reservation, now)
                await shared.cancel(reservation, now)
            elif kind == "observe":
                info = concrete(op[2], limits)
                assert info is not None
                python.observe(now, info)
                await shared.observe(now, info)
            assert all(r.limits == python.limits for r in replicas), (step, op)
            if shared.latest is None:
                # Time moved (or nothing was called): read through the other connection, both replicas
                # see one bucket.
                assert await replicas[step % 2].headroom(now) == python.headroom(now), (step, op)
            else:
                # Every script call answers the headroom it left: compare without another round trip.
                assert shared.latest == python.headroom(now), (step, op)
    assert not any(fleet.health.degraded for fleet in fleets)


async def test_lua_limiter_decides_exactly_like_the_python_machine(redis_server: RedisServer) -> None:
    async with two_replicas(redis_server) as fleets:

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            limits=limits_strategy,
            start=st.one_of(st.just(1000.0), st.floats(0, 1e6), st.floats(1.7e9, 1.8e9)),
            ops=st.lists(operation, min_size=20, max_size=60),
        )
        def check(limits: RateLimits, start: float, ops: list[tuple[Any, ...]]) -> None:
            trio.from_thread.run(run_both, fleets, limits, start, ops)

        # Hypothesis runs in a worker thread; every example runs on this Trio loop over the same two
        # connections (a fresh bucket each), which spares a connection setup per example.
        await trio.to_thread.run_sync(check)


async def test_float_rounding_regression_matches(redis_server: RedisServer) -> None:
    """The Python suite's rounding case: retry_at is stepped forward by ulps, so Lua needs math.ulp too."""
    limits = RateLimits(tokens=54425, period=3600.0)
    ops: list[tuple[Any, ...]] = [("admit", 0, 53729), ("advance", 0.872), ("admit", 1, 8942)]
    async with two_replicas(redis_server) as fleets:
        await run_both(fleets, limits, 1230.54, ops)


async def test_observe_cases_match(redis_server: RedisServer) -> None:
    """Pinned observe() cases: upstream limit above ours (no hold), below (hold), negative remaining,
    a retry-after block, and a refund after the upstream lowered us; time then runs on."""
    cases: list[tuple[RateLimits, list[tuple[Any, ...]]]] = [
        (
            RateLimits(requests=10, tokens=1000, period=60.0),
            [
                ("observe", 0, RateLimitInfo(limit_requests=60, remaining_requests=0, reset_requests=120.0)),
                ("advance", 1.0),
                ("admit", 1, 0),
                ("advance", 30.0),
                ("admit", 0, 10),
            ],
        ),
        (
            RateLimits(requests=60, tokens=1000, period=60.0),
            [
                ("observe", 1, RateLimitInfo(limit_requests=60, remaining_requests=0, reset_requests=120.0)),
                ("advance", 61.0),
                ("admit", 0, 0),
                ("observe", 1, RateLimitInfo(remaining_tokens=-7, reset_tokens=10.0, retry_after=3.5)),
                ("advance", 2.0),
                ("admit", 0, 0),
                ("advance", 20.0),
                ("admit", 1, 500),
                (
                    "settle",
                    0,
                    0,
                    100,
                    RateLimitInfo(remaining_tokens=50, limit_tokens=2000, reset_tokens=5.0),
                ),
                ("cancel", 0, 0),
            ],
        ),
    ]

    async with two_replicas(redis_server) as fleets:
        for limits, ops in cases:
            await run_both(fleets, limits, 1000.0, ops)
