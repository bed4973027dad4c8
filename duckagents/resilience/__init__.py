"""Pure resilience state machines: a circuit breaker and a rate limiter, driven by a ``now`` passed in."""

from ._breaker import (
    DEFAULT_TRIPPING_KINDS,
    REFUSING_STATES,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
)
from ._ratelimit import Admission, RateLimiter, RateLimitInfo, RateLimits, Reservation

__all__ = [
    "DEFAULT_TRIPPING_KINDS",
    "REFUSING_STATES",
    "Admission",
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "RateLimitInfo",
    "RateLimiter",
    "RateLimits",
    "Reservation",
]
