"""Admission control in front of one agent's upstream: :class:`AdmissionControl` (the limiter and breaker
in this process) and :class:`SharedAdmissionControl` (the same steps on a
:class:`~duckagents.resilience.Gate`: the limiter and breaker a fleet shares through Redis).

A call to the upstream is admitted by the rate limiter (waiting for it, within the request's deadline),
then by the circuit breaker, and ends with exactly one verdict: :meth:`~AdmissionControl.succeeded`,
:meth:`~AdmissionControl.failed` or :meth:`~AdmissionControl.interrupted`. Every path settles what it
took: a limiter reservation is settled or cancelled, a breaker admission gets one verdict (success,
failure or release), and the metrics' ``request_started`` is matched by a recorded success or failure.

It works on the state machines it is given (they belong to the agent and survive its restarts) and tells
the agent, through two callbacks, when the breaker may have changed state and when the upstream blocked
the limiter: both are news for the router. Both classes also answer what the agent reports about them
(``breaker_state``, ``breaker_retry_at``, ``headroom``, ``limits``), without a round trip.

The in-process class waits for nothing but the limiter's own retry time: its verdicts are plain calls.
The shared one awaits the gate's admission (one round trip, shielded so that a cancellation cannot lose
what Redis took) and hands the verdicts to the gate, which never waits either; its calls waiting for a
turn queue and ask one at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..errors import ErrorKind, ProviderError
from ..providers import Completion, RateLimitInfo
from ..resilience import (
    Admission,
    BreakerState,
    BreakerSwitch,
    CircuitBreaker,
    Gate,
    GateAnswer,
    RateLimiter,
    RateLimits,
    Reservation,
    Verdict,
)
from ..signals import Headroom
from ._health import RecentOutcomes
from ._metrics import ProviderMetrics

__all__ = ["AdmissionControl", "SharedAdmissionControl"]


def _never_admissible(tokens: int, limits: RateLimits, model: str) -> ProviderError:
    # Never admissible here, but another provider with larger limits may take it: retryable.
    return ProviderError(
        ErrorKind.RATE_LIMITED,
        f"the request needs {tokens} tokens, more than the limit of {limits.tokens} "
        f"tokens per {limits.period:g} s",
        model=model,
        retryable=True,
    )


def _after_deadline(admission: Admission, now: float, model: str) -> ProviderError:
    assert admission.retry_at is not None
    wait = admission.retry_at - now
    return ProviderError(
        ErrorKind.RATE_LIMITED,
        f"rate limited: next admission in {wait:.3g} s, after the request's deadline",
        model=model,
        retry_after=wait,
    )


def _circuit_open(retry_at: float | None, now: float, model: str) -> ProviderError:
    return ProviderError(
        ErrorKind.CIRCUIT_OPEN,
        "circuit breaker is open: the upstream failed repeatedly",
        model=model,
        retry_after=None if retry_at is None else retry_at - now,
    )


class AdmissionControl:
    """The rate limiter and circuit breaker in front of one upstream, and the accounting of each call
    they admit (limiter, breaker, metrics, recent outcomes); see the module docstring.

    ``on_breaker_verdict`` is called after every breaker decision or verdict (the state may have moved);
    ``on_upstream_block`` when an upstream ``429`` with a ``retry_after`` blocked the limiter.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        breaker: CircuitBreaker,
        metrics: ProviderMetrics,
        recent: RecentOutcomes,
        *,
        on_breaker_verdict: Callable[[], None],
        on_upstream_block: Callable[[], None],
    ) -> None:
        self.limiter = limiter
        self.breaker = breaker
        self.metrics = metrics
        self.recent = recent
        self._on_breaker_verdict = on_breaker_verdict
        self._on_upstream_block = on_upstream_block

    async def admit(self, tokens: int, deadline: float, model: str) -> Reservation:
        """Admit one call needing ``tokens`` before ``deadline``: wait for the limiter, then ask the
        breaker. Raises ``rate_limited`` or ``circuit_open``; otherwise the call counts as in flight and
        must end with one verdict."""
        limiter = self.limiter
        while True:  # wait until the limiter admits the call, if that happens before the deadline
            now = trio.current_time()
            admission = limiter.admit(now, tokens)
            if admission.reservation is not None:
                break
            if admission.retry_at is None:
                raise _never_admissible(tokens, limiter.limits, model)
            if admission.retry_at > deadline:
                raise _after_deadline(admission, now, model)
            await trio.sleep_until(admission.retry_at)
        reservation = admission.reservation
        breaker = self.breaker
        if not breaker.allow(now):
            limiter.cancel(reservation, now)
            self._on_breaker_verdict()
            raise _circuit_open(breaker.retry_at(now), now, model)
        self._on_breaker_verdict()  # allow() may have moved an open breaker to half-open
        self.metrics.request_started()
        return reservation

    def succeeded(
        self, reservation: Reservation, sent: float, completion: Completion, first_chunk: float | None
    ) -> None:
        """The call sent at ``sent`` answered with ``completion``."""
        now = trio.current_time()
        tokens = completion.usage.total_tokens
        self.limiter.settle(reservation, tokens, now)
        info = completion.rate_limit
        if info is not None:
            # A dimension without a limit (none configured, no default for this host) takes the one the
            # upstream states; then its remaining count applies like any other's.
            self.limiter.adopt(info)
            self.limiter.observe(now, info)  # after settling: see docs/resilience.md
        self.metrics.record_success(now - sent, tokens, first_chunk)
        self.recent.success()
        self.breaker.record_success(now)
        self._on_breaker_verdict()

    def failed(self, reservation: Reservation, sent: float, error: ProviderError) -> None:
        """The call sent at ``sent`` failed with ``error``."""
        now = trio.current_time()
        # It reached the upstream: the request counts, its tokens are refunded (none were generated).
        self.limiter.settle(reservation, 0, now)
        if error.retry_after is not None and error.kind is ErrorKind.RATE_LIMITED:
            self.limiter.observe(now, RateLimitInfo(retry_after=error.retry_after))
            self._on_upstream_block()  # the router should learn of the block before it sends more
        self.metrics.record_failure(now - sent)
        self.recent.failure(error.kind)
        self.breaker.record_failure(now, error.kind)
        self._on_breaker_verdict()

    def interrupted(self, reservation: Reservation, sent: float, deadline: float) -> None:
        """The call sent at ``sent`` was cancelled before it answered (its deadline, the router, a
        shutdown) or crashed."""
        now = trio.current_time()
        self.limiter.settle(reservation, 0, now)
        self.metrics.record_failure(now - sent)
        if now >= deadline:  # the upstream was too slow: that says something about its health
            self.recent.failure(ErrorKind.TIMEOUT)
            self.breaker.record_failure(now, ErrorKind.TIMEOUT)
        else:  # cancelled by the caller or a shutdown: no verdict on the upstream
            self.breaker.release(now)
        self._on_breaker_verdict()

    # --- what the agent reports --------------------------------------------------------------------

    @property
    def limits(self) -> RateLimits:
        """The limits in force."""
        return self.limiter.limits

    def headroom(self, now: float) -> Headroom:
        """What the limiter would still admit."""
        return self.limiter.headroom(now)

    def breaker_state(self, now: float) -> BreakerState:
        """The breaker's state at ``now``."""
        return self.breaker.state(now)

    def breaker_retry_at(self, now: float) -> float | None:
        """When an open breaker admits a trial."""
        return self.breaker.retry_at(now)

    async def refresh(self, now: float) -> None:
        """Nothing to do: the machines are here."""

    async def switch_breaker(self, now: float, operation: BreakerSwitch) -> str:
        """An operator's switch (``reset``, ``force_open``, ``disable``); returns what to add to the reply."""
        getattr(self.breaker, operation)(now)
        return ""


class SharedAdmissionControl:
    """:class:`AdmissionControl`'s steps on a :class:`~duckagents.resilience.Gate` (a fleet's shared
    limiter and breaker); same methods, same verdicts, same callbacks (see the module docstring)."""

    def __init__(
        self,
        gate: Gate,
        metrics: ProviderMetrics,
        recent: RecentOutcomes,
        *,
        on_breaker_verdict: Callable[[], None],
        on_upstream_block: Callable[[], None],
    ) -> None:
        self.gate = gate
        self.metrics = metrics
        self.recent = recent
        self._on_breaker_verdict = on_breaker_verdict
        self._on_upstream_block = on_upstream_block
        # Calls waiting for the limiter's next turn queue here and ask one at a time, in arrival order:
        # a refill then costs this process one round trip, not one per waiting call (a herd of calls
        # asking Redis together every refill would load it and this process for nothing).
        self._turn = trio.Lock()

    async def admit(self, tokens: int, deadline: float, model: str) -> Reservation:
        """Admit one call needing ``tokens`` before ``deadline`` (see :meth:`AdmissionControl.admit`);
        while calls wait for a turn, a new one queues behind them."""
        answer = None if self._turn.locked() else await self._ask(tokens)
        if answer is None or answer.admission.reservation is None:
            answer = await self._wait_for_turn(tokens, deadline, model, answer)
        now = trio.current_time()
        gate = self.gate
        reservation = answer.reservation
        if reservation is None:
            self._on_breaker_verdict()
            raise _circuit_open(answer.breaker_retry_at, now, model)
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except trio.Cancelled:
            gate.finish(reservation, trio.current_time(), 0, Verdict.RELEASE)
            raise
        self._on_breaker_verdict()  # allow may have moved an open breaker to half-open
        self.metrics.request_started()
        return reservation

    async def _ask(self, tokens: int) -> GateAnswer:
        # Shielded (the gate bounds its round trip): cancelled mid-call, Redis may have admitted it all
        # the same, and what it took must be given back (admit does).
        with trio.CancelScope(shield=True):
            answer = await self.gate.admit(trio.current_time(), tokens)
        return answer

    async def _wait_for_turn(
        self, tokens: int, deadline: float, model: str, refused: GateAnswer | None
    ) -> GateAnswer:
        """Ask again at each refill, first in line, until the limiter admits the call or the next
        admission would come after ``deadline``."""
        last = None if refused is None else refused.admission
        admitted: GateAnswer | None = None
        with trio.move_on_at(deadline):
            async with self._turn:
                while True:
                    if last is not None:
                        if last.retry_at is None:
                            raise _never_admissible(tokens, self.gate.limits, model)
                        if last.retry_at > deadline:
                            raise _after_deadline(last, trio.current_time(), model)
                        await trio.sleep_until(last.retry_at)
                    answer = await self._ask(tokens)
                    if answer.admission.reservation is not None:
                        admitted = answer
                        break
                    last = answer.admission
        if admitted is not None:  # also when the deadline came during the (shielded) round trip
            return admitted
        now = trio.current_time()
        retry_after = None if last is None or last.retry_at is None else max(0.0, last.retry_at - now)
        raise ProviderError(
            ErrorKind.RATE_LIMITED,
            "rate limited: no admission before the request's deadline (queued behind other calls)",
            model=model,
            retry_after=retry_after,
        )

    def succeeded(
        self, reservation: Reservation, sent: float, completion: Completion, first_chunk: float | None
    ) -> None:
        """The call sent at ``sent`` answered with ``completion``."""
        now = trio.current_time()
        tokens = completion.usage.total_tokens
        self.gate.finish(reservation, now, tokens, Verdict.SUCCESS, observed=completion.rate_limit)
        self.metrics.record_success(now - sent, tokens, first_chunk)
        self.recent.success()
        self._on_breaker_verdict()

    def failed(self, reservation: Reservation, sent: float, error: ProviderError) -> None:
        """The call sent at ``sent`` failed with ``error``."""
        now = trio.current_time()
        blocked = error.retry_after is not None and error.kind is ErrorKind.RATE_LIMITED
        observed = RateLimitInfo(retry_after=error.retry_after) if blocked else None
        # It reached the upstream: the request counts, its tokens are refunded (none were generated).
        self.gate.finish(reservation, now, 0, Verdict.FAILURE, kind=error.kind, observed=observed)
        if blocked:
            self._on_upstream_block()
        self.metrics.record_failure(now - sent)
        self.recent.failure(error.kind)
        self._on_breaker_verdict()

    def interrupted(self, reservation: Reservation, sent: float, deadline: float) -> None:
        """The call sent at ``sent`` was cancelled before it answered, or crashed."""
        now = trio.current_time()
        self.metrics.record_failure(now - sent)
        if now >= deadline:  # the upstream was too slow: that says something about its health
            self.recent.failure(ErrorKind.TIMEOUT)
            self.gate.finish(reservation, now, 0, Verdict.FAILURE, kind=ErrorKind.TIMEOUT)
        else:
            self.gate.finish(reservation, now, 0, Verdict.RELEASE)
        self._on_breaker_verdict()

    # --- what the agent reports --------------------------------------------------------------------

    @property
    def limits(self) -> RateLimits:
        """The limits in force."""
        return self.gate.limits

    def headroom(self, now: float) -> Headroom:
        """What the limiter would still admit, as last seen."""
        return self.gate.headroom(now)

    def breaker_state(self, now: float) -> BreakerState:
        """The breaker's state at ``now``, as last seen."""
        return self.gate.state(now)

    def breaker_retry_at(self, now: float) -> float | None:
        """When an open breaker admits a trial, as last seen."""
        return self.gate.retry_at(now)

    async def refresh(self, now: float) -> None:
        """Bring the views up to date (one round trip)."""
        await self.gate.refresh(now)

    async def switch_breaker(self, now: float, operation: BreakerSwitch) -> str:
        """An operator's switch for every replica sharing the breaker; returns what to add to the reply."""
        if await self.gate.switch(now, operation):
            return " (fleet-wide)"
        return " (this replica only: the fleet's Redis is unreachable)"
