"""coredis (anyio) runs on Trio against a real redis-server: connect, EVALSHA, streams, pub/sub.

These pin the library behaviour the fleet layer relies on, each within a bounded time.
"""

from __future__ import annotations

import coredis
import pytest
import trio
from coredis import PureToken
from coredis.exceptions import ConnectionError as RedisConnectionError

from duckagents.testing import RedisServer

from .support import unique_prefix

BOUND = 10.0  # seconds: far above what any of these takes, only there so that nothing can hang


def client_for(server: RedisServer) -> coredis.Redis[str]:
    assert server.port is not None
    return coredis.Redis(host="127.0.0.1", port=server.port, decode_responses=True, connect_timeout=2.0)


async def test_connect_and_evalsha_with_noscript_fallback(redis_server: RedisServer) -> None:
    key = f"{{{unique_prefix()}}}:n"
    with trio.fail_after(BOUND):
        async with client_for(redis_server) as client:
            assert await client.ping() == "PONG"
            script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
            assert await script(keys=[key], args=["2"]) == 2
            assert await client.script_exists([script.sha]) == (True,)
            # A restarted server forgets its scripts: the call answers NOSCRIPT, loads and retries.
            await client.script_flush()
            assert await client.script_exists([script.sha]) == (False,)
            assert await script(keys=[key], args=["3"]) == 5
            assert await client.script_exists([script.sha]) == (True,)


async def test_xadd_capped_and_xread_from_an_id(redis_server: RedisServer) -> None:
    key = f"{unique_prefix()}:stream"
    with trio.fail_after(BOUND):
        async with client_for(redis_server) as client:
            ids = [
                await client.xadd(
                    key,
                    {"n": str(n)},
                    trim_strategy=PureToken.MAXLEN,
                    threshold=5,
                    trim_operator=PureToken.EQUAL,
                )
                for n in range(8)
            ]
            assert await client.xlen(key) == 5
            reply = await client.xread({key: ids[4]}, count=10)
            assert reply is not None
            assert [e.field_values["n"] for e in reply[key]] == ["5", "6", "7"]
            # A blocking read returns as soon as another task appends.
            async with trio.open_nursery() as nursery:

                async def append_later() -> None:
                    await trio.sleep(0.05)
                    await client.xadd(key, {"n": "8"})

                nursery.start_soon(append_later)
                reply = await client.xread({key: ids[-1]}, count=10, block=int(BOUND * 1000))
            assert reply is not None and [e.field_values["n"] for e in reply[key]] == ["8"]


async def test_pubsub_delivers_to_a_subscriber(redis_server: RedisServer) -> None:
    channel = f"{unique_prefix()}:notices"
    with trio.fail_after(BOUND):
        async with client_for(redis_server) as client:
            async with client.pubsub(channels=[channel], ignore_subscribe_messages=True) as subscription:
                assert await client.publish(channel, "hello") == 1
                received = []
                async for message in subscription:  # subscribe confirmations are skipped
                    received.append((message["channel"], message["data"]))
                    break
                assert received == [(channel, "hello")]


async def test_a_cancelled_command_does_not_desynchronise_the_connection(own_redis: RedisServer) -> None:
    """Trio cancels a command whose reply is late; the next replies still match their commands."""
    key = f"{unique_prefix()}:counter"
    with trio.fail_after(BOUND):
        async with client_for(own_redis) as client:
            assert await client.incr(key) == 1
            await trio.to_thread.run_sync(own_redis.pause)
            with trio.move_on_after(0.2) as scope:
                await client.incr(key)
            assert scope.cancelled_caught
            await trio.to_thread.run_sync(own_redis.resume)
            # The cancelled INCR still ran on the server (its outcome is unknown to the caller).
            assert await client.incr(key) == 3
            assert await client.get(key) == "3"


async def test_a_dead_server_fails_fast_and_a_restarted_one_is_reached_again(own_redis: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with client_for(own_redis) as client:
            assert await client.ping() == "PONG"
            await trio.to_thread.run_sync(own_redis.kill)
            with pytest.raises(RedisConnectionError):
                await client.ping()
            await trio.to_thread.run_sync(own_redis.start)
            assert await client.ping() == "PONG"
