"""Fleet gateways over real WebSockets and a real redis-server: a subscriber of replica A sees the
requests served by replica B (stream ids, the replica named, in order per request); a subscriber that
reconnects with the last id it saw gets exactly what it missed, then the live stream; an id older than
the retained window is said to have missed some; while Redis is down a gateway shows its own replica.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_websocket

from duckagents.app import Tree, open_tree
from duckagents.codec import parse_stream_id
from duckagents.config import Config, FleetConfig, GatewayConfig, ProviderConfig, RouterConfig
from duckagents.gateway import Gateway, open_gateway
from duckagents.providers import MockProvider
from duckagents.testing import RedisServer

from .support import fleet_config

BOUND = 30.0


@asynccontextmanager
async def replica(fleet: FleetConfig, instance: str) -> AsyncIterator[tuple[Tree, Gateway]]:
    config = Config(
        providers=(ProviderConfig(name="m", kind="mock"),),
        router=RouterConfig(max_attempts=1),
        fleet=attrs.evolve(fleet, instance=instance),
        health_interval=1000.0,
    )
    async with open_tree(config, providers={"m": MockProvider()}) as tree:
        async with open_gateway(tree.router, GatewayConfig(port=0), fleet=tree.fleet) as gateway:
            yield tree, gateway


class Client:
    """A WebSocket client reading JSON frames."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, **message: Any) -> None:
        await self.ws.send_message(json.dumps(message))

    async def frame(self) -> dict[str, Any]:
        return dict(json.loads(await self.ws.get_message()))

    async def until(self, kind: str) -> dict[str, Any]:
        while (frame := await self.frame())["type"] != kind:
            pass
        return frame

    async def events(self, count: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < count:
            frame = await self.frame()
            assert frame["type"] == "signal", frame
            out.append(frame["event"])
        return out


@asynccontextmanager
async def client(gateway: Gateway) -> AsyncIterator[Client]:
    async with trio_websocket.open_websocket_url(gateway.url) as ws:
        c = Client(ws)
        hello = await c.frame()
        # A fleet gateway says that subscriptions resume (since) and which replica it is.
        assert hello["type"] == "hello" and hello["resume"] is True and hello["fleet"]["instance"]
        yield c


FINALS = {"types": ["provider_request", "provider_response"]}


def caller_level(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "#" not in str(e.get("subject"))]


async def test_a_gateway_shows_the_requests_another_replica_served_in_order(
    redis_server: RedisServer,
) -> None:
    fleet = fleet_config(redis_server.url)
    with trio.fail_after(BOUND):
        async with replica(fleet, "a") as (_, gateway_a), replica(fleet, "c") as (c, _):
            async with client(gateway_a) as watcher:
                await watcher.send(type="subscribe", id="w", filter=FINALS)
                assert (await watcher.until("ack"))["subscription"] == "w"
                for n in range(3):
                    await c.router.complete(f"question {n}", request_id=f"r{n}")
                # Per request: the intake, the attempt, the agent's answer, the final answer.
                events = await watcher.events(12)
    assert {e["instance"] for e in events} == {"c"}
    ids = [parse_stream_id(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for n in range(3):
        mine = [e for e in events if str(e.get("subject", "")).partition("#")[0] == f"r{n}"]
        assert [e["type"] for e in caller_level(mine)] == ["provider_request", "provider_response"]
        assert [e["type"] for e in mine if "#" in e["subject"]] == ["provider_request", "provider_response"]


async def test_a_client_that_resumes_with_its_last_id_misses_nothing(redis_server: RedisServer) -> None:
    fleet = fleet_config(redis_server.url)
    with trio.fail_after(BOUND):
        async with replica(fleet, "a") as (a, gateway_a), replica(fleet, "c") as (c, gateway_c):
            async with client(gateway_a) as first:
                await first.send(type="subscribe", id="w", filter=FINALS)
                await first.until("ack")
                await c.router.complete("before", request_id="before")
                seen = await first.events(4)
            last = seen[-1]["id"]
            # Disconnected: requests go on, on both replicas.
            for n in range(5):
                await (a if n % 2 else c).router.complete(f"while away {n}", request_id=f"away{n}")
            # It comes back through the other replica's gateway.
            async with client(gateway_c) as second:
                await second.send(type="subscribe", id="w", filter=FINALS, since=last)
                ack = await second.until("ack")
                assert (ack["since"], ack["missed"], ack["resumed"]) == (last, False, True)
                replayed = await second.events(20)
                await a.router.complete("after", request_id="after")
                live = await second.events(4)
    # Every request of the outage, whole and in order (requests of two replicas interleave in the stream).
    for n in range(5):
        mine = [e for e in replayed if e["subject"].partition("#")[0] == f"away{n}"]
        assert [(e["type"], "#" in e["subject"]) for e in mine] == [
            ("provider_request", False), ("provider_request", True),
            ("provider_response", True), ("provider_response", False),
        ]
        assert {e["instance"] for e in mine} == {"a" if n % 2 else "c"}
    ids = [parse_stream_id(e["id"]) for e in seen + replayed + live]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # nothing twice, in stream order
    assert {e["subject"].partition("#")[0] for e in live} == {"after"}


async def test_an_id_older_than_the_window_is_said_to_have_missed_some(redis_server: RedisServer) -> None:
    fleet = fleet_config(redis_server.url, stream_maxlen=10)
    with trio.fail_after(BOUND):
        async with replica(fleet, "a") as (a, gateway_a):
            async with client(gateway_a) as watcher:
                await watcher.send(type="subscribe", id="w", filter=FINALS)
                await watcher.until("ack")
                await a.router.complete("first", request_id="first")
                oldest = (await watcher.events(1))[0]["id"]
            # MAXLEN ~ trims whole nodes of the stream (100 entries each by default): go well past one.
            for n in range(80):
                await a.router.complete(f"filler {n}", request_id=f"f{n}")
            assert a.fleet is not None
            await a.fleet.bridge.wait_idle()
            async with client(gateway_a) as back:
                answers = {"types": ["provider_response"]}
                await back.send(type="subscribe", id="w", filter=answers, since=oldest)
                ack = await back.until("ack")
                assert ack["missed"] is True and ack["resumed"] is True
                first = (await back.events(1))[0]
    assert parse_stream_id(first["id"]) > parse_stream_id(oldest)


async def test_while_redis_is_down_a_gateway_shows_its_own_replica(own_redis: RedisServer) -> None:
    fleet = fleet_config(own_redis.url, timeout=0.2, probe_interval=0.1)
    with trio.fail_after(BOUND):
        async with replica(fleet, "a") as (a, gateway_a), client(gateway_a) as watcher:
            wanted = {"types": ["fleet_degraded", "provider_response", "fleet_rejoined"]}
            await watcher.send(type="subscribe", id="w", filter=wanted)
            await watcher.until("ack")
            await trio.to_thread.run_sync(own_redis.kill)
            await a.router.complete("during", request_id="during")
            got = await watcher.events(3)  # fleet_degraded, the agent's answer, the final answer
            assert got[0]["type"] == "fleet_degraded" and got[0]["instance"] == "a"
            assert {e["subject"].partition("#")[0] for e in got[1:]} == {"during"}
            await trio.to_thread.run_sync(own_redis.start)
            while (event := (await watcher.events(1))[0])["type"] != "fleet_rejoined":
                pass
            await a.router.complete("back", request_id="back")
            back = await watcher.events(2)
    # Back on the stream: stream ids again, nothing of the outage delivered twice.
    assert all(e["subject"].partition("#")[0] == "back" for e in back)
    assert all(parse_stream_id(e["id"]) for e in back)
    assert event["instance"] == "a"
