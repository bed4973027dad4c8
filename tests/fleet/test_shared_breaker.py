"""The shared breaker across replicas: one opening stops everyone, trials are counted fleet-wide."""

from __future__ import annotations

import json

import attrs
import pytest
import trio

from duckagents.errors import ErrorKind
from duckagents.fleet import BreakerNotice, SharedBreaker, open_fleet
from duckagents.resilience import BreakerConfig, BreakerState
from duckagents.testing import RedisServer

from .support import fleet_config

BOUND = 30.0
T0 = 1000.0


async def test_an_opening_in_one_replica_stops_the_others(redis_server: RedisServer) -> None:
    config = BreakerConfig(failure_threshold=3, open_timeout=60.0)
    fleet = fleet_config(redis_server.url)
    with trio.fail_after(BOUND):
        async with open_fleet(fleet) as a, open_fleet(fleet) as b:
            in_a, in_b = SharedBreaker(a, "openai", config), SharedBreaker(b, "openai", config)
            for _ in range(3):
                assert await in_a.allow(trio.current_time())
                await in_a.record_failure(trio.current_time(), ErrorKind.UPSTREAM_5XX)
            # B's very next check refuses: the state is shared, no waiting for a notice.
            now = trio.current_time()
            assert not await in_b.allow(now)
            snapshot = await in_b.snapshot(now)
            assert snapshot.state is BreakerState.OPEN and snapshot.consecutive_failures == 3
            retry_at = await in_b.retry_at(now)
            assert retry_at is not None and retry_at - now == pytest.approx(60.0, abs=1.0)


async def test_half_open_admits_the_configured_trials_fleet_wide(redis_server: RedisServer) -> None:
    """Three replicas, eight tasks each, all asking at once when the breaker turns half-open."""
    config = BreakerConfig(failure_threshold=1, open_timeout=10.0, half_open_trials=2)
    fleet = fleet_config(redis_server.url)
    with trio.fail_after(BOUND):
        async with open_fleet(fleet) as a, open_fleet(fleet) as b, open_fleet(fleet) as c:
            # An injected clock makes "the timeout has passed" exact without sleeping.
            breakers = [SharedBreaker(f, "p", config, server_clock=False) for f in (a, b, c)]
            assert await breakers[0].allow(T0)
            await breakers[0].record_failure(T0)
            answers: list[bool] = []

            async def ask(breaker: SharedBreaker) -> None:
                answers.append(await breaker.allow(T0 + 10.0))

            async with trio.open_nursery() as nursery:
                for breaker in breakers:
                    for _ in range(8):
                        nursery.start_soon(ask, breaker)
            assert answers.count(True) == 2 and len(answers) == 24
            assert (await breakers[1].snapshot(T0 + 10.0)).trials_in_flight == 2
            # One trial succeeds: closed for everyone.
            await breakers[2].record_success(T0 + 11.0)
            assert await breakers[1].state(T0 + 11.0) is BreakerState.CLOSED


async def test_a_notice_tells_idle_replicas(redis_server: RedisServer) -> None:
    config = BreakerConfig(failure_threshold=1, open_timeout=30.0)
    fleet = fleet_config(redis_server.url)
    with trio.fail_after(BOUND):
        async with open_fleet(fleet) as a, open_fleet(attrs.evolve(fleet, instance="b")) as b:
            await b.wait_listening()
            in_a = SharedBreaker(a, "openai", config)
            in_b = SharedBreaker(b, "openai", config)
            other_provider = SharedBreaker(b, "anthropic", config)
            heard: list[BreakerNotice] = []
            changed = trio.Event()

            def listener(notice: BreakerNotice) -> None:
                heard.append(notice)
                changed.set()

            in_b.watch(listener)
            other_provider.watch(lambda notice: pytest.fail(f"notice for the wrong provider: {notice}"))
            assert await in_a.allow(trio.current_time())
            await in_a.record_failure(trio.current_time(), ErrorKind.TIMEOUT)
            await changed.wait()
            (notice,) = heard
            assert (notice.provider, notice.instance, notice.state) == ("openai", "a", BreakerState.OPEN)
            assert notice.retry_at is not None
            assert notice.retry_at - trio.current_time() == pytest.approx(30.0, abs=2.0)
            # B never called Redis itself, yet knows.
            assert in_b.latest is not None and in_b.latest.state is BreakerState.OPEN
            assert in_b.latest.consecutive_failures == 1
            # A reset is a change too.
            changed = trio.Event()
            await in_a.reset(trio.current_time())
            await changed.wait()
            assert heard[-1].state is BreakerState.CLOSED and heard[-1].retry_at is None


async def test_a_malformed_notice_is_ignored(redis_server: RedisServer) -> None:
    fleet = fleet_config(redis_server.url)
    with trio.fail_after(BOUND):
        async with open_fleet(fleet) as a:
            await a.wait_listening()
            breaker = SharedBreaker(a, "openai")
            heard: list[BreakerNotice] = []
            arrived = trio.Event()

            def listener(notice: BreakerNotice) -> None:
                heard.append(notice)
                arrived.set()

            breaker.watch(listener)
            for junk in ("not json", json.dumps({"provider": "openai", "state": "sideways"}), "[]"):
                await a.client.publish(a.keys.notices, junk)
            await breaker.force_open(trio.current_time())  # a real notice after the junk
            await arrived.wait()
            assert [n.state for n in heard] == [BreakerState.FORCED_OPEN] and heard[0].forced


async def test_a_trial_lease_frees_slots_of_a_replica_that_vanished(redis_server: RedisServer) -> None:
    config = BreakerConfig(failure_threshold=1, open_timeout=10.0, half_open_trials=1)
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            breaker = SharedBreaker(fleet, "p", config, trial_lease=30.0, server_clock=False)
            assert await breaker.allow(T0)
            await breaker.record_failure(T0)
            assert await breaker.allow(T0 + 10.0)  # the trial; its replica then dies without a verdict
            assert not await breaker.allow(T0 + 39.9)
            assert await breaker.allow(T0 + 40.0)  # the lease ran out: the slot is free again
            assert not await breaker.allow(T0 + 40.0)
            assert (await breaker.snapshot(T0 + 40.0)).trials_in_flight == 1
            with pytest.raises(ValueError):
                SharedBreaker(fleet, "p", config, trial_lease=0.0)


async def test_a_closed_idle_breaker_holds_no_key(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            breaker = SharedBreaker(fleet, "p")
            assert await breaker.allow(trio.current_time())
            assert await fleet.client.exists([breaker.key]) == 1
            await breaker.record_success(trio.current_time())
            assert await fleet.client.exists([breaker.key]) == 0
