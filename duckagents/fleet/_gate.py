"""A provider's rate limiter and circuit breaker for the fleet, as an agent uses them: :class:`FleetGate`.

Two steps per request, one script call each (``request.lua``): :meth:`FleetGate.admit` asks the shared
limiter and then the shared breaker (giving the reservation back when the breaker refuses), and
:meth:`FleetGate.finish` settles the reservation, takes in what the upstream said and records the
breaker's verdict. ``admit`` is awaited (the request cannot go on without it); ``finish`` is queued for the
fleet's writer and sent with others in one pipeline, so a request never waits for its own bookkeeping.

Redis trouble degrades to the local machines, as :class:`FleetRateLimiter` and :class:`FleetBreaker` do
(this replica's share of the limits, its own breaker): never a wait on a dead Redis. Reservations remember
where they were taken, so a verdict goes back to the machine that admitted the call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from ..errors import ErrorKind, FleetUnavailable
from ..resilience import (
    Admission,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    BreakerSwitch,
    CircuitBreaker,
    GateAnswer,
    RateLimiter,
    RateLimitInfo,
    RateLimits,
    Reservation,
    Verdict,
)
from ..signals import Headroom
from ._breaker import BreakerNotice, SharedBreaker
from ._fallback import FleetReservation, local_share, observed_share
from ._fleet import Fleet, ScriptCall, number
from ._ratelimit import SharedRateLimiter, observe_args

__all__ = ["FleetGate"]

log = logging.getLogger("duckagents.fleet")


class FleetGate:
    """One provider's limiter and breaker, shared by the fleet, with the local fallback: a
    :class:`~duckagents.resilience.Gate`.

    ``limits`` and ``config`` must be the same in every replica (each call carries them). ``trial_lease``
    frees a half-open trial slot whose verdict never came (a replica died): the agent's request timeout.
    ``server_clock=False`` runs the scripts on the callers' ``now`` instead of Redis ``TIME`` (tests that
    compare them with the Python machines, see :class:`SharedRateLimiter`).
    :meth:`watch` listeners are called whenever the breaker's state may have changed behind the agent's
    back: a reply to a queued verdict, a notice from another replica, the fleet degrading or re-joining.
    """

    def __init__(
        self,
        fleet: Fleet,
        provider: str,
        limits: RateLimits,
        config: BreakerConfig = BreakerConfig(),
        *,
        trial_lease: float | None = None,
        server_clock: bool = True,
    ) -> None:
        self.fleet = fleet
        self.provider = provider
        self.config = config
        self.server_clock = server_clock
        self.shared_limiter = SharedRateLimiter(fleet, provider, limits, server_clock=server_clock)
        self.shared_breaker = SharedBreaker(
            fleet, provider, config, trial_lease=trial_lease, server_clock=server_clock
        )
        self.local_limiter = RateLimiter(local_share(limits, fleet.config.expected_replicas))
        self.local_breaker = CircuitBreaker(config)
        self._keys = [self.shared_limiter.key, self.shared_breaker.key]
        self._listeners: list[Callable[[], None]] = []
        self._unwatch_notices = self.shared_breaker.watch(self._on_notice)
        self._unwatch_health = fleet.health.watch(lambda _status: self._changed())
        #: Verdicts of shared calls that never reached Redis (lost with a failed batch, or degraded).
        self.lost_verdicts = 0

    def close(self) -> None:
        """Stop listening to the fleet (notices, health); the gate still works."""
        self._unwatch_notices()
        self._unwatch_health()
        self.shared_breaker.close()

    def watch(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` whenever the breaker's state may have changed; returns an unwatch."""
        self._listeners.append(listener)

        def unwatch() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unwatch

    # --- the two steps of a request ----------------------------------------------------------------

    async def admit(self, now: float, tokens: int = 0) -> GateAnswer:
        """Ask the limiter for one request estimated at ``tokens`` tokens, then the breaker (one round
        trip when joined; the local machines when degraded or when Redis fails now)."""
        if tokens < 0:
            raise ValueError(f"a request cannot ask a negative number of tokens ({tokens})")
        if not self.fleet.health.degraded:
            what = f"admit ({self.provider})"
            try:
                reply = await self.fleet.run_script(
                    "request", self._keys, self._args("admit", now, [number(tokens)]), what, reply_length=13
                )
                return self._admitted(reply, now, tokens, what)
            except FleetUnavailable:
                pass
        return self._admit_locally(now, tokens)

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
        """End an admitted call: settle its reservation at ``actual_tokens``, take in ``observed`` (the
        upstream's rate-limit word; a dimension left unlimited adopts its limit) and record ``verdict``
        (a failure of ``kind``). Never waits: a shared call's part is queued for the fleet's writer."""
        if actual_tokens < 0:
            raise ValueError(f"actual token usage cannot be negative ({actual_tokens})")
        shared = isinstance(reservation, FleetReservation) and reservation.shared
        if not shared:
            self.local_limiter.settle(reservation, actual_tokens, now)
        if observed is not None:
            # The upstream's word applies locally at once, whoever admitted the call (after the settle,
            # as RateLimiter requires): a replica that degrades during a 429 block keeps honouring it.
            self.local_limiter.adopt(observed_share(observed, self.fleet.config.expected_replicas))
            self.local_limiter.observe(now, observed)
        if not shared:
            breaker = self.local_breaker
            if verdict is Verdict.SUCCESS:
                breaker.record_success(now)
            elif verdict is Verdict.FAILURE:
                breaker.record_failure(now, kind)
            else:
                breaker.release(now)
            return
        tripping = self.config.tripping_kinds
        counted = verdict is Verdict.FAILURE and (kind is None or ErrorKind(kind) in tripping)
        settle_limits = self.shared_limiter.script_limits()
        adopted = observed is not None and self.shared_limiter.adopt(observed)
        limits_now = self.shared_limiter.script_limits()
        settle = [number(reservation.tokens), number(actual_tokens)]
        if adopted:
            # Settle under the limits the call was admitted with, then observe under the new ones.
            settle += observe_args(None)
        else:
            settle += observe_args(observed)
        settle += [verdict.value, "1" if counted else "0"]
        args = self._args("finish", now, settle, limits=settle_limits)
        self.fleet.defer(ScriptCall("request", self._keys, args, f"finish ({self.provider})", self._finished))
        if adopted:
            clock = "" if self.server_clock else number(now)
            observe = ["observe", clock, *limits_now, *observe_args(observed)]
            what = f"rate limit observe ({self.provider})"
            self.fleet.defer(ScriptCall("ratelimit", self._keys[:1], observe, what, self._observed))

    # --- views (no round trip) ---------------------------------------------------------------------

    @property
    def limits(self) -> RateLimits:
        """The fleet-wide limits (the config's, plus any adopted from the upstream)."""
        return self.shared_limiter.limits

    def headroom(self, now: float) -> Headroom:
        """What would still be admitted: as of the last shared call when joined (see :meth:`refresh`),
        the local share's now when degraded."""
        if self.fleet.health.degraded:
            return self.local_limiter.headroom(now)
        latest = self.shared_limiter.latest
        if latest is None:
            return Headroom(requests=_float(self.limits.requests), tokens=_float(self.limits.tokens))
        return latest

    def snapshot(self, now: float) -> BreakerSnapshot:
        """The deciding breaker at ``now``: the shared one as last seen (a reply or another replica's
        notice, with the lazy open -> half-open move applied), or the local one when degraded."""
        if self.fleet.health.degraded:
            return self.local_breaker.snapshot(now)
        latest = self.shared_breaker.latest
        if latest is None:
            return BreakerSnapshot(BreakerState.CLOSED, 0, None)
        if self._half_open_at(latest, now):
            return attrs.evolve(latest, state=BreakerState.HALF_OPEN, trials_in_flight=0)
        return latest

    def state(self, now: float) -> BreakerState:
        """The deciding breaker's state at ``now`` (see :meth:`snapshot`)."""
        return self.snapshot(now).state

    def retry_at(self, now: float) -> float | None:
        """When the deciding breaker, if open, admits a trial (None: not open, or forced open)."""
        if self.fleet.health.degraded:
            return self.local_breaker.retry_at(now)
        latest = self.shared_breaker.latest
        if latest is None or latest.state is not BreakerState.OPEN or latest.forced:
            return None
        if latest.opened_at is None or self._half_open_at(latest, now):
            return None
        return latest.opened_at + self.config.open_timeout

    async def refresh(self, now: float) -> None:
        """Read the shared limiter's headroom and breaker now (one round trip; for status reports)."""
        if self.fleet.health.degraded:
            return
        what = f"status ({self.provider})"
        try:
            args = self._args("status", now, [])
            reply = await self.fleet.run_script("request", self._keys, args, what, reply_length=13)
            before = self.shared_breaker.latest
            self.shared_limiter.read_reply(reply[:6], now, what)
            self.shared_breaker.read_reply(reply[6:], now, what)
            if self._state_of(before) is not self._state_of(self.shared_breaker.latest):
                self._changed()
        except FleetUnavailable:
            pass

    async def switch(self, now: float, operation: BreakerSwitch) -> bool:
        """An operator's switch for the whole fleet (one round trip; other replicas hear of it through
        the notice); also applied to the local breaker, so that it holds while Redis is gone. Returns
        False when Redis could not be reached: then only this replica switched."""
        getattr(self.local_breaker, operation)(now)
        reached = False
        if not self.fleet.health.degraded:
            try:
                await getattr(self.shared_breaker, operation)(now)
                reached = True
            except FleetUnavailable:
                pass
        self._changed()
        return reached

    # --- internals ---------------------------------------------------------------------------------

    def _args(self, op: str, now: float, rest: list[str], *, limits: list[str] | None = None) -> list[str]:
        limiter = self.shared_limiter.script_limits() if limits is None else limits
        clock = "" if self.server_clock else number(now)
        return [op, clock, *limiter, *self.shared_breaker.script_settings, *rest]

    def _admitted(self, reply: list[str], now: float, tokens: int, what: str) -> GateAnswer:
        self.shared_limiter.read_reply(reply[:6], now, what)
        if reply[0] != "1":
            retry_at = self.shared_limiter.caller_time(reply[1], reply[5], now)
            return GateAnswer(Admission(admitted=False, retry_at=retry_at), allowed=False)
        before = self.shared_breaker.latest
        allowed, _, breaker_retry_at = self.shared_breaker.read_reply(reply[6:], now, what)
        if self._state_of(before) is not self._state_of(self.shared_breaker.latest):
            self._changed()
        reservation = FleetReservation(tokens=tokens, at=now, shared=True)
        return GateAnswer(Admission(admitted=True, reservation=reservation), allowed, breaker_retry_at)

    def _admit_locally(self, now: float, tokens: int) -> GateAnswer:
        admission = self.local_limiter.admit(now, tokens)
        taken = admission.reservation
        if taken is None:
            return GateAnswer(admission, allowed=False)
        reservation = FleetReservation(tokens=taken.tokens, at=taken.at, shared=False)
        admitted = Admission(admitted=True, reservation=reservation)
        if not self.local_breaker.allow(now):
            self.local_limiter.cancel(taken, now)
            return GateAnswer(admitted, allowed=False, breaker_retry_at=self.local_breaker.retry_at(now))
        return GateAnswer(admitted, allowed=True)

    def _finished(self, reply: list[str] | None, now: float) -> None:
        if reply is None or len(reply) != 13:
            self.lost_verdicts += 1
            return
        what = f"finish ({self.provider})"
        before = self.shared_breaker.latest
        try:
            self.shared_limiter.read_reply(reply[:6], now, what)
            self.shared_breaker.read_reply(reply[6:], now, what)
        except FleetUnavailable:
            return
        if self._state_of(before) is not self._state_of(self.shared_breaker.latest):
            self._changed()

    def _observed(self, reply: list[str] | None, now: float) -> None:
        if reply is not None and len(reply) == 6:
            try:
                self.shared_limiter.read_reply(reply, now, f"rate limit observe ({self.provider})")
            except FleetUnavailable:
                pass

    def _half_open_at(self, snapshot: BreakerSnapshot, now: float) -> bool:
        return (
            snapshot.state is BreakerState.OPEN
            and not snapshot.forced
            and snapshot.opened_at is not None
            and now >= snapshot.opened_at + self.config.open_timeout
        )

    @staticmethod
    def _state_of(snapshot: BreakerSnapshot | None) -> BreakerState:
        return BreakerState.CLOSED if snapshot is None else snapshot.state

    def _on_notice(self, notice: BreakerNotice) -> None:
        self._changed()

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener's bug must not stop the others, nor the fleet's tasks
                log.exception("fleet: a gate listener failed (%s)", self.provider)


def _float(limit: int | None) -> float | None:
    return None if limit is None else float(limit)

