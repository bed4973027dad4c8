"""Fleet mode: several duckagents processes share rate limits, circuit breakers and one signal stream
through Redis (via coredis, on Trio). Install with ``pip install 'duckagents[fleet]'``; docs/fleet.md.

``async with open_fleet(config.fleet) as fleet:`` connects (or starts degraded when Redis is down);
:class:`FleetGate` is what a provider agent holds: its shared limiter and breaker in two script calls
per request (admit, finish), with the local fallback; :class:`FleetRateLimiter` and :class:`FleetBreaker`
are the same machines one operation at a time; :class:`SharedRateLimiter` and :class:`SharedBreaker` are
the bare shared machines; :class:`SignalStream` appends and reads the fleet's signals;
:class:`FleetBudgets` counts budgets fleet-wide. ``async with open_replica(config.fleet, bus)`` puts it all
together for one tree (:class:`FleetReplica`; ``app.open_tree`` does it when ``[fleet]`` is configured).
"""

from ._breaker import BreakerNotice, SharedBreaker
from ._bridge import SignalBridge
from ._budgets import FleetBudgetHold, FleetBudgets
from ._directory import ReplicaDirectory, ReplicaReport
from ._fallback import BreakerPermit, FleetBreaker, FleetRateLimiter, FleetReservation, local_share
from ._fleet import Fleet, ScriptCall, open_fleet
from ._gate import FleetGate
from ._health import FleetHealth, FleetStatus
from ._keys import FleetKeys
from ._ratelimit import SharedRateLimiter
from ._replica import FleetReplica, open_replica
from ._stream import FleetBatch, FleetEvent, SignalStream, parse_stream_id

__all__ = [
    "BreakerNotice",
    "BreakerPermit",
    "Fleet",
    "FleetBatch",
    "FleetBreaker",
    "FleetBudgetHold",
    "FleetBudgets",
    "FleetEvent",
    "FleetGate",
    "FleetHealth",
    "FleetKeys",
    "FleetRateLimiter",
    "FleetReplica",
    "FleetReservation",
    "FleetStatus",
    "ReplicaDirectory",
    "ReplicaReport",
    "ScriptCall",
    "SharedBreaker",
    "SharedRateLimiter",
    "SignalBridge",
    "SignalStream",
    "local_share",
    "open_fleet",
    "open_replica",
    "parse_stream_id",
]
