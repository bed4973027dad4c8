"""The Lua circuit breaker makes exactly the Python CircuitBreaker's decisions, fleet-wide.

Hypothesis generates call sequences (allow, success, failure of any kind, release, force_open, disable,
reset, time steps) run against ``resilience.CircuitBreaker`` and against ``breaker.lua`` in a real
redis-server, through two replicas taking turns on one shared breaker. Every answer, the snapshot and
``retry_at`` after every step must be identical.
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
from duckagents.fleet import Fleet, SharedBreaker, open_fleet
from duckagents.resilience import DEFAULT_TRIPPING_KINDS, BreakerConfig, CircuitBreaker
from duckagents.testing import RedisServer

from .support import fleet_config

BOUND = 60.0  # per example; a guard against a hang, not a timing assertion

config_strategy = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 4),
    open_timeout=st.sampled_from([0.0, 1.0, 10.0, 60.0]),
    half_open_trials=st.integers(1, 3),
    tripping_kinds=st.one_of(
        st.just(DEFAULT_TRIPPING_KINDS), st.frozensets(st.sampled_from(list(ErrorKind)))
    ),
)

replica = st.integers(0, 1)
kind = st.one_of(st.none(), st.sampled_from(list(ErrorKind)))
advance = st.tuples(
    st.just("advance"),
    st.one_of(st.sampled_from([0.0, 0.5, 1.0, 9.999, 10.0, 59.999, 60.0]), st.floats(0, 150)),
)
tripping = st.sampled_from(sorted(DEFAULT_TRIPPING_KINDS))
outcome = st.one_of(
    st.tuples(st.just("success")),
    st.tuples(st.just("failure"), kind),
    st.tuples(st.just("failure"), tripping),
    st.tuples(st.just("failure"), tripping),
    st.tuples(st.just("release")),
)
# "call": allow, and if allowed the call ends at once with its outcome. "start" / "end": a long call
# (a stream) admitted now and ended later, possibly in another state of the breaker.
short_call = st.tuples(st.just("call"), replica, outcome)
long_call = st.tuples(st.just("start"), replica)
long_call_end = st.tuples(st.just("end"), replica, outcome)
# The operator switches are rare: a forced breaker never goes half-open, so frequent forcing would hide
# that part of the machine.
switches = st.tuples(st.sampled_from(["force_open", "disable", "reset"]), replica)
operation = st.one_of(
    advance, advance, short_call, short_call, short_call, long_call, long_call_end, long_call_end, switches
)


async def end_call(python: CircuitBreaker, shared: SharedBreaker, now: float, how: tuple[Any, ...]) -> None:
    if how[0] == "success":
        python.record_success(now)
        await shared.record_success(now)
    elif how[0] == "failure":
        counted = python.record_failure(now, how[1])
        assert await shared.record_failure(now, how[1]) is counted
    else:
        python.release(now)
        await shared.release(now)


_examples = itertools.count()


@asynccontextmanager
async def two_replicas(server: RedisServer) -> AsyncIterator[tuple[Fleet, Fleet]]:
    """Two connections (replicas) to one fleet."""
    config = fleet_config(server.url)
    async with open_fleet(config) as one, open_fleet(config) as two:
        yield one, two


async def run_both(
    fleets: tuple[Fleet, Fleet], config: BreakerConfig, start: float, ops: list[tuple[Any, ...]]
) -> None:
    """Run ``ops`` against a fresh Python breaker and a fresh shared one, comparing every step."""
    provider = f"example-{next(_examples)}"
    python = CircuitBreaker(config)
    replicas = [SharedBreaker(f, provider, config, server_clock=False) for f in fleets]
    now = start
    long_calls = 0  # admitted and not ended: the protocol gives each exactly one ending
    try:
        with trio.fail_after(BOUND):
            for step, op in enumerate(ops):
                name = op[0]
                shared = replicas[op[1]] if name != "advance" else replicas[0]
                shared.latest = None  # so that only a call made in this step can be compared below
                if name == "advance":
                    now += op[1]
                elif name in ("call", "start"):
                    allowed = python.allow(now)
                    assert await shared.allow(now) is allowed, (step, op)
                    if allowed and name == "call":
                        await end_call(python, shared, now, op[2])
                    long_calls += allowed and name == "start"
                elif name == "end" and long_calls:
                    long_calls -= 1
                    await end_call(python, shared, now, op[2])
                elif name == "force_open":
                    python.force_open(now)
                    await shared.force_open(now)
                elif name == "disable":
                    python.disable(now)
                    await shared.disable(now)
                elif name == "reset":
                    python.reset(now)
                    await shared.reset(now)
                if name == "advance" or shared.latest is None:
                    # Read through the other connection: both replicas see one breaker.
                    other = replicas[step % 2]
                    assert await other.retry_at(now) == python.retry_at(now), (step, op)
                    assert other.latest == python.snapshot(now), (step, op)  # from that same call
                else:
                    # Every script call answers with the state it left: compare without another call.
                    assert shared.latest == python.snapshot(now), (step, op)
    finally:
        for shared in replicas:
            shared.close()
    assert not any(fleet.health.degraded for fleet in fleets)


async def test_lua_breaker_decides_exactly_like_the_python_machine(redis_server: RedisServer) -> None:
    async with two_replicas(redis_server) as fleets:

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            config=config_strategy,
            start=st.one_of(st.just(1000.0), st.floats(0, 1e6), st.floats(1.7e9, 1.8e9)),
            ops=st.lists(operation, min_size=20, max_size=60),
        )
        def check(config: BreakerConfig, start: float, ops: list[tuple[Any, ...]]) -> None:
            trio.from_thread.run(run_both, fleets, config, start, ops)

        # Hypothesis runs in a worker thread; every example runs on this Trio loop over the same two
        # connections (a fresh breaker each), which spares a connection setup per example.
        await trio.to_thread.run_sync(check)


async def test_pinned_cycle_matches(redis_server: RedisServer) -> None:
    """Open on the threshold, refuse, half-open with two trials, a late call, trial failure, reopen,
    close; a not-counted failure in half-open; force and reset."""
    config = BreakerConfig(failure_threshold=2, open_timeout=10.0, half_open_trials=2)
    ops: list[tuple[Any, ...]] = [
        ("start", 0),  # a long call from before the opening
        ("call", 1, ("failure", ErrorKind.TIMEOUT)),
        ("call", 0, ("failure", None)),
        ("call", 1, ("success",)),  # refused: open
        ("advance", 10.0),
        ("start", 0),
        ("start", 1),
        ("start", 0),  # refused: both trial slots taken
        ("end", 1, ("release",)),  # charged to the older call: the slots stay taken
        ("start", 1),
        ("end", 0, ("failure", ErrorKind.INVALID_REQUEST)),  # not counted: frees a slot
        ("start", 0),
        ("end", 1, ("failure", ErrorKind.NETWORK)),  # a trial fails: open again
        ("advance", 9.999),
        ("call", 0, ("success",)),
        ("advance", 0.001),
        ("call", 1, ("success",)),  # the trial succeeds: closed
        ("force_open", 1),
        ("advance", 1000.0),
        ("call", 0, ("success",)),
        ("reset", 0),
        ("call", 1, ("failure", None)),
    ]

    async with two_replicas(redis_server) as fleets:
        await run_both(fleets, config, 1000.0, ops)
