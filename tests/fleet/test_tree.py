"""Trees in fleet mode, in one test process: two replicas (two ``open_tree`` with the same ``[fleet]``)
share one rate limit, one breaker, one budget and one stream through a real redis-server; a replica
whose Redis dies goes on with its share, says so on its bus and re-joins.

The subprocess tests (``test_serve_fleet.py``) do the same through ``duckagents serve``; these pin the
mechanics quickly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from duckagents.app import Tree, open_tree
from duckagents.bus import SignalBus
from duckagents.config import Config, FleetConfig, ProviderConfig, RouterConfig
from duckagents.costs import Budget
from duckagents.errors import ErrorKind, ProviderError
from duckagents.providers import MockProvider
from duckagents.resilience import BreakerConfig, RateLimits
from duckagents.signals import FleetDegraded, FleetRejoined, ProviderResponse
from duckagents.testing import RedisServer
from tests.helpers import Recorder

from .support import fleet_config

BOUND = 30.0  # per test: a guard against a hang, not a timing assertion


def provider(**kwargs: Any) -> ProviderConfig:
    return ProviderConfig(name="m", kind="mock", **kwargs)


def config_for(fleet: FleetConfig, *providers: ProviderConfig, **router: Any) -> Config:
    settings = {"max_attempts": 1, "request_timeout": 5.0, **router}
    return Config(providers=providers, router=RouterConfig(**settings), fleet=fleet, health_interval=1000.0)


@asynccontextmanager
async def replica(
    config: Config, instance: str, mock: MockProvider
) -> AsyncIterator[tuple[Tree, Recorder]]:
    assert config.fleet is not None
    config = attrs.evolve(config, fleet=attrs.evolve(config.fleet, instance=instance))
    bus = SignalBus()
    recorder = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        async with open_tree(config, bus=bus, providers={"m": mock}) as tree:
            yield tree, recorder
        bus.close()


async def outcome(tree: Tree, prompt: str, **options: Any) -> ProviderResponse | ProviderError:
    try:
        return await tree.router.complete(prompt, **options)
    except ProviderError as exc:
        return exc


async def test_two_replicas_share_one_rate_limit(redis_server: RedisServer) -> None:
    fleet = fleet_config(redis_server.url, expected_replicas=2)
    config = config_for(fleet, provider(limits=RateLimits(requests=4, period=3600.0)))
    one, two = MockProvider(), MockProvider()
    results: list[ProviderResponse | ProviderError] = []
    with trio.fail_after(BOUND):
        async with replica(config, "a", one) as (a, _), replica(config, "b", two) as (b, _):
            assert a.fleet is not None and a.fleet.instance == "a" and not a.fleet.degraded

            async def ask(tree: Tree, n: int) -> None:
                results.append(await outcome(tree, f"q{n}", timeout=1.0))

            async with trio.open_nursery() as nursery:
                for n in range(6):
                    nursery.start_soon(ask, a if n % 2 else b, n)
    answered = [r for r in results if isinstance(r, ProviderResponse)]
    refused = [r for r in results if isinstance(r, ProviderError)]
    # Four requests per hour for the whole fleet: each replica alone would have let four through.
    assert len(answered) == 4 and one.calls + two.calls == 4
    assert {e.kind for e in refused} == {ErrorKind.RATE_LIMITED}


async def test_a_breaker_opened_in_one_replica_stops_the_other(redis_server: RedisServer) -> None:
    fleet = fleet_config(redis_server.url)
    breaker = BreakerConfig(failure_threshold=2, open_timeout=0.5, half_open_trials=1)
    config = config_for(fleet, provider(breaker=breaker))
    one, two = MockProvider(latency=0.3), MockProvider(latency=0.3)
    with trio.fail_after(BOUND):
        async with replica(config, "a", one) as (a, _), replica(config, "b", two) as (b, rec_b):
            one.fail_next(ErrorKind.UPSTREAM_5XX, count=2)
            for n in range(2):
                assert isinstance(await outcome(a, f"fail {n}"), ProviderError)
            # Replica b never failed: the shared breaker refuses for it, its upstream is not called.
            refused = await outcome(b, "after")
            assert isinstance(refused, ProviderError) and refused.kind is ErrorKind.CIRCUIT_OPEN
            assert two.calls == 0
            # Its agent heard of it (the notice), and reported it.
            await rec_b.wait_for(
                lambda s: s.type == "provider_status" and s.data.breaker_state == "open",  # type: ignore[union-attr]
                within=5,
            )
            await trio.sleep(0.6)  # half-open: one trial for the whole fleet
            results: list[ProviderResponse | ProviderError] = []

            async def ask(tree: Tree, n: int) -> None:
                results.append(await outcome(tree, f"trial {n}"))

            async with trio.open_nursery() as nursery:
                for n in range(6):
                    nursery.start_soon(ask, a if n % 2 else b, n)
    assert one.calls - 2 + two.calls == 1  # the two failures, then exactly one trial
    answered = [r for r in results if isinstance(r, ProviderResponse)]
    assert len(answered) == 1
    assert {r.kind for r in results if isinstance(r, ProviderError)} == {ErrorKind.CIRCUIT_OPEN}


async def test_a_budget_is_not_overspent_by_two_replicas_racing(redis_server: RedisServer) -> None:
    fleet = fleet_config(redis_server.url, expected_replicas=2)
    # $2 per 1,000 output tokens, one token ("ok") a request at max_tokens=1: $0.002 held and spent per
    # request; a 1-cent budget fits five, however the ten requests of two replicas interleave.
    config = config_for(
        fleet, provider(cost_per_1k_input=0.0, cost_per_1k_output=2.0, budget=Budget(usd=0.01, period="day"))
    )
    one, two = MockProvider(latency=0.2), MockProvider(latency=0.2)
    for mock in (one, two):
        mock.push_reply(*["ok"] * 10)
    results: list[ProviderResponse | ProviderError] = []
    with trio.fail_after(BOUND):
        async with replica(config, "a", one) as (a, _), replica(config, "b", two) as (b, _):

            async def ask(tree: Tree, n: int) -> None:
                results.append(await outcome(tree, f"q{n}", max_tokens=1))

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(ask, a if n % 2 else b, n)
            spends = [await a.router.spend(), await b.router.spend()]
    answered = [r for r in results if isinstance(r, ProviderResponse)]
    assert len(answered) == 5 and one.calls + two.calls == 5
    assert {r.kind for r in results if isinstance(r, ProviderError)} == {ErrorKind.BUDGET_EXCEEDED}
    for [row] in spends:  # both replicas see the fleet's spend
        assert row.account == "provider:m" and abs(row.spent - 0.01) < 1e-9 and row.held == 0.0


async def test_each_replica_lists_the_whole_fleet(redis_server: RedisServer) -> None:
    fleet = fleet_config(redis_server.url, status_interval=0.1)
    config = config_for(fleet, provider())
    with trio.fail_after(BOUND):
        async with replica(config, "a", MockProvider()) as (a, _), replica(config, "b", MockProvider()):
            assert a.fleet is not None
            while {r.instance for r in a.fleet.replicas} != {"a", "b"}:
                await a.fleet.directory.next_read()
            for report in a.fleet.replicas:
                [agent] = report.agents
                assert agent["provider"] == "m" and agent["instance"] == report.instance
        # b left cleanly: a no longer lists it once it read the directory again.
        async with replica(config, "a", MockProvider()) as (a, _):
            assert a.fleet is not None
            while {r.instance for r in a.fleet.replicas} != {"a"}:
                await a.fleet.directory.next_read()


async def test_redis_dying_degrades_to_the_share_and_rejoins(own_redis: RedisServer) -> None:
    fleet = fleet_config(own_redis.url, timeout=0.2, probe_interval=0.1, expected_replicas=2)
    config = config_for(fleet, provider(limits=RateLimits(requests=10, period=3600.0)))
    mock = MockProvider()
    with trio.fail_after(BOUND):
        async with replica(config, "a", mock) as (tree, rec):
            assert isinstance(await outcome(tree, "joined"), ProviderResponse)
            await trio.to_thread.run_sync(own_redis.kill)
            # No request is lost: the first one to find Redis dead waits at most the timeout, then the
            # local share (10 / 2 = 5 per hour) decides.
            results = [await outcome(tree, f"degraded {n}", timeout=1.0) for n in range(7)]
            [degraded] = await rec.wait_for(lambda s: s.type == FleetDegraded.TYPE, within=5)
            assert degraded.data.instance == "a" and degraded.data.expected_replicas == 2  # type: ignore[union-attr]
            assert tree.fleet is not None and tree.fleet.degraded
            assert [isinstance(r, ProviderResponse) for r in results] == [True] * 5 + [False] * 2
            assert {r.kind for r in results if isinstance(r, ProviderError)} == {ErrorKind.RATE_LIMITED}
            await trio.to_thread.run_sync(own_redis.start)
            [rejoined] = await rec.wait_for(lambda s: s.type == FleetRejoined.TYPE, within=10)
            assert rejoined.data.instance == "a"  # type: ignore[union-attr]
            assert not tree.fleet.degraded
            # The agent tells the router at once: its limiter (the fleet's again) admits.
            after = rec.signals.index(rejoined)
            await rec.wait_for(
                lambda s: s.type == "provider_status" and s.data.headroom.retry_at is None,  # type: ignore[union-attr]
                after=after, within=5,
            )
            # The restarted Redis forgot the bucket (no persistence): shared limits decide again.
            assert isinstance(await outcome(tree, "rejoined"), ProviderResponse)


async def test_an_operators_breaker_switch_holds_for_the_whole_fleet(redis_server: RedisServer) -> None:
    config = config_for(fleet_config(redis_server.url), provider())
    one, two = MockProvider(), MockProvider()
    with trio.fail_after(BOUND):
        async with replica(config, "a", one) as (a, rec_a), replica(config, "b", two) as (b, rec_b):
            reply = await a.router.controls.send("m", "breaker_force_open", principal="ops")
            assert reply.ok and reply.breaker_state == "forced_open" and "fleet-wide" in reply.message
            refused = await outcome(b, "while forced")
            assert isinstance(refused, ProviderError) and refused.kind is ErrorKind.CIRCUIT_OPEN
            assert two.calls == 0
            # b's agent heard of it from a's notice and told its router.
            await rec_b.wait_for(
                lambda s: s.type == "provider_status" and s.data.breaker_state == "forced_open",  # type: ignore[union-attr]
                within=5,
            )
            # Switched off from the other replica: both take requests, failures count nowhere.
            reply = await b.router.controls.send("m", "breaker_disable", principal="ops")
            assert reply.ok and reply.breaker_state == "disabled"
            await rec_a.wait_for(
                lambda s: s.type == "provider_status" and s.data.breaker_state == "disabled",  # type: ignore[union-attr]
                within=5,
            )
            one.fail_next(ErrorKind.UPSTREAM_5XX, count=6)
            for n in range(6):
                assert isinstance(await outcome(a, f"fails {n}"), ProviderError)
            assert isinstance(await outcome(b, "still admitted"), ProviderResponse)
            reply = await a.router.controls.send("m", "breaker_reset", principal="ops")
            assert reply.breaker_state == "closed"
    assert one.calls == 6 and two.calls == 1


async def test_calls_waiting_for_a_turn_ask_redis_one_at_a_time(redis_server: RedisServer) -> None:
    # A bucket of 2 refilled every 0.25 s; 10 requests at once: 2 go, 8 wait for their turns.
    config = config_for(fleet_config(redis_server.url), provider(limits=RateLimits(requests=2, period=0.5)))
    mock = MockProvider()
    asked: list[float] = []
    results: list[ProviderResponse | ProviderError] = []
    with trio.fail_after(BOUND):
        async with replica(config, "a", mock) as (a, _):
            assert a.fleet is not None
            gate = a.fleet.gates["m"]
            admit = gate.admit

            async def counting(now: float, tokens: int = 0) -> Any:
                asked.append(now)
                return await admit(now, tokens)

            gate.admit = counting  # type: ignore[method-assign]

            async def ask(n: int) -> None:
                results.append(await outcome(a, f"q{n}", timeout=10.0))

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(ask, n)
    assert all(isinstance(r, ProviderResponse) for r in results) and mock.calls == 10
    # Each call asks once on arrival; after that only the first in line asks at each refill (a turn
    # that comes a little early costs another ask or two).
    assert len(asked) <= 10 + 8 + 2 * 8, len(asked)  # every waiter at every refill: 56 here
