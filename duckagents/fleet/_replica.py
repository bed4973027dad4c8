"""This process as one replica of the fleet: :class:`FleetReplica`, opened by :func:`open_replica`.

It holds what a tree and its doors use in fleet mode:

* :meth:`FleetReplica.gate` builds each agent's :class:`FleetGate` (shared limiter and breaker);
* :meth:`FleetReplica.budget_ledger` the :class:`FleetBudgets` the router reserves against;
* a :class:`SignalBridge` appends every signal of the bus to the fleet's stream, which the gateway reads
  back (:class:`FleetReplica` is the gateway's ``FleetFeed``);
* a :class:`ReplicaDirectory` shares this replica's status and lists the fleet's (:meth:`serve_status`,
  :attr:`FleetReplica.replicas`);
* the fleet's health becomes ``fleet_degraded`` / ``fleet_rejoined`` signals on the bus.

Leaving the block writes out what is queued (signals, verdicts; bounded by the fleet's timeout), removes
this replica's status and closes the connection.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..bus import SignalBus
from ..config import FleetConfig
from ..costs import Budget
from ..errors import FleetUnavailable
from ..resilience import BreakerConfig, RateLimits
from ..signals import FleetDegraded, FleetRejoined, Payload, make_signal
from ._bridge import SignalBridge
from ._budgets import FleetBudgets
from ._directory import ReplicaDirectory, ReplicaReport
from ._fleet import Fleet, open_fleet
from ._gate import FleetGate
from ._health import FleetStatus
from ._stream import FleetBatch, SignalStream

__all__ = ["SOURCE", "FleetReplica", "open_replica"]

log = logging.getLogger("duckagents.fleet")

#: The ``source`` of the signals a replica publishes about its membership.
SOURCE = "/fleet"
#: Seconds leaving the block may spend writing out what is queued.
FLUSH_TIMEOUT = 2.0


class FleetReplica:
    """This process in the fleet (see the module docstring). Create it with :func:`open_replica`."""

    def __init__(self, fleet: Fleet, bus: SignalBus) -> None:
        self.fleet = fleet
        self.bus = bus
        self.stream = SignalStream(fleet)
        self.bridge = SignalBridge(fleet, self.stream, bus)
        self.directory = ReplicaDirectory(fleet, interval=fleet.config.status_interval)
        #: The gates built for this replica's agents, by provider name.
        self.gates: dict[str, FleetGate] = {}
        #: The shared budget ledger, once :meth:`budget_ledger` built it.
        self.budgets: FleetBudgets | None = None
        self._events_in, self._events_out = trio.open_memory_channel[Payload](16)
        self._degraded_at: float | None = None
        self._dropped_at_degrade = 0
        self._nursery: trio.Nursery | None = None

    # --- what the tree uses ------------------------------------------------------------------------

    @property
    def instance(self) -> str:
        """This replica's name (``[fleet] instance``)."""
        return self.fleet.instance

    @property
    def degraded(self) -> bool:
        """True while Redis cannot be reached (the local fallbacks decide)."""
        return self.fleet.health.degraded

    def gate(self, provider: str, limits: RateLimits, config: BreakerConfig, trial_lease: float) -> FleetGate:
        """The shared limiter and breaker of ``provider`` (an agent's ``gate_factory``)."""
        gate = FleetGate(self.fleet, provider, limits, config, trial_lease=trial_lease)
        self.gates[provider] = gate
        return gate

    def budget_ledger(self, budgets: Mapping[str, Budget], *, hold_ttl: float) -> FleetBudgets:
        """The fleet-wide ledger of ``budgets``; its holds expire after ``hold_ttl`` seconds."""
        self.budgets = FleetBudgets(self.fleet, budgets, hold_ttl=hold_ttl)
        if self._nursery is not None:
            self._nursery.start_soon(self.budgets.run)
        return self.budgets

    def serve_status(self, document: Callable[[], dict[str, Any]]) -> None:
        """Share this replica's status document (``document()``: the router's, see
        ``RouterAgent.status_document``) every ``status_interval`` seconds, and read the fleet's into
        :attr:`replicas`."""

        async def describe() -> ReplicaReport:
            local = document()
            agents = tuple({**agent, "instance": self.instance} for agent in local.get("data", ()))
            in_flight = int(local.get("in_flight", 0))
            return ReplicaReport(self.instance, self.degraded, time.time(), in_flight, agents)

        assert self._nursery is not None, "serve_status needs the replica open"
        self._nursery.start_soon(self.directory.run, describe)

    @property
    def replicas(self) -> tuple[ReplicaReport, ...]:
        """Every replica's status as last read (at most ``status_interval`` old; this one's included)."""
        return self.directory.replicas

    def fleet_document(self, local: dict[str, Any]) -> dict[str, Any]:
        """The fleet's status document from this process's (``local``, the router's): its agents named
        by ``instance`` (this replica), the other replicas' agents as they last reported appended, and
        ``instance``, ``degraded`` and ``replicas`` (each: ``instance``, ``degraded``, ``age`` in seconds
        since it reported, ``in_flight``, ``agents``). The replicas are as last read (at most
        ``status_interval`` old); while degraded, only this one is listed."""
        now = time.time()
        mine = [{**agent, "instance": self.instance} for agent in local.get("data", ())]
        listing: list[dict[str, Any]] = [
            {
                "instance": self.instance,
                "degraded": self.degraded,
                "age": 0.0,
                "in_flight": local.get("in_flight", 0),
                "agents": len(mine),
            }
        ]
        others: list[dict[str, Any]] = []
        for report in () if self.degraded else self.replicas:
            if report.instance == self.instance:
                continue
            listing.append(
                {
                    "instance": report.instance,
                    "degraded": report.degraded,
                    "age": round(max(0.0, now - report.updated), 3),
                    "in_flight": report.in_flight,
                    "agents": len(report.agents),
                }
            )
            others += [{**agent, "instance": report.instance} for agent in report.agents]
        return {
            **local,
            "data": mine + others,
            "instance": self.instance,
            "degraded": self.degraded,
            "replicas": listing,
        }

    # --- what a fleet gateway uses (gateway.FleetFeed) ---------------------------------------------

    async def wait_joined(self) -> None:
        """Return once the fleet is joined."""
        await self.fleet.health.wait_joined()

    def watch(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(degraded)`` on every change of the fleet's health; returns an unwatch."""
        return self.fleet.health.watch(lambda status: listener(status.degraded))

    async def read(self, after: str, *, count: int = 256, block: float | None = None) -> FleetBatch:
        """The stream's events after ``after`` (see :meth:`SignalStream.read`)."""
        return await self.stream.read(after, count=count, block=block)

    async def tail(self) -> str:
        """The id of the stream's newest event."""
        return await self.stream.last_id()

    async def missed(self, after: str) -> bool:
        """May events after ``after`` have been trimmed from the stream?"""
        return await self.stream.missed(after)

    # --- internals ---------------------------------------------------------------------------------

    def _health_changed(self, status: FleetStatus) -> None:
        if status.degraded:
            self._degraded_at = status.at
            self._dropped_at_degrade = self.bridge.dropped
            event: Payload = FleetDegraded(
                self.instance, status.reason or "", self.fleet.config.expected_replicas
            )
        else:
            since = self._degraded_at
            lasted = 0.0 if since is None or not math.isfinite(since) else max(0.0, status.at - since)
            event = FleetRejoined(self.instance, lasted, self.bridge.dropped - self._dropped_at_degrade)
        try:
            self._events_in.send_nowait(event)
        except trio.WouldBlock:  # a flapping Redis: the status in the replica's report says the rest
            log.warning("fleet %s: membership signal not published (backlog full)", self.instance)

    async def _publish_events(self) -> None:
        async for payload in self._events_out:
            await self.bus.deliver(make_signal(payload, SOURCE))

    async def _flush(self) -> None:
        """Write out queued signals and verdicts, then leave the directory (bounded, best effort)."""
        with trio.move_on_after(FLUSH_TIMEOUT):
            await self.bridge.wait_idle()
            await self.fleet.finishes.wait_idle()
            if not self.degraded:
                try:
                    await self.directory.leave()
                except FleetUnavailable:
                    pass


@asynccontextmanager
async def open_replica(
    config: FleetConfig, bus: SignalBus, *, environ: Mapping[str, str] | None = None
) -> AsyncIterator[FleetReplica]:
    """Join the fleet of ``config`` with the tree whose bus is ``bus`` (see the module docstring).

    Redis being unreachable is not an error: the replica starts degraded (and publishes
    ``fleet_degraded``) and joins when Redis answers.
    """
    async with open_fleet(config, environ=environ) as fleet:
        replica = FleetReplica(fleet, bus)
        unwatch = fleet.health.watch(replica._health_changed)
        if fleet.health.degraded:
            replica._health_changed(fleet.health.status)
        try:
            async with trio.open_nursery() as nursery:
                replica._nursery = nursery
                nursery.start_soon(replica._publish_events)
                await nursery.start(replica.bridge.run)
                try:
                    yield replica
                finally:
                    with trio.CancelScope(shield=True):
                        await replica._flush()
                    nursery.cancel_scope.cancel()
        finally:
            unwatch()
            for gate in replica.gates.values():
                gate.close()
            if replica.budgets is not None:
                replica.budgets.close()
