"""The fan-out task on a real bus, driven by the mock clock: matching, pacing, removal, loss accounting."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
import trio_websocket

from duckagents.bus import SignalBus, SignalFilter
from duckagents.gateway import _fanout as fanout_module
from duckagents.gateway._fanout import PACE, Fanout
from duckagents.gateway._outbox import Outbox, SlowConsumer
from duckagents.gateway._protocol import signal_prefix
from duckagents.gateway._route import Route
from duckagents.gateway._wire import FrameCache
from duckagents.signals import ProviderChunk, ProviderStatus, Signal, make_signal

from .support import connect as ws_connect
from .support import fake_router, running_gateway


def chunk(index: int, provider: str = "p") -> Signal:
    return make_signal(ProviderChunk("r", provider, index), "/t")


def drained(box: Outbox) -> list[dict[str, object]]:
    frames = []
    while len(box):
        batch = box._queue.popleft()
        frames.append(json.loads(batch.text))
    return frames


async def test_routes_get_the_matching_signals_in_order(autojump_clock: trio.testing.MockClock) -> None:
    bus = SignalBus()
    closed: list[bool] = []
    fanout = Fanout(bus, FrameCache(), on_bus_closed=lambda: closed.append(True))
    everything, only_q = Outbox(100, SlowConsumer.DROP_OLDEST), Outbox(100, SlowConsumer.DROP_OLDEST)
    all_route = Route(SignalFilter(), signal_prefix(subscription="all"), everything)
    fanout.add(all_route)
    fanout.add(Route(SignalFilter(providers=["q"]), signal_prefix(subscription=1), only_q))
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for i in range(5):
            await bus.publish(chunk(i, "p" if i % 2 else "q"))
        await trio.sleep(1)
        fanout.remove(all_route)
        await bus.publish(chunk(5, "q"))
        await bus.publish(make_signal(ProviderStatus("q", 1.0, "closed"), "/q"))
        await trio.sleep(1)
        bus.close()
    assert closed == [True]
    assert [f["event"]["data"]["index"] for f in drained(everything)] == [0, 1, 2, 3, 4]  # type: ignore[index]
    got = drained(only_q)
    assert [f["subscription"] for f in got] == [1, 1, 1, 1, 1]
    assert [f["event"]["type"] for f in got] == ["provider_chunk"] * 4 + ["provider_status"]  # type: ignore[index]
    assert fanout.routes == 1


async def test_bursts_are_paced_and_a_flush_delivers_at_once(autojump_clock: trio.testing.MockClock) -> None:
    bus = SignalBus()
    fanout = Fanout(bus, FrameCache(), on_bus_closed=lambda: None)
    box = Outbox(100, SlowConsumer.DROP_OLDEST)
    fanout.add(Route(SignalFilter(), signal_prefix(subscription="s"), box))
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await bus.publish(chunk(0))
        await trio.testing.wait_all_tasks_blocked()
        assert len(box) == 1  # the first signal after a quiet spell goes out at once
        start = trio.current_time()
        await bus.publish(chunk(1))
        await bus.publish(chunk(2))
        await trio.testing.wait_all_tasks_blocked()
        assert len(box) == 1 and trio.current_time() == start  # held during the pause...
        await fanout.barrier()
        assert len(box) == 3  # ...unless someone needs them now (a ping)
        nursery.cancel_scope.cancel()


async def test_a_barrier_never_overtakes_the_signal_being_handed_to_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The race a busy machine hits: the fan-out task, idle in receive(), is handed a signal, and before it
    # runs more signals are published and a ping asks for a barrier. Flushing the buffer then would send
    # the newer signals first (and the ping's ack before the older one).
    bus = SignalBus()
    fanout = Fanout(bus, FrameCache(), on_bus_closed=lambda: None)
    box = Outbox(100, SlowConsumer.DROP_OLDEST)
    fanout.add(Route(SignalFilter(), signal_prefix(subscription="s"), box))
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await trio.testing.wait_all_tasks_blocked()  # idle in receive()
        for i in range(3):  # no schedule point in between: the task has not run yet
            assert bus.publish_nowait(chunk(i))
        await fanout.barrier()
        assert [f["event"]["data"]["index"] for f in drained(box)] == [0, 1, 2]  # type: ignore[index]
        nursery.cancel_scope.cancel()


async def test_signals_the_fanout_lost_are_reported_once_per_connection(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout_module, "BUFFER", 2)
    bus = SignalBus()
    fanout = Fanout(bus, FrameCache(), on_bus_closed=lambda: None)
    shared, other = Outbox(100, SlowConsumer.DROP_OLDEST), Outbox(100, SlowConsumer.DROP_OLDEST)
    fanout.add(Route(SignalFilter(types=["provider_chunk"]), signal_prefix(subscription="a"), shared))
    fanout.add(Route(SignalFilter(providers=["p"]), signal_prefix(subscription="b"), shared))
    fanout.add(Route(SignalFilter(), signal_prefix(subscription="c"), other))
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await bus.publish(chunk(0))
        await trio.testing.wait_all_tasks_blocked()  # delivered; the fan-out now pauses
        for i in range(1, 6):
            await bus.publish(chunk(i))  # its bus buffer holds 2: three are lost
        await trio.sleep(PACE * 10)
        nursery.cancel_scope.cancel()
    assert shared.dropped_total == 3 and other.dropped_total == 3


async def test_a_closed_bus_closes_every_connection_with_1001() -> None:
    async with fake_router() as router, running_gateway(router) as gateway:
        async with ws_connect(gateway) as client:
            await client.call({"type": "subscribe", "id": "s"})
            router.bus.close()
            with trio.fail_after(10):
                while True:
                    try:
                        await client.ws.get_message()
                    except trio_websocket.ConnectionClosed as exc:
                        reason = exc.reason
                        break
    assert reason is not None and reason.code == 1001 and "router" in (reason.reason or "")
