"""The shared limiter and breaker with a local fallback: Redis trouble degrades, it never blocks.

While the fleet is joined, :class:`FleetRateLimiter` and :class:`FleetBreaker` decide through Redis
(:class:`SharedRateLimiter`, :class:`SharedBreaker`). When a Redis operation fails or exceeds the fleet's
timeout, the fleet degrades and the same call is answered by a local machine (``RateLimiter`` with this
replica's share of the limits, ``CircuitBreaker``); while degraded, Redis is not tried at all, so no
request waits on it. The fleet's probe re-joins when Redis answers again.

Reservations and permits remember where they were taken, so that a settle, cancel or verdict goes back
to the machine that admitted the call even when the fleet changed state in between.
"""

from __future__ import annotations

import attrs

from ..errors import ErrorKind, FleetUnavailable
from ..resilience import (
    Admission,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    RateLimiter,
    RateLimitInfo,
    RateLimits,
    Reservation,
)
from ..signals import Headroom
from ._breaker import SharedBreaker
from ._fleet import Fleet
from ._ratelimit import SharedRateLimiter

__all__ = [
    "BreakerPermit",
    "FleetBreaker",
    "FleetRateLimiter",
    "FleetReservation",
    "local_share",
    "observed_share",
]


def local_share(limits: RateLimits, replicas: int) -> RateLimits:
    """One replica's share of fleet-wide limits: each limit divided by ``replicas``, rounded down so
    that the shares never add up to more than the limit (except that a share is at least 1)."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")

    def share(limit: int | None) -> int | None:
        return None if limit is None else max(1, limit // replicas)

    return attrs.evolve(limits, requests=share(limits.requests), tokens=share(limits.tokens))


def observed_share(info: RateLimitInfo, replicas: int) -> RateLimitInfo:
    """What a replica's local fallback adopts of the limits an upstream states: its share of each (a
    stated limit of 0 or less says nothing)."""

    def share(limit: int | None) -> int | None:
        return None if limit is None or limit <= 0 else max(1, limit // replicas)

    return attrs.evolve(
        info, limit_requests=share(info.limit_requests), limit_tokens=share(info.limit_tokens)
    )


@attrs.frozen
class FleetReservation(Reservation):
    """A reservation that knows whether Redis (``shared``) or the local fallback took it."""

    shared: bool = True


@attrs.frozen
class BreakerPermit:
    """Proof that :meth:`FleetBreaker.allow` admitted a call; hand it back with the call's verdict."""

    shared: bool


class FleetRateLimiter:
    """A provider's rate limiter for the fleet: shared through Redis, local share while degraded.

    The async counterpart of ``RateLimiter`` (same methods, same ``now`` = caller's clock). What is lost
    while degraded: corrections (settle, cancel) of reservations Redis took before it failed, which the
    shared buckets then never see (they refill anyway); and a request asking more tokens than the local
    share is refused (``retry_at=None``) until the fleet re-joins.
    """

    def __init__(self, fleet: Fleet, provider: str, limits: RateLimits, *, bucket: str = "default") -> None:
        self.fleet = fleet
        self.shared = SharedRateLimiter(fleet, provider, limits, bucket=bucket)
        self.local = RateLimiter(local_share(limits, fleet.config.expected_replicas))

    async def admit(self, now: float, tokens: int = 0) -> Admission:
        """Admit one request estimated at ``tokens`` tokens, or say when it could be admitted."""
        if tokens < 0:
            raise ValueError(f"a request cannot ask a negative number of tokens ({tokens})")
        if not self.fleet.health.degraded:
            try:
                answer = await self.shared.admit(now, tokens)
            except FleetUnavailable:
                pass
            else:
                return _tagged(answer, shared=True)
        return _tagged(self.local.admit(now, tokens), shared=False)

    @property
    def limits(self) -> RateLimits:
        """The fleet-wide limits (the config's, plus any adopted from the upstream)."""
        return self.shared.limits

    def adopt(self, info: RateLimitInfo, period: float = 60.0) -> bool:
        """Start limiting a dimension left unlimited at the limit the upstream states (the local
        fallback at its share of it); see ``RateLimiter.adopt``."""
        self.local.adopt(observed_share(info, self.fleet.config.expected_replicas), period)
        return self.shared.adopt(info, period)

    async def settle(
        self,
        reservation: Reservation,
        actual_tokens: int,
        now: float,
        observed: RateLimitInfo | None = None,
        *,
        adopt: bool = False,
    ) -> None:
        """Correct a reservation by the tokens actually used, then take in ``observed`` (adopting its
        limits first when ``adopt``): one round trip, see :meth:`SharedRateLimiter.settle`."""
        if actual_tokens < 0:
            raise ValueError(f"actual token usage cannot be negative ({actual_tokens})")
        if not _is_shared(reservation):
            self.local.settle(reservation, actual_tokens, now)
        if _is_shared(reservation) and not self.fleet.health.degraded:
            try:
                await self.shared.settle(reservation, actual_tokens, now, observed, adopt=adopt)
            except FleetUnavailable:
                pass
        elif observed is not None and adopt:
            self.shared.adopt(observed)  # the limits only: Redis learns them with the next call
        if observed is not None:
            # The upstream's word applies locally too: a replica that degrades in the middle of a 429
            # block keeps honouring it.
            if adopt:
                self.local.adopt(observed_share(observed, self.fleet.config.expected_replicas))
            self.local.observe(now, observed)

    async def cancel(self, reservation: Reservation, now: float) -> None:
        """Refund a reservation whose request never reached the upstream."""
        if not _is_shared(reservation):
            self.local.cancel(reservation, now)
        elif not self.fleet.health.degraded:
            try:
                await self.shared.cancel(reservation, now)
            except FleetUnavailable:
                pass

    async def observe(self, now: float, info: RateLimitInfo) -> None:
        """Adopt what the upstream said, in Redis (when joined) and locally."""
        if not self.fleet.health.degraded:
            try:
                await self.shared.observe(now, info)
            except FleetUnavailable:
                pass
        self.local.observe(now, info)

    async def headroom(self, now: float) -> Headroom:
        """Headroom of whichever machine decides now."""
        if not self.fleet.health.degraded:
            try:
                return await self.shared.headroom(now)
            except FleetUnavailable:
                pass
        return self.local.headroom(now)


class FleetBreaker:
    """A provider's circuit breaker for the fleet: shared through Redis, local while degraded.

    The call protocol of ``CircuitBreaker`` with one change: :meth:`allow` returns a
    :class:`BreakerPermit` (or None), and the verdict methods take it back, so a call admitted by the
    local breaker while degraded reports to the local breaker even after the fleet re-joined (and a
    shared call's verdict is dropped if Redis is gone by then: the shared trial lease frees its slot).
    """

    def __init__(
        self,
        fleet: Fleet,
        provider: str,
        config: BreakerConfig = BreakerConfig(),
        *,
        trial_lease: float | None = None,
    ) -> None:
        self.fleet = fleet
        self.config = config
        self.shared = SharedBreaker(fleet, provider, config, trial_lease=trial_lease)
        self.local = CircuitBreaker(config)

    async def allow(self, now: float) -> BreakerPermit | None:
        """A permit when the call may go upstream now; None when the breaker refuses it."""
        if not self.fleet.health.degraded:
            try:
                return BreakerPermit(shared=True) if await self.shared.allow(now) else None
            except FleetUnavailable:
                pass
        return BreakerPermit(shared=False) if self.local.allow(now) else None

    async def record_success(self, now: float, permit: BreakerPermit) -> None:
        """The permitted call succeeded."""
        if not permit.shared:
            self.local.record_success(now)
        elif not self.fleet.health.degraded:
            try:
                await self.shared.record_success(now)
            except FleetUnavailable:
                pass

    async def record_failure(self, now: float, permit: BreakerPermit, kind: ErrorKind | None = None) -> bool:
        """The permitted call failed; returns False when ``kind`` does not trip the breaker."""
        if not permit.shared:
            return self.local.record_failure(now, kind)
        counted = kind is None or ErrorKind(kind) in self.config.tripping_kinds
        if not self.fleet.health.degraded:
            try:
                return await self.shared.record_failure(now, kind)
            except FleetUnavailable:
                pass
        return counted

    async def release(self, now: float, permit: BreakerPermit) -> None:
        """The permitted call ended with no verdict."""
        if not permit.shared:
            self.local.release(now)
        elif not self.fleet.health.degraded:
            try:
                await self.shared.release(now)
            except FleetUnavailable:
                pass

    async def snapshot(self, now: float) -> BreakerSnapshot:
        """The state of whichever breaker decides now."""
        if not self.fleet.health.degraded:
            try:
                return await self.shared.snapshot(now)
            except FleetUnavailable:
                pass
        return self.local.snapshot(now)

    async def state(self, now: float) -> BreakerState:
        """The state of whichever breaker decides now."""
        return (await self.snapshot(now)).state

    async def retry_at(self, now: float) -> float | None:
        """When the deciding breaker, if open, admits a trial."""
        if not self.fleet.health.degraded:
            try:
                return await self.shared.retry_at(now)
            except FleetUnavailable:
                pass
        return self.local.retry_at(now)


def _is_shared(reservation: Reservation) -> bool:
    # A plain Reservation (not from this class) is treated as the local machine's: never sent to Redis.
    return isinstance(reservation, FleetReservation) and reservation.shared


def _tagged(answer: Admission, *, shared: bool) -> Admission:
    taken = answer.reservation
    if taken is None:
        return answer
    return attrs.evolve(answer, reservation=FleetReservation(tokens=taken.tokens, at=taken.at, shared=shared))
