"""Fleet mode: several duckagents processes share rate limits, circuit breakers and one signal stream
through Redis (via coredis, on Trio). Install with ``pip install 'duckagents[fleet]'``; docs/fleet.md.

``async with open_fleet(config.fleet) as fleet:`` connects (or starts degraded when Redis is down);
:class:`FleetRateLimiter` and :class:`FleetBreaker` are a provider's shared limiter and breaker with a
local fallback; :class:`SharedRateLimiter` and :class:`SharedBreaker` are the bare shared machines;
:class:`SignalStream` appends and reads the fleet's signals.
"""

from ._breaker import BreakerNotice, SharedBreaker
from ._fallback import BreakerPermit, FleetBreaker, FleetRateLimiter, FleetReservation, local_share
from ._fleet import Fleet, open_fleet
from ._health import FleetHealth, FleetStatus
from ._keys import FleetKeys
from ._ratelimit import SharedRateLimiter
from ._stream import FleetBatch, FleetEvent, SignalStream, parse_stream_id

__all__ = [
    "BreakerNotice",
    "BreakerPermit",
    "Fleet",
    "FleetBatch",
    "FleetBreaker",
    "FleetEvent",
    "FleetHealth",
    "FleetKeys",
    "FleetRateLimiter",
    "FleetReservation",
    "FleetStatus",
    "SharedBreaker",
    "SharedRateLimiter",
    "SignalStream",
    "local_share",
    "open_fleet",
    "parse_stream_id",
]
