"""Signal bus throughput against a bare Trio memory channel hop, in the same process and run.

The baseline is the cheapest possible hand-off between two Trio tasks: one bounded memory channel, one
sender, one receiver. The bus is measured the same way (one publisher, ``k`` subscribers each draining
its own subscription), for ``k`` = 1, 10, 100 by default. Both use the same buffer size and the same
signal object, so the difference is the bus's routing and bookkeeping.

The work is CPU-bound in one thread, so rates are given per CPU-second of this process (``process_time``)
as the headline: on a shared machine, wall-clock rates mostly measure the neighbours. Wall-clock rates
are kept alongside.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from duckagents.bus import SignalBus
from duckagents.signals import ProviderChunk, Signal, make_signal

BUFFER = 1024


def sample_signal() -> Signal:
    """A representative signal: a streamed chunk, the most frequent signal on a busy bus."""
    return make_signal(ProviderChunk("req-1", "openai", 0, "hello"), "/agents/openai")


async def _timed(fn: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``fn``."""
    wall, cpu = trio.current_time(), time.process_time()
    await fn()
    return trio.current_time() - wall, time.process_time() - cpu


async def channel_hop(count: int, signal: Signal) -> None:
    """Move ``count`` signals from one task to another over a memory channel."""
    send, recv = trio.open_memory_channel[Signal](BUFFER)

    async def consume() -> None:
        async with recv:
            for _ in range(count):
                await recv.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        async with send:
            for _ in range(count):
                await send.send(signal)


async def bus_fanout(count: int, subscribers: int, signal: Signal) -> None:
    """Publish ``count`` signals and have each of ``subscribers`` receive all of them."""
    bus = SignalBus(default_buffer=BUFFER)
    subs = [bus.subscribe() for _ in range(subscribers)]

    async def consume(index: int) -> None:
        with subs[index] as sub:
            for _ in range(count):
                await sub.receive()

    async with trio.open_nursery() as nursery:
        for index in range(subscribers):
            nursery.start_soon(consume, index)
        for _ in range(count):
            await bus.publish(signal)
    stats = bus.stats()
    bus.close()
    if stats.delivered != count * subscribers:
        raise RuntimeError(f"bus delivered {stats.delivered}, expected {count * subscribers}")


async def _median_times(repeats: int, fn: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    runs = [await _timed(fn) for _ in range(repeats)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


async def _measure(params: dict[str, Any]) -> dict[str, Any]:
    signal = sample_signal()
    deliveries = int(params.get("deliveries", 200_000))
    repeats = int(params.get("repeats", 5))
    fanouts = [int(k) for k in params.get("subscribers", (1, 10, 100))]
    await channel_hop(min(deliveries, 2000), signal)  # warm-up: allocator, caches
    hop_wall, hop_cpu = await _median_times(repeats, functools.partial(channel_hop, deliveries, signal))
    rows = []
    for k in fanouts:
        count = max(100, deliveries // k)
        await bus_fanout(min(count, 500), k, signal)
        wall, cpu = await _median_times(repeats, functools.partial(bus_fanout, count, k, signal))
        rows.append(
            {
                "subscribers": k,
                "signals": count,
                "signals_per_s": count / cpu,
                "deliveries_per_s": count * k / cpu,
                "us_per_publish": cpu / count * 1e6,
                "ns_per_delivery": cpu / (count * k) * 1e9,
                "wall_signals_per_s": count / wall,
            }
        )
    return {
        "channel_hop": {
            "signals": deliveries,
            "signals_per_s": deliveries / hop_cpu,
            "us_per_hop": hop_cpu / deliveries * 1e6,
            "wall_signals_per_s": deliveries / hop_wall,
        },
        "bus": rows,
        "repeats": repeats,
        "clock": "process CPU time",
    }


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Worker entry: channel hop and bus fan-out figures (medians of ``repeats`` runs each)."""
    return trio.run(_measure, params)
