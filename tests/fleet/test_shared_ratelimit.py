"""The shared rate limiter on the server's clock: several replicas, one quota."""

from __future__ import annotations

import re

import pytest
import trio

from duckagents.fleet import FleetKeys, SharedRateLimiter, open_fleet
from duckagents.resilience import Admission, RateLimitInfo, RateLimits
from duckagents.testing import RedisServer

from .support import fleet_config

BOUND = 30.0


def test_keys_of_one_provider_share_a_hash_tag() -> None:
    keys = FleetKeys("duck")
    tags = {
        re.search(r"\{[^}]*\}", key)[0]
        for key in (keys.rate_limit("openai", "gpt-4o"), keys.breaker("openai"))
    }  # type: ignore[index]
    assert tags == {"{duck:openai}"}
    # A provider name with braces cannot end the tag early or start another.
    odd = keys.rate_limit("a}{b%", "m{1}")
    assert odd.startswith("{duck:a%7D%7Bb%25}") and odd.count("{") == 1 and odd.count("}") == 1
    assert keys.rate_limit("a%7D") != keys.rate_limit("a}")


async def test_replicas_share_one_quota(redis_server: RedisServer) -> None:
    """Three replicas admitting concurrently get exactly the limit between them, not three times it."""
    config = fleet_config(redis_server.url)
    limits = RateLimits(requests=30, period=3600.0)  # no refill to speak of during the test
    admitted: list[bool] = []
    with trio.fail_after(BOUND):
        async with open_fleet(config) as a, open_fleet(config) as b, open_fleet(config) as c:
            limiters = [SharedRateLimiter(f, "openai", limits) for f in (a, b, c)]

            async def hammer(limiter: SharedRateLimiter) -> None:
                for _ in range(20):
                    answer = await limiter.admit(trio.current_time())
                    admitted.append(answer.admitted)

            async with trio.open_nursery() as nursery:
                for limiter in limiters:
                    for _ in range(2):
                        nursery.start_soon(hammer, limiter)
    assert len(admitted) == 120
    assert admitted.count(True) == 30


async def test_retry_at_is_in_the_callers_clock(redis_server: RedisServer) -> None:
    """The script reads Redis TIME; answers come back in the caller's clock (here Trio's)."""
    limits = RateLimits(requests=2, period=60.0)
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            limiter = SharedRateLimiter(fleet, "p", limits)
            for _ in range(2):
                assert (await limiter.admit(trio.current_time())).admitted
            # Each call reports the headroom it left, in the caller's clock.
            assert limiter.latest is not None and limiter.latest.requests is not None
            assert limiter.latest.requests < 0.1 and limiter.latest.retry_at is not None
            now = trio.current_time()
            refused = await limiter.admit(now)
            assert not refused.admitted and refused.retry_at is not None
            # One request refills in 30 s of the server's clock; the translation only shifts by the
            # difference of the two clocks measured within this one call.
            assert refused.retry_at - now == pytest.approx(30.0, abs=1.0)
            headroom = await limiter.headroom(trio.current_time())
            assert headroom.requests is not None and headroom.requests < 0.1
            assert headroom.retry_at is not None and headroom.retry_at > now


async def test_idle_state_expires_once_it_equals_a_fresh_limiter(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            limiter = SharedRateLimiter(fleet, "p", RateLimits(requests=10, tokens=1000, period=60.0))
            assert (await limiter.admit(trio.current_time(), 500)).admitted
            ttl = await fleet.client.pttl(limiter.key)
            # 500 tokens refill in 30 s, one request in 6 s: the state must outlive 30 s, and not by much.
            assert 30_000 <= ttl <= 31_100
            await limiter.observe(trio.current_time(), RateLimitInfo(retry_after=100.0))
            assert 100_000 <= await fleet.client.pttl(limiter.key) <= 101_100
            # With an injected clock there is no expiry (it would run on another time line).
            injected = SharedRateLimiter(fleet, "q", RateLimits(requests=1), server_clock=False)
            assert (await injected.admit(5.0)).admitted
            assert await fleet.client.pttl(injected.key) == -1


async def test_settle_observe_and_cancel_reach_the_shared_buckets(redis_server: RedisServer) -> None:
    limits = RateLimits(requests=5, tokens=1000, period=3600.0)
    with trio.fail_after(BOUND):
        async with (
            open_fleet(fleet_config(redis_server.url)) as a,
            open_fleet(fleet_config(redis_server.url)) as b,
        ):
            # Two separate fleets (different prefixes) do not share anything ...
            mine = SharedRateLimiter(a, "p", limits)
            other = SharedRateLimiter(b, "p", limits)
            reservation = (await mine.admit(trio.current_time(), 800)).reservation
            assert reservation is not None
            assert (await other.headroom(trio.current_time())).tokens == 1000.0
            # ... while a settle with headers is one call: refund to 100 used, then the upstream says 50.
            await mine.settle(reservation, 100, trio.current_time(), RateLimitInfo(remaining_tokens=50))
            headroom = await mine.headroom(trio.current_time())
            assert headroom.tokens == pytest.approx(50.0, abs=1.0)
            second = (await mine.admit(trio.current_time(), 10)).reservation
            assert second is not None
            await mine.cancel(second, trio.current_time())
            assert (await mine.headroom(trio.current_time())).requests == pytest.approx(4.0, abs=0.01)


async def test_arguments_are_checked_before_redis(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            limiter = SharedRateLimiter(fleet, "p", RateLimits(tokens=100))
            with pytest.raises(ValueError):
                await limiter.admit(0.0, -1)
            assert await limiter.admit(0.0, 101) == Admission(admitted=False)
