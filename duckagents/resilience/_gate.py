"""A rate limiter and a circuit breaker decided elsewhere (a fleet's Redis): the :class:`Gate` interface.

In one process an agent drives :class:`~duckagents.resilience.RateLimiter` and
:class:`~duckagents.resilience.CircuitBreaker` directly, without waiting. When several processes share
them, each step is a round trip; a :class:`Gate` does the agent's steps in as few as it can: one awaited
:meth:`Gate.admit` (the limiter, then the breaker) and one :meth:`Gate.finish` that never waits (settle,
what the upstream said, the breaker's verdict). Its views (:meth:`Gate.snapshot`, :meth:`Gate.headroom`)
answer without a round trip, as of the last one. ``duckagents.fleet.FleetGate`` implements it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Literal, Protocol

import attrs

from ..errors import ErrorKind
from ..signals import Headroom
from ._breaker import BreakerSnapshot, BreakerState, CircuitBreaker
from ._ratelimit import Admission, RateLimiter, RateLimitInfo, RateLimits, Reservation

__all__ = ["BreakerSwitch", "Gate", "GateAnswer", "Verdict"]

#: The operator switches of a breaker (the names of :class:`CircuitBreaker`'s methods).
BreakerSwitch = Literal["reset", "force_open", "disable"]


class Verdict(str, enum.Enum):
    """How a call the breaker admitted ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    #: Ended with no verdict on the upstream (cancelled by the caller, or a shutdown).
    RELEASE = "release"


@attrs.frozen
class GateAnswer:
    """What :meth:`Gate.admit` decided for one call."""

    #: The limiter's answer (``retry_at`` when it refused; None then means never admissible here).
    admission: Admission
    #: The breaker let the admitted call through. False when the breaker refused it (its reservation was
    #: given back), and also when the limiter refused (the breaker was not asked).
    allowed: bool
    #: When a refusing breaker admits a trial (None: not open, or held open by an operator).
    breaker_retry_at: float | None = None

    @property
    def reservation(self) -> Reservation | None:
        """The reservation of a call that may go upstream: hand it back to :meth:`Gate.finish`."""
        return self.admission.reservation if self.allowed else None


class Gate(Protocol):
    """A provider's rate limiter and circuit breaker kept outside the process (see the module docstring).

    Same clock convention as the machines: every ``now`` is the caller's (the Trio clock).
    """

    #: The machines that decide while the outside store cannot be reached (this replica's share).
    local_limiter: RateLimiter
    local_breaker: CircuitBreaker

    @property
    def limits(self) -> RateLimits:
        """The limits in force (the configured ones plus any adopted from the upstream)."""
        ...

    async def admit(self, now: float, tokens: int = 0) -> GateAnswer:
        """The limiter for one request of ``tokens`` tokens, then, if it admits, the breaker."""
        ...

    def finish(
        self,
        reservation: Reservation,
        now: float,
        actual_tokens: int,
        verdict: Verdict,
        *,
        kind: ErrorKind | None = None,
        observed: RateLimitInfo | None = None,
    ) -> None:
        """Settle an admitted call at ``actual_tokens``, take in ``observed`` (adopting its limits for a
        dimension left unlimited) and record ``verdict`` (a failure of ``kind``). Never waits."""
        ...

    def headroom(self, now: float) -> Headroom:
        """What the limiter would still admit, as last seen."""
        ...

    def snapshot(self, now: float) -> BreakerSnapshot:
        """The breaker as last seen, at ``now``."""
        ...

    def state(self, now: float) -> BreakerState:
        """The breaker's state as last seen, at ``now``."""
        ...

    def retry_at(self, now: float) -> float | None:
        """When an open breaker admits a trial, as last seen."""
        ...

    async def refresh(self, now: float) -> None:
        """Bring the views up to date (a round trip)."""
        ...

    async def switch(self, now: float, operation: BreakerSwitch) -> bool:
        """An operator's switch (``reset``, ``force_open``, ``disable``), for every process sharing the
        breaker; True when it reached them all, False when only this process's breaker took it."""
        ...

    def watch(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` whenever the breaker may have changed state; returns an unwatch."""
        ...
