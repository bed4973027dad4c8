"""Three real ``duckagents serve`` processes as one fleet: a real redis-server, one OpenAI-compatible
loopback upstream (``duckagents.testing``'s, enforcing its own limit), requests through each replica's
HTTP door, watchers on their gateways.

* A 600-RPM limit (burst 20) shared by three replicas driven at three times that rate: the upstream sees
  at most the limit plus the burst, and never has to refuse one (no 429).
* A breaker opened by failures through replica A stops B's attempts; half-open lets exactly the
  configured number of trials through, fleet-wide.
* ``watch`` on replica A shows the requests replica C served, in order per request; a client that
  disconnects and resumes with its last id misses nothing.
* redis-server killed under load: every request is answered, each replica says ``fleet_degraded`` and
  limits itself to its share; restarted: the replicas re-join.

Each test starts its own fleet (a few seconds) and keeps its load window short.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import trio_websocket

from duckagents.codec import parse_stream_id
from duckagents.testing import Fault, OpenAIServer, RedisServer, open_openai_server
from tests.cli.support import ENV, Process, run

from .support import unique_prefix

KEY = "sk-fleet-test-0123456789abcdef"
MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"
START = 60.0  # seconds a replica may take to come up on a loaded machine (a guard, not a measure)


@attrs.define
class Replica:
    """One ``duckagents serve --gateway --http`` process of the fleet."""

    name: str
    process: Process
    http: str = ""
    ws: str = ""

    async def line_with(self, needle: str, within: float = 30.0) -> str:
        return await trio.to_thread.run_sync(self.process.line_with, needle, within)

    async def stop(self) -> int:
        return await trio.to_thread.run_sync(self.process.stop, signal.SIGINT)


def config_text(name: str, redis: str, prefix: str, upstream: str, provider: str, fleet: str) -> str:
    return f"""
health_interval = 5

[router]
max_attempts = 1
request_timeout = 1.0

[fleet]
redis_url = "{redis}"
key_prefix = "{prefix}"
instance = "{name}"
expected_replicas = 3
timeout = 0.5
probe_interval = 0.2
status_interval = 0.5
{fleet}

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "FLEET_TEST_KEY"
default_model = "{MODEL}"
{provider}
"""


@asynccontextmanager
async def fleet_of(
    tmp_path: Path, redis: RedisServer, upstream: OpenAIServer, *, provider: str = "", fleet: str = "",
    names: Sequence[str] = ("a", "b", "c"),
) -> AsyncIterator[dict[str, Replica]]:
    """Start one serve process per name (in parallel) and wait until each listens."""
    prefix = unique_prefix()
    replicas: dict[str, Replica] = {}
    env = {**ENV, "FLEET_TEST_KEY": KEY}
    try:
        for name in names:
            path = tmp_path / f"{name}.toml"
            path.write_text(config_text(name, redis.url, prefix, upstream.url, provider, fleet))
            args = ["--config", str(path), "serve", "--gateway", "--port", "0", "--http", "127.0.0.1:0"]
            replicas[name] = Replica(name, Process(args, env=env))
        for replica in replicas.values():
            replica.http = (await replica.line_with("http listening on", START)).split()[-1]
            replica.ws = (await replica.line_with("gateway listening on", START)).split()[-1]
        yield replicas
    finally:
        with trio.CancelScope(shield=True):
            for replica in replicas.values():
                await replica.stop()


async def chat(client: httpx.AsyncClient, replica: Replica, text: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    return await client.post(replica.http + CHAT, json=body, timeout=20)


def most_in_any_window(times: Sequence[float], window: float) -> int:
    """The most arrivals within any ``window`` seconds."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_three_replicas_keep_one_600_rpm_limit_under_three_times_the_load(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # 600 requests a minute, 20 at once: 10 a second. The upstream enforces the same rate with a little
    # room for the clocks and the network (its bucket holds 23): a 429 would mean the fleet overshot.
    provider = "limits = { requests_per_minute = 600, burst = 20 }"
    enforce = (23, 2.3)
    window, offered_rate = 6.0, 30.0  # three times the limit, for a bounded window
    async with open_openai_server(api_key=KEY, enforce=enforce) as upstream:
        async with fleet_of(tmp_path, redis_server, upstream, provider=provider) as fleet:
            replicas = list(fleet.values())
            statuses: list[int] = []
            async with httpx.AsyncClient() as client:

                async def one(n: int) -> None:
                    statuses.append((await chat(client, replicas[n % 3], f"q{n}")).status_code)

                started = trio.current_time()
                async with trio.open_nursery() as nursery:
                    for n in range(int(window * offered_rate)):
                        nursery.start_soon(one, n)
                        await trio.sleep_until(started + (n + 1) / offered_rate)
            served = sorted(t for t in upstream.served_at if t >= started)
    offered = len(statuses)
    assert upstream.refused == 0  # no 429 ever reached the upstream's door
    # Through the whole run (the window plus the requests waiting their turn): the limit plus the burst.
    span = served[-1] - started
    assert len(served) <= 20 + 10 * span + 3, (len(served), span)
    # And in any stretch of it: every replica alone would have let 20 + 10/s through.
    assert most_in_any_window(served, 2.0) <= 20 + 20 + 3
    # Each 200 was served; a request can also reach the upstream and still miss its deadline (504).
    assert statuses.count(200) <= len(served) <= statuses.count(200) + statuses.count(504)
    # The rest were refused by the fleet's limiter: at once (429), or after waiting for a turn that did
    # not come before their deadline (504).
    assert set(statuses) <= {200, 429, 504}
    assert len(served) < 0.6 * offered  # it did limit: alone, each replica would have let most through


async def test_a_breaker_opened_through_one_replica_stops_the_others_then_the_configured_trials(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    provider = "breaker = { failure_threshold = 2, open_timeout = 1.5, half_open_trials = 2 }"
    async with open_openai_server(api_key=KEY) as upstream:
        async with fleet_of(tmp_path, redis_server, upstream, provider=provider) as fleet:
            a, b, c = fleet["a"], fleet["b"], fleet["c"]
            async with httpx.AsyncClient() as client:
                upstream.inject(Fault(status=500, path=CHAT), Fault(status=500, path=CHAT))
                failed = [await chat(client, a, f"fail {n}") for n in range(2)]
                before = upstream.loopback.request_count
                refused = [await chat(client, r, "refused") for r in (b, c, b)]
                assert upstream.loopback.request_count == before  # B and C did not even try
                await trio.sleep(1.6)  # half-open: two trials for the fleet, held in flight a while
                upstream.inject(Fault(latency=0.5, path=CHAT), Fault(latency=0.5, path=CHAT))
                trials: list[int] = []

                async def one(replica: Replica) -> None:
                    trials.append((await chat(client, replica, "trial")).status_code)

                async with trio.open_nursery() as nursery:
                    for replica in (a, b, c, a, b, c):
                        nursery.start_soon(one, replica)
                trial_calls = upstream.loopback.request_count - before
                closed = await chat(client, c, "closed again")
    assert [r.status_code for r in failed] == [500, 500] or all(r.status_code >= 500 for r in failed)
    assert [r.json()["error"]["code"] for r in refused] == ["circuit_open"] * 3
    assert trial_calls == 2 and sorted(trials) == [200] * 2 + [503] * 4
    assert closed.status_code == 200


class Watcher:
    """A WebSocket subscriber of one replica's gateway."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, **message: Any) -> None:
        await self.ws.send_message(json.dumps(message))

    async def until(self, kind: str) -> dict[str, Any]:
        while (frame := json.loads(await self.ws.get_message()))["type"] != kind:
            pass
        return dict(frame)

    async def events(self, count: int) -> list[dict[str, Any]]:
        return [(await self.until("signal"))["event"] for _ in range(count)]


FINALS = {"types": ["provider_request", "provider_response"]}


async def test_watch_on_one_replica_shows_another_replicas_requests_and_resumes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with open_openai_server(api_key=KEY) as upstream:
        async with fleet_of(tmp_path, redis_server, upstream) as fleet:
            a, c = fleet["a"], fleet["c"]
            watch = Process(["watch", "--url", a.ws, "--json", "--type", "provider_response", "--limit", "6"])
            try:
                await trio.to_thread.run_sync(partial(watch.line_with, "watching", 30, stderr=True))
                async with httpx.AsyncClient() as client:
                    for n in range(3):
                        assert (await chat(client, c, f"to c {n}")).status_code == 200
                    lines = await trio.to_thread.run_sync(partial(watch.rest, timeout=30))
                    # A client that leaves and comes back with the last id it saw.
                    async with trio_websocket.open_websocket_url(a.ws) as ws:
                        first = Watcher(ws)
                        await first.send(type="subscribe", id="w", filter=FINALS)
                        await first.until("ack")
                        assert (await chat(client, c, "seen")).status_code == 200
                        last = (await first.events(4))[-1]["id"]
                    for n in range(4):
                        assert (await chat(client, fleet["abc"[n % 3]], f"missed {n}")).status_code == 200
                    async with trio_websocket.open_websocket_url(a.ws) as ws:
                        back = Watcher(ws)
                        await back.send(type="subscribe", id="w", filter=FINALS, since=last)
                        ack = await back.until("ack")
                        missed = await back.events(16)
            finally:
                await trio.to_thread.run_sync(watch.stop)
    events = [json.loads(line) for line in lines]
    assert len(events) == 6 and {e["instance"] for e in events} == {"c"}
    # Each request C served: its attempt's answer, then its final answer.
    subjects = [e["subject"] for e in events]
    assert len({s.partition("#")[0] for s in subjects}) == 3
    for request in {s.partition("#")[0] for s in subjects}:
        assert [s for s in subjects if s.partition("#")[0] == request] == [f"{request}#1", request]
    assert ack["missed"] is False and ack["resumed"] is True
    ids = [parse_stream_id(e["id"]) for e in missed]
    assert ids == sorted(ids) and min(ids) > parse_stream_id(last)
    assert {e["instance"] for e in missed} == {"a", "b", "c"}
    requests = {e["subject"].partition("#")[0] for e in missed}
    assert len(requests) == 4  # all four, each whole: intake, attempt, answer, final
    for request in requests:
        assert len([e for e in missed if e["subject"].partition("#")[0] == request]) == 4


async def test_redis_killed_under_load_costs_no_request_and_the_replicas_rejoin(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    # 30 at once, 10 a second, for the fleet; each replica's share while Redis is gone: 10 at once.
    provider = "limits = { requests_per_minute = 600, burst = 30 }"
    async with open_openai_server(api_key=KEY) as upstream:
        async with fleet_of(tmp_path, own_redis, upstream, provider=provider) as fleet:
            replicas = list(fleet.values())
            statuses: list[int] = []
            async with httpx.AsyncClient() as client:

                async def one(n: int) -> None:
                    statuses.append((await chat(client, replicas[n % 3], f"q{n}")).status_code)

                async with trio.open_nursery() as nursery:
                    for n in range(60):  # 20 a second for 3 s, Redis killed in the middle
                        nursery.start_soon(one, n)
                        if n == 30:
                            await trio.to_thread.run_sync(own_redis.kill)
                        await trio.sleep(0.05)
                for replica in replicas:
                    await replica.line_with("fleet_degraded")
                # The share: a burst of 20 at replica a gets at most its 10 (plus what refills).
                before = upstream.loopback.request_count
                async with trio.open_nursery() as nursery:
                    for n in range(20):
                        nursery.start_soon(chat, client, fleet["a"], f"burst {n}")
                through = upstream.loopback.request_count - before
                await trio.to_thread.run_sync(own_redis.start)
                for replica in replicas:
                    await replica.line_with("fleet_rejoined")
                status = (await client.get(fleet["b"].http + "/v1/status")).json()
                while len(status["replicas"]) < 3:
                    await trio.sleep(0.2)
                    status = (await client.get(fleet["b"].http + "/v1/status")).json()
                # `status --url` on any replica, through its gateway or its HTTP door, names every
                # replica's agent.
                listed = {
                    url: await listed_instances(url) for url in (fleet["a"].ws, fleet["c"].http)
                }
    assert len(statuses) == 60 and set(statuses) <= {200, 429}  # every request answered
    assert through <= 10 + 3
    assert status["degraded"] is False and {r["instance"] for r in status["replicas"]} == {"a", "b", "c"}
    assert {agent["instance"] for agent in status["data"]} == {"a", "b", "c"}
    assert all(names == ["up@a", "up@b", "up@c"] for names in listed.values()), listed


async def listed_instances(url: str) -> list[str]:
    """``duckagents status --url URL --json``: each agent as ``provider@instance``, once all three
    replicas are listed (a replica reads the fleet's directory every ``status_interval``)."""
    with trio.fail_after(30):
        while True:
            result = await trio.to_thread.run_sync(partial(run, "status", "--url", url, "--json"))
            assert result.returncode == 0, result.stderr
            names = sorted(f"{a['provider']}@{a['instance']}" for a in json.loads(result.stdout))
            if len(names) == 3:
                return names
            await trio.sleep(0.2)
