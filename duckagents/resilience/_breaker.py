"""A circuit breaker as a pure state machine: no I/O, no clock of its own, ``now`` passed to every method.

States follow the classic pattern (closed → open → half-open → closed). The breaker counts *consecutive*
failures of the kinds in :attr:`BreakerConfig.tripping_kinds`; a success in the closed state resets the
count. Once open it refuses everything until ``open_timeout`` has passed, then admits at most
``half_open_trials`` concurrent trial calls: a trial success closes it, a trial failure re-opens it with a
fresh timeout.

Two operator states, as resilience4j's: ``forced_open`` (:meth:`CircuitBreaker.force_open`) refuses
everything and never moves by itself; ``disabled`` (:meth:`CircuitBreaker.disable`) admits everything and
never trips (verdicts are not counted). Only an operator switch leaves them: :meth:`~CircuitBreaker.reset`
(to closed), :meth:`~CircuitBreaker.force_open` or :meth:`~CircuitBreaker.disable`. Every transition:

=============  ===================================================  ==============================
from           event                                                to
=============  ===================================================  ==============================
closed         ``failure_threshold`` consecutive counted failures   open (``opened_at = now``)
open           ``now >= opened_at + open_timeout``                  half_open
half_open      a trial succeeds                                     closed (count reset)
half_open      a trial fails (counted kind)                         open (fresh timeout)
any            ``force_open(now)``                                  forced_open (``opened_at = now``)
any            ``disable(now)``                                     disabled (count reset)
any            ``reset(now)``                                       closed (count reset)
=============  ===================================================  ==============================

This module is the one definition of the breaker: a shared (e.g. Redis-backed) breaker must implement
these same transitions, driven by the same ``now``.

Call protocol: every call that :meth:`CircuitBreaker.allow` admitted ends with exactly one of
:meth:`~CircuitBreaker.record_success`, :meth:`~CircuitBreaker.record_failure` or
:meth:`~CircuitBreaker.release`. Verdicts are applied to the breaker's *current* state, whenever the call
was admitted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..errors import ErrorKind

__all__ = [
    "DEFAULT_TRIPPING_KINDS",
    "REFUSING_STATES",
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
]


class BreakerState(str, enum.Enum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    #: Held open by an operator: refuses every call, never half-opens; left only by an operator switch.
    FORCED_OPEN = "forced_open"
    #: Switched off by an operator: admits every call, counts nothing, never trips.
    DISABLED = "disabled"


#: States in which the breaker refuses calls (for the moment, or until an operator acts).
REFUSING_STATES: frozenset[BreakerState] = frozenset({BreakerState.OPEN, BreakerState.FORCED_OPEN})


#: Failures that say the upstream itself is unwell. A rejected request (400, auth, context length) says
#: nothing about the upstream's health, so it never trips the breaker.
DEFAULT_TRIPPING_KINDS: frozenset[ErrorKind] = frozenset(
    {
        ErrorKind.UPSTREAM_5XX,
        ErrorKind.TIMEOUT,
        ErrorKind.NETWORK,
        ErrorKind.OVERLOADED,
        ErrorKind.PROTOCOL,
    }
)


def _kinds(value: Iterable[ErrorKind | str]) -> frozenset[ErrorKind]:
    return frozenset(ErrorKind(k) for k in value)


def _at_least(minimum: float) -> Callable[[object, attrs.Attribute[Any], float], None]:
    # attrs' own ge() says "'x' must be >= 1: 0"; a config file's reader gets "x must be >= 1, got 0".
    def check(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if not value >= minimum:  # written so that NaN fails too
            raise ValueError(f"{attribute.name} must be >= {minimum:g}, got {value!r}")

    return check


@attrs.frozen
class BreakerConfig:
    """Tuning of a :class:`CircuitBreaker`. Defaults are the seed design's: 5 failures, 60 s open."""

    #: Consecutive counted failures that open a closed breaker.
    failure_threshold: int = attrs.field(default=5, validator=_at_least(1))
    #: Seconds an opened breaker refuses everything before admitting trials.
    open_timeout: float = attrs.field(default=60.0, validator=_at_least(0.0))
    #: Trial calls admitted concurrently while half-open.
    half_open_trials: int = attrs.field(default=1, validator=_at_least(1))
    #: Error kinds that count as failures; other kinds are ignored by the breaker.
    tripping_kinds: frozenset[ErrorKind] = attrs.field(default=DEFAULT_TRIPPING_KINDS, converter=_kinds)


@attrs.frozen
class BreakerSnapshot:
    """A read-only view of a breaker at one instant, for status reports."""

    state: BreakerState
    consecutive_failures: int
    #: When the breaker last opened or was forced open (Trio clock); ``None`` while closed or disabled.
    opened_at: float | None
    #: Half-open trial slots currently taken (an upper bound; see :class:`CircuitBreaker`).
    trials_in_flight: int = 0

    @property
    def forced(self) -> bool:
        """True while held open by :meth:`CircuitBreaker.force_open` (state ``forced_open``)."""
        return self.state is BreakerState.FORCED_OPEN


class CircuitBreaker:
    """Closed / open / half-open breaker with the operator states forced-open and disabled; see the module
    docstring for the transitions and the call protocol.

    The open → half-open transition is lazy: it happens when a method is called with a ``now`` past the
    timeout, so the breaker needs no timer.

    Trial accounting has no per-call handle, so a call admitted *before* the current half-open episode
    (a slow stream started while closed) can end while half-open. Calls are therefore kept in two
    counters, trials and others, and an ending call is charged to ``others`` first. That over-estimates
    the trials outstanding, never under-estimates, so at most ``half_open_trials`` real trials run at once;
    the price is that a cancelled trial's slot may stay taken until the older call ends.
    """

    def __init__(self, config: BreakerConfig = BreakerConfig()) -> None:
        self.config = config
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._trials = 0  # calls admitted in the current half-open episode, still running (upper bound)
        self._others = 0  # allowed calls still running that are not counted as trials

    # --- queries ---------------------------------------------------------------------------------

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (an open breaker whose timeout passed is half-open)."""
        self._advance(now)
        return self._state

    def retry_at(self, now: float) -> float | None:
        """When an open breaker will admit a trial; ``None`` when not open, or forced open (no set time)."""
        self._advance(now)
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return None
        return self._opened_at + self.config.open_timeout

    def snapshot(self, now: float) -> BreakerSnapshot:
        """State, consecutive failures and opening time at ``now``."""
        self._advance(now)
        return BreakerSnapshot(
            state=self._state,
            consecutive_failures=self._failures,
            opened_at=self._opened_at,
            trials_in_flight=self._trials,
        )

    # --- transitions -----------------------------------------------------------------------------

    def allow(self, now: float) -> bool:
        """May a call go upstream now? When half-open, a True takes one of the trial slots."""
        self._advance(now)
        if self._state is BreakerState.CLOSED or self._state is BreakerState.DISABLED:
            self._others += 1
            return True
        if self._state is BreakerState.HALF_OPEN and self._trials < self.config.half_open_trials:
            self._trials += 1
            return True
        return False

    def record_success(self, now: float) -> None:
        """An allowed call succeeded: resets the failure count; closes a half-open breaker."""
        self._advance(now)
        self._end_call()
        if self._state is BreakerState.CLOSED:
            self._failures = 0
        elif self._state is BreakerState.HALF_OPEN:
            self._close()
        # While open, a late success of a call admitted before the breaker opened proves little about
        # the upstream now; the trial after the timeout decides. Forced open and disabled count nothing.

    def record_failure(self, now: float, kind: ErrorKind | None = None) -> bool:
        """An allowed call failed. Returns False (and changes no verdict) if ``kind`` is not counted.

        ``kind=None`` (an unclassified failure) counts. A not-counted failure while half-open frees the
        trial slot like :meth:`release`: it says nothing about the upstream's health. While disabled
        nothing is counted (False).
        """
        self._advance(now)
        self._end_call()
        if self._state is BreakerState.DISABLED:
            return False
        if kind is not None and ErrorKind(kind) not in self.config.tripping_kinds:
            return False
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.config.failure_threshold:
                self._open(now)
        elif self._state is BreakerState.HALF_OPEN:
            self._failures += 1
            self._open(now)
        # While open, a late failure must not extend the timeout: the upstream was already judged; forced
        # open is the operator's to end.
        return True

    def release(self, now: float) -> None:
        """An allowed call ended with no verdict (cancelled): frees its slot, changes no state."""
        self._advance(now)
        self._end_call()

    def force_open(self, now: float) -> None:
        """Operator switch: hold the breaker open (state ``forced_open``: no trials, no timeout) until
        :meth:`reset` or :meth:`disable`."""
        self._open(now)
        self._state = BreakerState.FORCED_OPEN

    def disable(self, now: float) -> None:
        """Operator switch: admit every call and count nothing (state ``disabled``) until :meth:`reset` or
        :meth:`force_open`."""
        self._close()
        self._state = BreakerState.DISABLED

    def reset(self, now: float) -> None:
        """Operator switch: close the breaker and forget the failure count (also ends forced open and
        disabled)."""
        self._close()

    # --- internals -------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._opened_at is not None
            and now >= self._opened_at + self.config.open_timeout
        ):
            self._state = BreakerState.HALF_OPEN
            self._retire_trials()

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._retire_trials()

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = None
        self._retire_trials()

    def _retire_trials(self) -> None:
        # Trials still running when an episode ends are ordinary calls from now on: they must not hold
        # slots of the next half-open episode, yet they will still report a verdict.
        self._others += self._trials
        self._trials = 0

    def _end_call(self) -> None:
        if self._others > 0:
            self._others -= 1
        elif self._trials > 0:
            self._trials -= 1
