"""The fleet's signal stream: append, read from an id, resume by CloudEvents id, capped window."""

from __future__ import annotations

import attrs
import pytest
import trio

from duckagents.bus import SignalBus
from duckagents.codec import dumps_signal, loads_signal
from duckagents.errors import FleetUnavailable
from duckagents.fleet import SignalBridge, SignalStream, open_fleet, parse_stream_id
from duckagents.messages import Usage
from duckagents.signals import ProviderChunk, ProviderResponse, Signal, make_signal
from duckagents.testing import RedisServer

from .support import fleet_config

BOUND = 30.0


def chunk(request_id: str, index: int, text: str = "x") -> Signal:
    return make_signal(ProviderChunk(request_id, "mock", index, text), "duckagents/agent/mock")


def response(request_id: str) -> Signal:
    data = ProviderResponse(request_id, "mock", "mock-1", "done", usage=Usage(3, 4))
    return make_signal(data, "duckagents/agent/mock")


async def test_signals_of_all_replicas_come_back_in_order_with_stream_ids(redis_server: RedisServer) -> None:
    config = fleet_config(redis_server.url)
    with trio.fail_after(BOUND):
        async with open_fleet(config) as a, open_fleet(attrs.evolve(config, instance="c")) as c:
            start = await SignalStream(a).last_id()
            assert start == "0-0"
            sent = [chunk("r1", 0), chunk("r2", 0), chunk("r1", 1), response("r1"), response("r2")]
            ids = [await SignalStream(a if n % 2 == 0 else c).publish(s) for n, s in enumerate(sent)]
            assert ids == sorted(ids, key=parse_stream_id)
            batch = await SignalStream(a).read(start)
    assert [e.id for e in batch.events] == ids and batch.last_id == ids[-1]
    assert [e.instance for e in batch.events] == ["a", "c", "a", "c", "a"]
    for event, original in zip(batch.events, sent, strict=True):
        # The CloudEvents id on the fleet stream is the stream id, the replica is named; the rest is the
        # codec's round trip.
        assert event.signal.id == event.id and event.origin_id == original.id
        assert event.signal.instance == event.instance
        assert event.signal == attrs.evolve(
            loads_signal(dumps_signal(original)), id=event.id, instance=event.instance
        )
    # Per request, in order:
    assert [
        e.signal.data.index
        for e in batch.events
        if e.signal.subject == "r1" and e.signal.type == "provider_chunk"
    ] == [0, 1]  # type: ignore[union-attr]


async def test_a_client_resumes_from_the_last_id_it_saw(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            stream = SignalStream(fleet)
            ids = await stream.publish_many([chunk("r", n) for n in range(10)])
            first = await stream.read("0-0", count=4)
            assert [e.id for e in first.events] == ids[:4]
            # The client disconnects after its fourth event and comes back with that event's id.
            rest = await stream.read(first.events[-1].signal.id, count=100)
            assert [e.id for e in rest.events] == ids[4:]
            assert not await stream.missed(first.events[-1].signal.id)
            empty = await stream.read(rest.last_id)
            assert empty.events == () and empty.last_id == rest.last_id


async def test_a_blocking_read_wakes_on_a_new_signal(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            stream = SignalStream(fleet)
            start = await stream.last_id()
            async with trio.open_nursery() as nursery:

                async def later() -> None:
                    await trio.sleep(0.05)
                    await stream.publish(response("late"))

                nursery.start_soon(later)
                batch = await stream.read(start, block=BOUND)
            assert [e.signal.subject for e in batch.events] == ["late"]


async def test_the_window_is_capped_and_a_trimmed_id_is_reported(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url, stream_maxlen=100)) as fleet:
            stream = SignalStream(fleet)
            ids = await stream.publish_many([chunk("r", n) for n in range(1000)])
            length = await fleet.client.xlen(stream.key)
            # MAXLEN ~ trims whole internal nodes: at least the cap is kept, never the whole history.
            assert 100 <= length < 1000
            first = await stream.first_id()
            assert first is not None and first == ids[1000 - length]
            assert await stream.missed(ids[0])
            assert not await stream.missed(first)
            assert not await stream.missed(ids[-1])


async def test_malformed_entries_are_skipped_but_passed(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            stream = SignalStream(fleet)
            good = await stream.publish(chunk("r", 0))
            await fleet.client.xadd(stream.key, {"instance": "x", "signal": "{not json"})
            await fleet.client.xadd(stream.key, {"something": "else"})
            bad_last = await fleet.client.xadd(
                stream.key, {"instance": "x", "signal": '{"specversion":"0.3"}'}
            )
            batch = await stream.read("0-0")
            assert [e.id for e in batch.events] == [good]
            assert batch.last_id == bad_last  # resuming from here does not re-read the junk


async def test_input_is_checked(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            stream = SignalStream(fleet, max_entry_bytes=2000)
            for bad in ("", "12", "1-2-3", "a-1", "-1-0", "1-99999999999999999999999", "$", "1 -2"):
                with pytest.raises(ValueError):
                    await stream.read(bad)
            with pytest.raises(ValueError):
                await stream.read("0-0", count=0)
            with pytest.raises(ValueError, match="entry bound"):
                await stream.publish(chunk("r", 0, "x" * 5000))
            assert await stream.publish_many([]) == []
    assert parse_stream_id("1526919030474-55") == (1526919030474, 55)


async def test_a_dead_redis_fails_fast(own_redis: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(own_redis.url, timeout=0.5)) as fleet:
            stream = SignalStream(fleet)
            await stream.publish(chunk("r", 0))
            await trio.to_thread.run_sync(own_redis.kill)
            with pytest.raises(FleetUnavailable):
                await stream.publish(chunk("r", 1))
            with pytest.raises(FleetUnavailable):
                await stream.read("0-0", block=0.2)
            assert fleet.health.degraded


async def test_the_bridge_appends_signals_close_together_in_one_round_trip(redis_server: RedisServer) -> None:
    batches: list[int] = []
    with trio.fail_after(BOUND):
        async with open_fleet(fleet_config(redis_server.url)) as fleet:
            stream = SignalStream(fleet)
            publish_many = stream.publish_many

            async def counting(signals: list[Signal], *, skip_invalid: bool = False) -> list[str]:
                batches.append(len(signals))
                return await publish_many(signals, skip_invalid=skip_invalid)

            stream.publish_many = counting  # type: ignore[method-assign]
            bus = SignalBus()
            bridge = SignalBridge(fleet, stream, bus)
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                # One request's signals, each published in a scheduler turn of its own.
                for n in range(4):
                    await bus.deliver(chunk("r1", n))
                    await trio.lowlevel.checkpoint()
                await bridge.wait_idle()
                nursery.cancel_scope.cancel()
            read = await stream.read("0-0")
    assert batches == [4] and bridge.written == 4 and bridge.dropped == 0
    assert [e.signal.data.index for e in read.events] == [0, 1, 2, 3]  # type: ignore[union-attr]
