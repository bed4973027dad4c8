"""The fleet link itself: bounded calls, secrets kept out of errors and logs, scripts, clean shutdown."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio

from duckagents.errors import FleetUnavailable
from duckagents.fleet import open_fleet
from duckagents.testing import RedisServer, redis_server_path

from .support import NO_REDIS, fleet_config

BOUND = 30.0


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    if redis_server_path() is None:
        pytest.skip(NO_REDIS)
    with RedisServer(password="hunter2-s3cret") as server:
        yield server


async def test_a_wrong_password_degrades_without_showing_it(
    redis_with_password: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert redis_with_password.port is not None
    url = f"redis://:hunter2-wrong@127.0.0.1:{redis_with_password.port}/0"
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(url, timeout=1.0)) as fleet:
            assert fleet.health.degraded  # the first PING already failed
            with pytest.raises(FleetUnavailable) as info:
                await fleet.ping()
    reason = fleet.health.status.reason or ""
    assert "hunter2" not in str(info.value) and "hunter2" not in reason and "hunter2" not in caplog.text
    assert "degraded" in caplog.text and "127.0.0.1" in caplog.text


async def test_the_password_comes_from_the_url_or_the_environment(redis_with_password: RedisServer) -> None:
    assert redis_with_password.port is not None
    bare_url = f"redis://127.0.0.1:{redis_with_password.port}/0"
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_with_password.url, timeout=1.0)) as fleet:
            assert not fleet.health.degraded
            await fleet.ping()
        config = fleet_config(bare_url, password_env="FLEET_TEST_PW", timeout=1.0)
        async with open_fleet(config, environ={"FLEET_TEST_PW": "hunter2-s3cret"}) as fleet:
            assert not fleet.health.degraded
            await fleet.ping()
        async with open_fleet(fleet_config(bare_url, timeout=1.0)) as fleet:
            assert fleet.health.degraded  # no password: NOAUTH
            assert "hunter2" not in (fleet.health.status.reason or "")


async def test_scripts_are_shipped_and_a_bad_call_is_an_error_not_a_hang(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            for name in ("ratelimit", "breaker"):
                assert "redis.call" in fleet.script_source(name)
            with pytest.raises(FleetUnavailable, match="unknown op"):
                await fleet.run_script(
                    "ratelimit", ["{x}:k"], ["sideways", "1", "", "", "", "", "300"], "test", reply_length=6
                )
            # Any failure degrades; the probe re-joins at once since Redis itself is fine.
            assert fleet.health.degraded
            rejoined = trio.Event()
            fleet.health.watch(lambda status: rejoined.set())
            await rejoined.wait()
            assert not fleet.health.degraded


async def test_leaving_the_block_stops_every_task(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            async with open_fleet(fleet_config(redis_server.url)) as fleet:
                await fleet.wait_listening()
            nursery.cancel_scope.deadline = trio.current_time() + 5  # nothing may be left to wait for
