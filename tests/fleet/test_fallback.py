"""Redis trouble is not an outage: kill, pause and restart a real redis-server under the fleet wrappers."""

from __future__ import annotations

import socket

import pytest
import trio

from duckagents.errors import ErrorKind
from duckagents.fleet import (
    BreakerPermit,
    Fleet,
    FleetBreaker,
    FleetRateLimiter,
    FleetReservation,
    FleetStatus,
    local_share,
    open_fleet,
)
from duckagents.resilience import BreakerConfig, BreakerState, RateLimitInfo, RateLimits
from duckagents.testing import RedisServer, redis_server_path

from .support import NO_REDIS, fleet_config

BOUND = 30.0  # a guard against hangs; the fallback itself answers within the fleet's timeout
LIMITS = RateLimits(requests=6, period=3600.0)  # no refill to speak of during a test


class Transitions:
    """Records the fleet's status changes and lets a test wait for the next one."""

    def __init__(self, fleet: Fleet) -> None:
        self.seen: list[FleetStatus] = []
        self._changed = trio.Event()
        fleet.health.watch(self._on_change)

    def _on_change(self, status: FleetStatus) -> None:
        self.seen.append(status)
        self._changed.set()

    async def wait_for(self, degraded: bool) -> FleetStatus:
        while not self.seen or self.seen[-1].degraded is not degraded:
            self._changed = trio.Event()
            await self._changed.wait()
        return self.seen[-1]


async def admit_all(limiter: FleetRateLimiter, attempts: int) -> list[FleetReservation]:
    taken = []
    for _ in range(attempts):
        answer = await limiter.admit(trio.current_time())
        if answer.reservation is not None:
            assert isinstance(answer.reservation, FleetReservation)
            taken.append(answer.reservation)
    return taken


def test_the_local_share_divides_and_rounds_down() -> None:
    assert local_share(RateLimits(requests=600, tokens=100_000, period=60.0), 3) == RateLimits(
        requests=200, tokens=33_333, period=60.0
    )
    assert local_share(RateLimits(requests=2, max_wait=9.0), 5) == RateLimits(requests=1, max_wait=9.0)
    assert local_share(RateLimits(), 4) == RateLimits()


async def test_killed_redis_degrades_to_the_local_share_and_a_restart_rejoins(own_redis: RedisServer) -> None:
    config = fleet_config(own_redis.url, expected_replicas=3, timeout=1.0, probe_interval=0.05)
    with trio.fail_after(BOUND):
        async with open_fleet(config) as fleet:
            transitions = Transitions(fleet)
            limiter = FleetRateLimiter(fleet, "openai", LIMITS)
            joined = await admit_all(limiter, 4)
            assert [r.shared for r in joined] == [True] * 4

            await trio.to_thread.run_sync(own_redis.kill)
            # The first call after the kill finds Redis gone and is answered locally at once.
            degraded = await admit_all(limiter, 5)
            assert [r.shared for r in degraded] == [False, False]  # 6 / 3 replicas = 2
            status = await transitions.wait_for(degraded=True)
            assert status.instance == "a" and status.reason is not None
            # Settling a shared reservation while Redis is gone is dropped, never waited on.
            await limiter.settle(joined[0], 0, trio.current_time())
            await limiter.cancel(degraded[0], trio.current_time())  # a local one goes back locally
            assert [r.shared for r in await admit_all(limiter, 2)] == [False]

            await trio.to_thread.run_sync(own_redis.start)  # empty: the restarted server lost the buckets
            await transitions.wait_for(degraded=False)
            rejoined = await admit_all(limiter, 8)
            assert [r.shared for r in rejoined] == [True] * 6
            assert [s.degraded for s in transitions.seen] == [True, False]


async def test_a_paused_redis_costs_at_most_the_timeout(own_redis: RedisServer) -> None:
    config = fleet_config(own_redis.url, expected_replicas=2, timeout=0.3, probe_interval=0.05)
    with trio.fail_after(BOUND):
        async with open_fleet(config) as fleet:
            transitions = Transitions(fleet)
            limiter = FleetRateLimiter(fleet, "openai", LIMITS)
            assert (await limiter.admit(trio.current_time())).admitted
            await trio.to_thread.run_sync(own_redis.pause)
            try:
                with trio.fail_after(config.timeout * 10):  # generous: the bound is the timeout
                    answer = await limiter.admit(trio.current_time())
                assert answer.reservation is not None and not answer.reservation.shared  # type: ignore[attr-defined]
                status = await transitions.wait_for(degraded=True)
                assert status.reason is not None and "no answer within 0.3 s" in status.reason
                # While degraded, nothing waits on Redis at all.
                with trio.fail_after(config.timeout / 2):
                    for _ in range(5):
                        await limiter.admit(trio.current_time())
                        await limiter.headroom(trio.current_time())
            finally:
                await trio.to_thread.run_sync(own_redis.resume)
            await transitions.wait_for(degraded=False)
            assert (await limiter.admit(trio.current_time())).reservation.shared  # type: ignore[union-attr]


async def test_the_breaker_falls_back_and_verdicts_go_where_the_call_was_admitted(
    own_redis: RedisServer,
) -> None:
    config = BreakerConfig(failure_threshold=2, open_timeout=3600.0)
    fleet_settings = fleet_config(own_redis.url, timeout=1.0, probe_interval=0.05)
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_settings) as fleet:
            transitions = Transitions(fleet)
            breaker = FleetBreaker(fleet, "openai", config, trial_lease=60.0)
            shared_permit = await breaker.allow(trio.current_time())
            assert shared_permit == BreakerPermit(shared=True)
            assert await breaker.record_failure(trio.current_time(), shared_permit, ErrorKind.TIMEOUT)
            slow_call = await breaker.allow(trio.current_time())  # still running when Redis dies
            assert slow_call == BreakerPermit(shared=True)

            await trio.to_thread.run_sync(own_redis.kill)
            local_permit = await breaker.allow(trio.current_time())
            assert local_permit == BreakerPermit(shared=False)
            await transitions.wait_for(degraded=True)
            # The shared call's verdict cannot reach Redis: it is dropped, not charged to the local one.
            assert await breaker.record_failure(trio.current_time(), slow_call, ErrorKind.TIMEOUT)
            assert breaker.local.snapshot(trio.current_time()).consecutive_failures == 0
            # Two local failures open the local breaker: the replica protects the upstream on its own.
            await breaker.record_failure(trio.current_time(), local_permit, ErrorKind.NETWORK)
            second = await breaker.allow(trio.current_time())
            assert second is not None
            await breaker.record_failure(trio.current_time(), second, ErrorKind.NETWORK)
            assert await breaker.allow(trio.current_time()) is None
            assert await breaker.state(trio.current_time()) is BreakerState.OPEN
            assert await breaker.retry_at(trio.current_time()) is not None

            await trio.to_thread.run_sync(own_redis.start)
            await transitions.wait_for(degraded=False)
            # Re-joined: the (restarted, empty) shared breaker decides again.
            assert await breaker.state(trio.current_time()) is BreakerState.CLOSED
            permit = await breaker.allow(trio.current_time())
            assert permit == BreakerPermit(shared=True)
            await breaker.record_success(trio.current_time(), permit)
            await breaker.release(trio.current_time(), BreakerPermit(shared=False))


async def test_a_fleet_started_without_redis_runs_locally_and_joins_later() -> None:
    if redis_server_path() is None:
        pytest.skip(NO_REDIS)
    with socket.socket() as sock:  # a port nothing listens on (yet)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = fleet_config(f"redis://127.0.0.1:{port}/0", expected_replicas=2, timeout=0.5)
    server = RedisServer()
    try:
        with trio.fail_after(BOUND):
            async with open_fleet(config) as fleet:
                transitions = Transitions(fleet)
                assert fleet.health.degraded
                limiter = FleetRateLimiter(fleet, "p", LIMITS)
                taken = await admit_all(limiter, 5)
                assert [r.shared for r in taken] == [False] * 3
                headroom = await limiter.headroom(trio.current_time())
                assert headroom.requests == pytest.approx(0.0, abs=1e-3)
                server.port = port  # now Redis appears where the config points
                await trio.to_thread.run_sync(server.start)
                await transitions.wait_for(degraded=False)
                assert [r.shared for r in await admit_all(limiter, 7)] == [True] * 6
    finally:
        server.close()


async def test_limits_learned_from_the_upstream_are_shared_and_split(redis_server: RedisServer) -> None:
    config = fleet_config(redis_server.url, expected_replicas=3)
    with trio.fail_after(BOUND):
        async with open_fleet(config) as fleet:
            limiter = FleetRateLimiter(fleet, "openai", RateLimits(requests=600))  # tokens: unlimited
            answer = await limiter.admit(trio.current_time(), 500)
            assert answer.reservation is not None
            headers = RateLimitInfo(limit_tokens=90_000, remaining_tokens=80_000)
            await limiter.settle(answer.reservation, 400, trio.current_time(), headers, adopt=True)
            assert limiter.limits == RateLimits(requests=600, tokens=90_000)
            assert limiter.local.limits == RateLimits(requests=200, tokens=30_000)
            # The shared bucket was created full by the adoption, then lowered to the upstream's count.
            assert limiter.shared.latest is not None and limiter.shared.latest.tokens == 80_000.0
            assert not limiter.adopt(headers)  # nothing left to adopt
