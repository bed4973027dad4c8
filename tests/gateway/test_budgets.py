"""Byte budgets of the gateway's buffers: the frame cache and the outboxes hold at most so many bytes."""

from __future__ import annotations

import json

import trio
import trio.testing

from duckagents.gateway._outbox import Outbox, SlowConsumer
from duckagents.gateway._protocol import signal_prefix
from duckagents.gateway._wire import Frame, FrameCache
from duckagents.messages import Message
from duckagents.signals import ProviderRequest, make_signal

PREFIX = signal_prefix(subscription="s")


def prompt(size: int) -> ProviderRequest:
    return ProviderRequest(f"r{size}", (Message.user("p" * size),))


def test_frame_cache_is_bounded_in_bytes_as_well_as_entries() -> None:
    cache = FrameCache(size=8192, max_bytes=4_000_000)
    kept = []
    for _ in range(40):  # 40 prompts of 100 KB: 8 MB of frames and events if nothing were evicted
        signal = make_signal(prompt(100_000), "/router")
        kept.append(signal)
        cache.frame(signal, PREFIX)
        assert cache.bytes <= cache.max_bytes
    assert len(cache) < 40
    # What it still holds is served from the cache; what it evicted is encoded again, the same.
    last, first = kept[-1], kept[0]
    assert cache.frame(last, PREFIX) is cache.frame(last, PREFIX)
    again = Frame(PREFIX + cache.event_json(first) + "}", droppable=True)
    assert cache.frame(first, PREFIX).text == again.text


def test_an_encoding_too_large_for_the_cache_is_returned_but_not_kept() -> None:
    cache = FrameCache(max_bytes=1_000_000)
    signal = make_signal(prompt(300_000), "/router")
    frame = cache.frame(signal, PREFIX)
    assert json.loads(frame.text)["event"]["data"]["messages"][0]["content"][0]["text"] == "p" * 300_000
    assert cache.bytes == 0 and len(cache) == 0


def sig(size: int, tag: int = 0) -> Frame:
    return Frame(json.dumps({"t": tag, "pad": "x" * size}), droppable=True)


async def test_outbox_drops_oldest_signals_beyond_its_byte_budget() -> None:
    box = Outbox(1000, SlowConsumer.DROP_OLDEST, max_bytes=10_000)
    for tag in range(10):
        box.push_signal(sig(3_000, tag))
        assert box.bytes <= 10_000
    batch = await box.take()
    assert batch is not None
    assert json.loads(batch[0].text) == {"type": "dropped", "count": 7, "total": 7}
    assert [json.loads(f.text)["t"] for f in batch[1:]] == [7, 8, 9]
    assert box.bytes == 0


async def test_one_signal_larger_than_the_budget_is_still_delivered_alone() -> None:
    box = Outbox(1000, SlowConsumer.DROP_OLDEST, max_bytes=1_000)
    box.push_signal(sig(10, 1))
    box.push_signal(sig(5_000, 2))  # the newest is always kept; the older one makes room
    batch = await box.take()
    assert batch is not None and [json.loads(f.text).get("t") for f in batch] == [None, 2]


async def test_disconnect_policy_trips_on_bytes() -> None:
    tripped: list[bool] = []
    box = Outbox(1000, SlowConsumer.DISCONNECT, max_bytes=10_000, on_overflow=lambda: tripped.append(True))
    box.push_signal(sig(6_000))
    assert not tripped
    box.push_signal(sig(6_000))
    assert tripped == [True] and box.overflowed


async def test_control_frames_wait_for_room_in_bytes() -> None:
    box = Outbox(10, SlowConsumer.DROP_OLDEST, max_bytes=10_000)
    await box.push_control(json.dumps({"pad": "c" * 6_000}))
    pushed = trio.Event()

    async def second() -> None:
        await box.push_control(json.dumps({"pad": "d" * 6_000}))
        pushed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not pushed.is_set()  # 12 KB would exceed the budget: the pusher waits
        batch = await box.take()
        assert batch is not None and len(batch) == 1
        await pushed.wait()
    assert box.bytes > 6_000
