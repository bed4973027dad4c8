"""Who is in the fleet and how each replica's agents are doing: :class:`ReplicaDirectory`.

Each replica writes its status (its agents as its status document lists them, requests in flight,
whether it is degraded) under its own key with a time to live, every ``status_interval`` seconds, and
reads everybody else's. A replica that stops (or dies) disappears once its key expires. ``status`` and
``GET /v1/status`` of any replica show the whole fleet from this directory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ..errors import FleetUnavailable
from ._fleet import Fleet

__all__ = ["ReplicaDirectory", "ReplicaReport"]

log = logging.getLogger("duckagents.fleet")

#: Bound on one replica's status document (a fleet of many providers fits easily).
MAX_REPORT_BYTES = 1024 * 1024
#: Replicas listed at most.
MAX_REPLICAS = 1024


@attrs.frozen
class ReplicaReport:
    """One replica as it last described itself."""

    instance: str
    #: It could not reach Redis when it wrote this (it cannot write then: so only ever seen as False by
    #: others, unless it re-joined since; its own view says True while degraded).
    degraded: bool
    #: When it wrote this (wall clock, seconds since the epoch).
    updated: float
    #: Requests in its router, between intake and final result.
    in_flight: int = 0
    #: Its agents as its status document lists them (``GET /v1/status``'s ``data``), with ``instance``.
    agents: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON."""
        return {
            "instance": self.instance,
            "degraded": self.degraded,
            "updated": self.updated,
            "in_flight": self.in_flight,
            "agents": list(self.agents),
        }


def _report_from(text: str) -> ReplicaReport | None:
    try:
        raw = json.loads(text)
        agents = raw["agents"]
        if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
            raise ValueError("agents is not a list of objects")
        return ReplicaReport(
            instance=str(raw["instance"]),
            degraded=bool(raw["degraded"]),
            updated=float(raw["updated"]),
            in_flight=int(raw.get("in_flight", 0)),
            agents=tuple(agents),
        )
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("fleet: ignored a malformed replica status: %s", exc)
        return None


class ReplicaDirectory:
    """Writes this replica's status and reads the fleet's (see the module docstring)."""

    def __init__(self, fleet: Fleet, *, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.fleet = fleet
        self.interval = interval
        #: A status not rewritten for this long is gone (three missed writes, at least 5 s).
        self.ttl = max(3 * interval, 5.0)
        self._key = fleet.keys.replica(fleet.instance)
        #: The fleet as last read (every replica that wrote within :attr:`ttl`, this one included).
        self.replicas: tuple[ReplicaReport, ...] = ()
        self.read_at = -math.inf
        self._read = trio.Event()

    async def publish(self, report: ReplicaReport) -> None:
        """Write this replica's status (bounded like every fleet call)."""
        text = json.dumps(report.to_json(), separators=(",", ":"), allow_nan=False)
        if len(text.encode()) > MAX_REPORT_BYTES:
            raise ValueError(f"replica status of {len(text.encode())} bytes exceeds {MAX_REPORT_BYTES}")
        client = self.fleet.client
        ttl_ms = round(self.ttl * 1000)
        expires = round(time.time() * 1000) + ttl_ms

        async def write() -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self._key, text, px=ttl_ms)
                pipe.zadd(self.fleet.keys.replicas, {self.fleet.instance: expires})

        await self.fleet.call("replica status", write)

    async def read(self) -> tuple[ReplicaReport, ...]:
        """Every replica's latest status, this one's included, by instance name."""
        client, keys = self.fleet.client, self.fleet.keys
        # Scores are the writers' wall clocks: a generous margin keeps a skewed clock from hiding a
        # replica; the keys' own expiry (the server's clock) decides who is gone.
        stale = round((time.time() - 3600) * 1000)

        async def fetch() -> list[Any]:
            await client.zremrangebyscore(keys.replicas, -math.inf, stale)
            names = list(await client.zrange(keys.replicas, 0, MAX_REPLICAS - 1))
            if not names:
                return []
            texts = await client.mget([keys.replica(str(n)) for n in names])
            return [t for t in texts if t is not None]

        texts = await self.fleet.call("fleet status", fetch)
        reports = [r for r in (_report_from(str(t)) for t in texts) if r is not None]
        self.replicas = tuple(sorted(reports, key=lambda r: r.instance))
        self.read_at = trio.current_time()
        self._read.set()
        self._read = trio.Event()
        return self.replicas

    async def next_read(self) -> tuple[ReplicaReport, ...]:
        """Wait for the next read of the fleet's status; returns what it found."""
        await self._read.wait()
        return self.replicas

    async def leave(self) -> None:
        """Remove this replica's status (a clean stop: the others stop listing it at once)."""
        client = self.fleet.client

        async def remove() -> None:
            await client.delete([self._key])
            await client.zrem(self.fleet.keys.replicas, [self.fleet.instance])

        await self.fleet.call("leave", remove)

    async def run(self, describe: Callable[[], Awaitable[ReplicaReport]]) -> None:
        """Write this replica's status and read the fleet's every :attr:`interval`, until cancelled."""
        while True:
            if not self.fleet.health.degraded:
                try:
                    await self.publish(await describe())
                    await self.read()
                except FleetUnavailable:
                    pass
                except ValueError as exc:
                    log.warning("fleet %s: status not shared: %s", self.fleet.instance, exc)
            await trio.sleep(self.interval)
