"""A rate limiter shared by the fleet: :class:`~duckagents.resilience.RateLimiter`'s machine in Redis.

The state (two token buckets and the upstream block) lives in one Redis hash per provider and bucket;
every operation is one call of ``ratelimit.lua``, which applies the same transitions as the Python
machine, atomically. docs/fleet.md has the design.
"""

from __future__ import annotations

import math

from ..resilience import Admission, RateLimitInfo, RateLimits, Reservation
from ..signals import Headroom
from ._fleet import Fleet, number

__all__ = ["SharedRateLimiter"]


def observe_args(info: RateLimitInfo | None) -> list[str]:
    """The seven observe arguments of ``ratelimit.lua`` (all "" when there is nothing to observe)."""
    if info is None:
        return [""] * 7
    return [
        _wait(info.retry_after),
        number(info.remaining_requests),
        number(info.limit_requests),
        _wait(info.reset_requests),
        number(info.remaining_tokens),
        number(info.limit_tokens),
        _wait(info.reset_tokens),
    ]


def _wait(seconds: float | None) -> str:
    # The Python machine ignores a NaN or infinite wait like a missing one; the script clamps the rest.
    return "" if seconds is None or not math.isfinite(seconds) else number(seconds)


class SharedRateLimiter:
    """Requests and tokens per period for a whole fleet; the async twin of ``RateLimiter``.

    The methods take the caller's ``now`` (the Trio clock in the agent) and answer in that clock. With
    ``server_clock=True`` (production) the script reads Redis ``TIME``, so every replica shares one clock,
    and the times it returns (``retry_at``) are moved into the caller's clock by the difference between
    the two at the call. With ``server_clock=False`` the script uses the ``now`` passed in, which lets a
    test drive this and the Python machine with one clock and compare them exactly.

    Every method is one script call, bounded by the fleet's timeout; on Redis trouble it raises
    :class:`~duckagents.errors.FleetUnavailable` (see :class:`FleetRateLimiter` for the fallback).
    Every call also answers the headroom it left, kept in :attr:`latest` (for status reports without
    another call). Replicas sharing a bucket must configure the same limits: each call passes its own.
    """

    def __init__(
        self,
        fleet: Fleet,
        provider: str,
        limits: RateLimits,
        *,
        bucket: str = "default",
        server_clock: bool = True,
    ) -> None:
        self.fleet = fleet
        self.provider = provider
        self.limits = limits
        self.key = fleet.keys.rate_limit(provider, bucket)
        self.server_clock = server_clock
        #: The headroom after the latest call (at that call's ``now``), None before the first.
        self.latest: Headroom | None = None
        # (limit, period) per bucket, as RateLimiter's _Bucket objects hold them: after adopt() the two
        # may refill over different periods.
        self._requests = None if limits.requests is None else (limits.requests, limits.period)
        self._tokens = None if limits.tokens is None else (limits.tokens, limits.period)

    def adopt(self, info: RateLimitInfo, period: float = 60.0) -> bool:
        """Start limiting a dimension left unlimited at the limit the upstream states, exactly as
        ``RateLimiter.adopt`` does (a local change: the calls carry the limits; a new bucket starts full,
        which is how Redis sees a bucket it holds no state for). Returns True when a limit was adopted."""
        adopted = False
        if self._requests is None and info.limit_requests is not None and info.limit_requests > 0:
            self._requests = (info.limit_requests, period)
            adopted = True
        if self._tokens is None and info.limit_tokens is not None and info.limit_tokens > 0:
            self._tokens = (info.limit_tokens, period)
            adopted = True
        if adopted:
            self.limits = RateLimits(
                requests=None if self._requests is None else self._requests[0],
                tokens=None if self._tokens is None else self._tokens[0],
                period=period
                if self.limits.requests is None and self.limits.tokens is None
                else self.limits.period,
                max_wait=self.limits.max_wait,
            )
        return adopted

    async def admit(self, now: float, tokens: int = 0) -> Admission:
        """Admit one request estimated at ``tokens`` tokens, or say when it could be admitted."""
        if tokens < 0:
            raise ValueError(f"a request cannot ask a negative number of tokens ({tokens})")
        reply = await self._run("admit", now, [number(tokens)])
        if reply[0] == "1":
            return Admission(admitted=True, reservation=Reservation(tokens=tokens, at=now))
        return Admission(admitted=False, retry_at=self.caller_time(reply[1], reply[5], now))

    async def settle(
        self,
        reservation: Reservation,
        actual_tokens: int,
        now: float,
        observed: RateLimitInfo | None = None,
        *,
        adopt: bool = False,
    ) -> None:
        """Correct a reservation by the tokens actually used; then, in the same call, take in what the
        upstream said (``observed``), the order ``RateLimiter`` requires: settle, (``adopt``,) observe.

        With ``adopt=True`` a dimension left unlimited takes the upstream's limit first (see
        :meth:`adopt`); the rare response that adopts one costs two calls (settle, then observe under the
        new limits).
        """
        if actual_tokens < 0:
            raise ValueError(f"actual token usage cannot be negative ({actual_tokens})")
        args = [number(reservation.tokens), number(actual_tokens)]
        if observed is not None and adopt:
            settled_under = self.script_limits()
            if self.adopt(observed):
                await self._run("settle", now, args + observe_args(None), limits=settled_under)
                await self._run("observe", now, observe_args(observed))
                return
        await self._run("settle", now, args + observe_args(observed))

    async def cancel(self, reservation: Reservation, now: float) -> None:
        """Refund a reservation whose request never reached the upstream (its request and its tokens)."""
        await self._run("cancel", now, [number(reservation.tokens)])

    async def observe(self, now: float, info: RateLimitInfo) -> None:
        """Adopt what the upstream said about its limits (see ``RateLimiter.observe``)."""
        await self._run("observe", now, observe_args(info))

    async def headroom(self, now: float) -> Headroom:
        """What would still be admitted now, and when a (1 request, 0 token) request would be if not now."""
        await self._run("headroom", now, [])
        assert self.latest is not None
        return self.latest

    def script_limits(self) -> list[str]:
        """The five limit arguments of ``ratelimit.lua`` (``A[3..7]``) for the limits in force."""
        out = []
        for bucket in (self._requests, self._tokens):
            out += ["", ""] if bucket is None else [number(bucket[0]), number(bucket[1])]
        return [*out, number(self.limits.max_wait)]

    async def _run(self, op: str, now: float, args: list[str], limits: list[str] | None = None) -> list[str]:
        clock = "" if self.server_clock else number(now)
        what = f"rate limit {op} ({self.provider})"
        argv = [op, clock, *(limits or self.script_limits()), *args]
        reply = await self.fleet.run_script("ratelimit", [self.key], argv, what, reply_length=6)
        self.read_reply(reply, now, what)
        return reply

    def read_reply(self, reply: list[str], now: float, what: str) -> Headroom:
        """Take in the six fields of a script reply (the headroom after the op, into :attr:`latest`),
        answered to a call made at ``now``; a reply that makes no sense degrades the fleet."""
        try:
            self.latest = Headroom(
                requests=float(reply[2]) if reply[2] else None,
                tokens=float(reply[3]) if reply[3] else None,
                retry_at=self.caller_time(reply[4], reply[5], now),
            )
        except (ValueError, IndexError) as exc:
            raise self.fleet.unavailable(f"{what}: unexpected script reply {reply!r}: {exc}") from None
        return self.latest

    def caller_time(self, value: str, script_now: str, now: float) -> float | None:
        """A time from a reply (``value``, in the script's clock) in the caller's clock; None for ""."""
        if not value:
            return None
        if not self.server_clock:
            return float(value)
        return now + (float(value) - float(script_now))
