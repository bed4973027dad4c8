"""A rate limiter as a pure state machine: two token buckets (requests and tokens), ``now`` passed in.

Each limited dimension is a token bucket with capacity = the limit and continuous refill at
``limit / period``. A bucket admits a burst of up to ``limit`` at once yet never more than
``limit + limit / period * t`` in any window of length ``t`` (so at most twice the limit in one period,
and only after it sat idle); a fixed window would allow that double burst within an instant at the
window boundary. Variable token costs are natural: a request takes ``tokens`` from the token bucket.
docs/resilience.md has the reasoning and the bound the tests check.

Reservations are corrected afterwards with :meth:`RateLimiter.settle` (actual usage) or refunded with
:meth:`RateLimiter.cancel`; each reservation must be settled or cancelled at most once. A charge may put
the token bucket in debt, which delays later admissions until the refill has paid it back.
"""

from __future__ import annotations

import math

import attrs

from ..signals import Headroom

__all__ = ["Admission", "RateLimitInfo", "RateLimiter", "RateLimits", "Reservation"]


def _positive_or_none(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"RateLimits.{attribute.name} must be None (unlimited) or >= 1, got {value!r}")


@attrs.frozen
class RateLimitInfo:
    """What an upstream said about its limits (headers or a 429), as providers parse it and
    :meth:`RateLimiter.observe` takes it in. Durations are seconds from now."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None


@attrs.frozen
class RateLimits:
    """Requests and tokens allowed per ``period`` seconds; ``None`` means unlimited. ``max_wait`` caps
    the waits an upstream imposes through :meth:`RateLimiter.observe` (``retry_after``, ``reset_*``)."""

    requests: int | None = attrs.field(default=None, validator=_positive_or_none)
    tokens: int | None = attrs.field(default=None, validator=_positive_or_none)
    period: float = attrs.field(default=60.0, validator=attrs.validators.gt(0.0))
    max_wait: float = attrs.field(default=300.0, validator=attrs.validators.gt(0.0))


@attrs.frozen
class Reservation:
    """What an admission took: one request and ``tokens`` estimated tokens, at time ``at``."""

    tokens: int
    at: float


@attrs.frozen
class Admission:
    """The answer of :meth:`RateLimiter.admit`.

    ``admitted=False, retry_at=None`` means the request can never be admitted (it asks more tokens than
    the limit); otherwise a refusal carries the earliest time at which the same request would be admitted
    if nothing else changed.
    """

    admitted: bool
    retry_at: float | None = None
    reservation: Reservation | None = None


class _Bucket:
    """One token bucket. ``level`` is the content at time ``since``; refill accrues only after ``since``.

    ``since`` may lie in the future: that holds the refill back (used when the upstream says it refills
    later than we would). ``level`` may be negative: debt from a charge larger than the estimate.
    """

    __slots__ = ("capacity", "level", "rate", "since")

    def __init__(self, limit: int, period: float) -> None:
        self.capacity = float(limit)
        self.rate = limit / period
        self.level = self.capacity
        self.since = -math.inf

    def available(self, now: float) -> float:
        if now <= self.since:
            return self.level
        return min(self.capacity, self.level + self.rate * (now - self.since))

    def ready_at(self, now: float, need: float) -> float:
        """The earliest time >= now at which ``available`` reaches ``need`` (need <= capacity)."""
        if self.available(now) >= need:
            return now
        start = max(now, self.since)
        when = start + (need - self.available(start)) / self.rate
        # Float rounding can leave available(when) a hair short of need. Step forward (growing steps) so
        # that admitting at exactly the returned time succeeds: retry_at must be honest, not approximate.
        step = math.ulp(when)
        while self.available(when) < need:
            when += step
            step *= 2
        return when

    def sync(self, now: float) -> None:
        if now > self.since:
            self.level = self.available(now)
            self.since = now

    def take(self, now: float, amount: float) -> None:
        self.sync(now)
        self.level -= amount

    def give(self, now: float, amount: float) -> None:
        self.sync(now)
        self.level = min(self.capacity, self.level + amount)

    def lower(self, now: float, remaining: float, upstream_limit: float | None, reset: float | None) -> None:
        """Adopt an upstream ``remaining`` if it is below ours, refilling no faster than the upstream."""
        self.sync(now)
        if remaining >= self.level:
            return
        self.level = float(remaining)
        if reset is not None and reset > 0:
            # The upstream is full again at now + reset, having refilled (limit - remaining) by then. Our
            # refill at our own rate must not run ahead of that line, so it starts late enough to reach
            # the upstream's limit exactly at the reset time (never earlier than now).
            limit = max(upstream_limit if upstream_limit is not None else self.capacity, remaining)
            self.since = max(self.since, now + max(0.0, reset - (limit - remaining) / self.rate))


class RateLimiter:
    """Requests-per-period and tokens-per-period together; see the module docstring."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._requests = _Bucket(limits.requests, limits.period) if limits.requests is not None else None
        self._tokens = _Bucket(limits.tokens, limits.period) if limits.tokens is not None else None
        self._blocked_until = -math.inf

    @property
    def blocked_until(self) -> float | None:
        """The end of the latest upstream ``retry_after`` block, if one was observed."""
        return None if self._blocked_until == -math.inf else self._blocked_until

    def admit(self, now: float, tokens: int = 0) -> Admission:
        """Admit one request estimated at ``tokens`` tokens, or say when it could be admitted."""
        if tokens < 0:
            raise ValueError(f"a request cannot ask a negative number of tokens ({tokens})")
        if self._tokens is not None and tokens > self._tokens.capacity:
            return Admission(admitted=False)
        ready = self._ready_at(now, tokens)
        if ready > now:
            return Admission(admitted=False, retry_at=ready)
        if self._requests is not None:
            self._requests.take(now, 1)
        if self._tokens is not None:
            self._tokens.take(now, tokens)
        return Admission(admitted=True, reservation=Reservation(tokens=tokens, at=now))

    def settle(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        """Correct a reservation by the tokens actually used: refund the excess or charge the shortfall."""
        if actual_tokens < 0:
            raise ValueError(f"actual token usage cannot be negative ({actual_tokens})")
        if self._tokens is None:
            return
        difference = actual_tokens - reservation.tokens
        if difference > 0:
            self._tokens.take(now, difference)
        elif difference < 0:
            self._tokens.give(now, -difference)

    def cancel(self, reservation: Reservation, now: float) -> None:
        """Refund a reservation whose request never reached the upstream (its request and its tokens)."""
        if self._requests is not None:
            self._requests.give(now, 1)
        if self._tokens is not None:
            self._tokens.give(now, reservation.tokens)

    def observe(self, now: float, info: RateLimitInfo) -> None:
        """Adopt what the upstream said about its limits (response headers, or a 429's retry-after).

        ``remaining_*`` below our own count lowers ours (``reset_*`` then holds our refill back so that it
        does not outrun the upstream's); ``retry_after`` refuses every admission until ``now +
        retry_after``. Dimensions we do not limit ignore the upstream's numbers (unlimited never blocks).
        When one response both settles a reservation and carries headers, settle first and observe after,
        so that a refund cannot lift our count back above the upstream's.

        Waits are hints from outside: NaN, infinite or negative ones are ignored, longer ones than
        ``limits.max_wait`` clamped to it (an upstream saying "retry in 31 years" must not block forever).
        """
        retry_after = self._wait(info.retry_after)
        if retry_after is not None and retry_after > 0:
            self._blocked_until = max(self._blocked_until, now + retry_after)
        if self._requests is not None and info.remaining_requests is not None:
            self._requests.lower(
                now, max(0, info.remaining_requests), info.limit_requests, self._wait(info.reset_requests)
            )
        if self._tokens is not None and info.remaining_tokens is not None:
            self._tokens.lower(
                now, max(0, info.remaining_tokens), info.limit_tokens, self._wait(info.reset_tokens)
            )

    def _wait(self, seconds: float | None) -> float | None:
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, self.limits.max_wait)

    def adopt(self, info: RateLimitInfo, period: float = 60.0) -> bool:
        """Start limiting a dimension this limiter leaves unlimited, at the limit the upstream states
        (``limit_requests`` / ``limit_tokens`` per ``period``: per minute for OpenAI and Anthropic
        headers). Dimensions already limited keep their limit (the config's, or a default). Returns True
        when a limit was adopted; call :meth:`observe` with the same info afterwards."""
        adopted = False
        if self._requests is None and info.limit_requests is not None and info.limit_requests > 0:
            self._requests = _Bucket(info.limit_requests, period)
            adopted = True
        if self._tokens is None and info.limit_tokens is not None and info.limit_tokens > 0:
            self._tokens = _Bucket(info.limit_tokens, period)
            adopted = True
        if adopted:
            self.limits = RateLimits(
                requests=None if self._requests is None else int(self._requests.capacity),
                tokens=None if self._tokens is None else int(self._tokens.capacity),
                period=period if self.limits.requests is None and self.limits.tokens is None
                else self.limits.period,
                max_wait=self.limits.max_wait,
            )
        return adopted

    def headroom(self, now: float) -> Headroom:
        """What would still be admitted now, and when a (1 request, 0 token) request would be if not now."""
        ready = self._ready_at(now, 0)
        return Headroom(
            requests=None if self._requests is None else max(0.0, self._requests.available(now)),
            tokens=None if self._tokens is None else max(0.0, self._tokens.available(now)),
            retry_at=ready if ready > now else None,
        )

    def _ready_at(self, now: float, tokens: int) -> float:
        # Every bucket's availability is non-decreasing in time, so the max of the individual ready times
        # is a time at which all of them (and the upstream block) allow the request.
        ready = max(now, self._blocked_until)
        if self._requests is not None:
            ready = max(ready, self._requests.ready_at(now, 1))
        if self._tokens is not None:
            ready = max(ready, self._tokens.ready_at(now, tokens))
        return ready
