"""Slow consumers over real sockets: a client that reads nothing never holds back the bus or other clients.

The fast clients read in their own tasks; the publisher publishes in rounds and waits for the fast
clients after each round (so they never lag by more than a round), while the slow client reads nothing
until the end. Signals are 8 KB so the slow client's socket buffers fill up quickly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

from duckagents.bus import SignalBus
from duckagents.gateway import Gateway
from duckagents.signals import ProviderChunk, make_signal

from .support import Client, connect, fake_router, running_gateway

ROUND = 8
PAYLOAD = "x" * 8192


class Reader:
    """A client that reads every frame as it comes, recording signal indexes and dropped notices."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.indexes: list[int] = []
        self.dropped: list[dict[str, Any]] = []
        self.closed: trio_websocket.CloseReason | None = None
        self.changed = trio.Event()

    async def run(self) -> None:
        try:
            while True:
                frame = await self.client.recv()
                if frame["type"] == "signal":
                    self.indexes.append(frame["event"]["data"]["index"])
                elif frame["type"] == "dropped":
                    self.dropped.append(frame)
                self.changed.set()
                self.changed = trio.Event()
        except trio_websocket.ConnectionClosed as exc:
            self.closed = exc.reason


@asynccontextmanager
async def subscribed(gateway: Gateway) -> AsyncIterator[Client]:
    async with connect(gateway) as client:
        ack = await client.call({"type": "subscribe", "id": "all", "filter": {"types": ["provider_chunk"]}})
        assert ack["type"] == "ack"
        yield client


async def caught_up(fast: list[Reader], count: int) -> None:
    with trio.fail_after(10):
        for reader in fast:
            while len(reader.indexes) < count:
                await reader.changed.wait()


async def publish_rounds(bus: SignalBus, fast: list[Reader], start: int, count: int) -> None:
    for base in range(start, start + count, ROUND):
        for index in range(base, min(base + ROUND, start + count)):
            await bus.publish(make_signal(ProviderChunk("burst", "p", index, PAYLOAD), "/load"))
        await caught_up(fast, min(base + ROUND, start + count))


async def test_drop_oldest_counts_what_a_slow_client_lost_and_others_get_everything() -> None:
    total = 1500
    async with fake_router() as router, running_gateway(router, send_buffer=32) as gateway:
        async with subscribed(gateway) as slow, subscribed(gateway) as c1, subscribed(gateway) as c2:
            fast = [Reader(c1), Reader(c2)]
            async with trio.open_nursery() as nursery:
                for reader in fast:
                    nursery.start_soon(reader.run)
                with trio.fail_after(60):
                    await publish_rounds(router.bus, fast, 0, total)
                nursery.cancel_scope.cancel()
            assert gateway.stats().dropped > 0  # the slow client's buffer overflowed meanwhile
            # Now the slow client reads: what it got plus what it was told it lost is everything.
            late = Reader(slow)
            with trio.move_on_after(30):
                while len(late.indexes) + sum(d["count"] for d in late.dropped) < total:
                    frame = await slow.recv()
                    if frame["type"] == "signal":
                        late.indexes.append(frame["event"]["data"]["index"])
                    else:
                        late.dropped.append(frame)
            stats = gateway.stats()
    for reader in fast:
        assert reader.indexes == list(range(total)) and reader.dropped == []
    lost = sum(d["count"] for d in late.dropped)
    assert lost > 0 and len(late.indexes) + lost == total
    assert late.indexes == sorted(late.indexes) and late.indexes[-1] == total - 1  # in order, newest kept
    assert [d["total"] for d in late.dropped] == [
        sum(d["count"] for d in late.dropped[: i + 1]) for i in range(len(late.dropped))
    ]
    assert stats.dropped == lost and stats.slow_disconnects == 0


async def test_disconnect_policy_closes_a_slow_client_with_4008() -> None:
    async with (
        fake_router() as router,
        running_gateway(router, send_buffer=32, slow_consumer="disconnect") as gateway,
    ):
        async with subscribed(gateway) as slow, subscribed(gateway) as c1:
            fast = [Reader(c1)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fast[0].run)
                published = 0
                with trio.fail_after(60):
                    while gateway.stats().slow_disconnects == 0:
                        await publish_rounds(router.bus, fast, published, ROUND)
                        published += ROUND
                    late = Reader(slow)
                    await late.run()  # reads the backlog, then the close
                    await publish_rounds(router.bus, fast, published, ROUND)  # the others carry on
                    published += ROUND
                nursery.cancel_scope.cancel()
            assert gateway.stats().connections == 1
    assert late.closed is not None and late.closed.code == 4008
    assert "slow consumer" in (late.closed.reason or "")
    assert late.indexes == list(range(len(late.indexes))) and len(late.indexes) < published
    assert late.dropped == []  # no silent gaps: it gets a prefix of the stream, then the close
    assert fast[0].indexes == list(range(published)) and fast[0].dropped == []


@pytest.mark.parametrize("policy", ["drop_oldest", "disconnect"])
async def test_a_slow_client_never_blocks_the_publisher(policy: str) -> None:
    bus = SignalBus()
    async with fake_router(bus) as router, running_gateway(router, send_buffer=4, slow_consumer=policy) as gw:
        async with subscribed(gw):
            with trio.fail_after(30):
                for index in range(3000):  # far more than every buffer on the way can hold
                    await bus.publish(make_signal(ProviderChunk("r", "p", index, PAYLOAD), "/load"))
    assert bus.stats().published == 3000
