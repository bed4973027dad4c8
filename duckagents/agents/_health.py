"""The health score of a provider agent: a pure function, documented in docs/signals.md.

    health = B * R * (0.6*S + 0.2*L + 0.2*H), clamped to [0, 1]

* ``B`` breaker: 1 closed or disabled, 0.5 half-open, 0 open or forced open (an open breaker refuses
  everything, so 0 health);
* ``R`` reachability: 1 when the last probe answered, 0.25 when it did not (requests may still work, e.g.
  a probe endpoint that needs other permissions, so not 0);
* ``S`` success: 1 - the failure rate over the last :data:`RECENT_OUTCOMES` finished requests that say
  something about the upstream (1 with none yet);
* ``L`` latency: ``1 / (1 + p50 / LATENCY_SCALE)`` with the p50 of recent upstream latencies (1 with none);
* ``H`` headroom: the smallest fraction of the rate limits still available (1 when unlimited), 0 while
  the limiter refuses.

Success weighs most because it is what callers feel; latency and headroom only tilt the score.
"""

from __future__ import annotations

from collections import deque

from ..errors import ErrorKind
from ..resilience import BreakerState, RateLimits
from ..signals import Headroom

__all__ = [
    "LATENCY_SCALE",
    "NEUTRAL_KINDS",
    "RECENT_OUTCOMES",
    "RecentOutcomes",
    "headroom_fraction",
    "health_score",
]

RECENT_OUTCOMES = 32
#: Seconds of p50 latency at which the latency factor is one half.
LATENCY_SCALE = 2.0
#: Outcomes that say nothing about the upstream's health (the caller's fault, or ours): not counted.
NEUTRAL_KINDS: frozenset[ErrorKind] = frozenset(
    {
        ErrorKind.CANCELLED,
        ErrorKind.SHUTDOWN,
        ErrorKind.INVALID_REQUEST,
        ErrorKind.CONTEXT_LENGTH,
        ErrorKind.UNSUPPORTED,
        ErrorKind.CIRCUIT_OPEN,
        ErrorKind.NO_PROVIDER,
    }
)

# Forced open refuses everything like open; disabled admits everything like closed (the other factors then
# say how the upstream is doing).
_BREAKER_FACTOR = {
    BreakerState.CLOSED: 1.0,
    BreakerState.HALF_OPEN: 0.5,
    BreakerState.OPEN: 0.0,
    BreakerState.FORCED_OPEN: 0.0,
    BreakerState.DISABLED: 1.0,
}


class RecentOutcomes:
    """The last :data:`RECENT_OUTCOMES` request outcomes (bounded), for the success factor."""

    def __init__(self, size: int = RECENT_OUTCOMES) -> None:
        self._outcomes: deque[bool] = deque(maxlen=size)

    def success(self) -> None:
        """A request succeeded."""
        self._outcomes.append(True)

    def failure(self, kind: ErrorKind) -> None:
        """A request failed with ``kind``; neutral kinds are ignored."""
        if kind not in NEUTRAL_KINDS:
            self._outcomes.append(False)

    @property
    def failure_rate(self) -> float:
        """Failures / outcomes, 0 when there are none."""
        if not self._outcomes:
            return 0.0
        return sum(1 for ok in self._outcomes if not ok) / len(self._outcomes)


def headroom_fraction(headroom: Headroom, limits: RateLimits) -> float:
    """The smallest fraction of a limit still available (1 when unlimited, 0 while refusing)."""
    if headroom.retry_at is not None:
        return 0.0
    fractions = [1.0]
    if limits.requests is not None and headroom.requests is not None:
        fractions.append(headroom.requests / limits.requests)
    if limits.tokens is not None and headroom.tokens is not None:
        fractions.append(headroom.tokens / limits.tokens)
    return max(0.0, min(fractions))


def health_score(
    breaker: BreakerState,
    reachable: bool,
    failure_rate: float,
    latency_p50: float | None,
    headroom: float,
) -> float:
    """The formula of the module docstring."""
    b = _BREAKER_FACTOR[breaker]
    r = 1.0 if reachable else 0.25
    s = 1.0 - min(1.0, max(0.0, failure_rate))
    lat = 1.0 if not latency_p50 else 1.0 / (1.0 + latency_p50 / LATENCY_SCALE)
    h = min(1.0, max(0.0, headroom))
    return min(1.0, max(0.0, b * r * (0.6 * s + 0.2 * lat + 0.2 * h)))
