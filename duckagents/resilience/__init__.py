"""Pure resilience state machines: a circuit breaker and a rate limiter, driven by a ``now`` passed in;
and :class:`Gate`, the interface of the same two kept outside the process (a fleet's Redis)."""

from ._breaker import (
    DEFAULT_TRIPPING_KINDS,
    REFUSING_STATES,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
)
from ._gate import BreakerSwitch, Gate, GateAnswer, Verdict
from ._ratelimit import Admission, RateLimiter, RateLimitInfo, RateLimits, Reservation

__all__ = [
    "DEFAULT_TRIPPING_KINDS",
    "REFUSING_STATES",
    "Admission",
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerSwitch",
    "CircuitBreaker",
    "Gate",
    "GateAnswer",
    "RateLimitInfo",
    "RateLimiter",
    "RateLimits",
    "Reservation",
    "Verdict",
]
