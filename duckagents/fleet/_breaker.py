"""A circuit breaker shared by the fleet: :class:`~duckagents.resilience.CircuitBreaker`'s machine in Redis.

State, failure count, opening time and the calls in flight live in one Redis hash per provider; every
operation is one call of ``breaker.lua`` (the same transitions as the Python machine, atomically), which
also publishes a notice on the fleet's channel whenever the state changes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable

import attrs
import trio

from ..errors import ErrorKind
from ..resilience import BreakerConfig, BreakerSnapshot, BreakerState
from ._fleet import Fleet, number

__all__ = ["BreakerNotice", "SharedBreaker"]

log = logging.getLogger("duckagents.fleet")


@attrs.frozen
class BreakerNotice:
    """A shared breaker changed state (published by the replica whose call changed it)."""

    provider: str
    #: The replica whose operation changed it.
    instance: str
    state: BreakerState
    #: When it opened, in the receiver's clock (approximate: moved by the clocks' difference at receipt).
    opened_at: float | None
    #: True in the operator state ``forced_open``.
    forced: bool
    #: When an open breaker admits a trial, in the receiver's clock; None when not open or forced.
    retry_at: float | None


class SharedBreaker:
    """Closed / open / half-open, and the operator states forced-open and disabled, for a whole fleet; the
    async twin of ``CircuitBreaker`` (the same transitions, docs/resilience.md).

    Same call protocol (every admitted call ends with one ``record_success``, ``record_failure`` or
    ``release``), same ``now``/clock convention as :class:`SharedRateLimiter` (``server_clock``). The
    half-open trial slots are counted in Redis, so ``half_open_trials`` bounds the trials of the whole
    fleet. ``trial_lease`` (seconds, None = never) frees slots held longer than that by a replica that
    died or lost its answer; the agent's request timeout is the natural value.

    :attr:`latest` is the last state seen, from a reply or a notice of another replica; listeners given
    to :meth:`watch` hear every notice about this provider.
    """

    def __init__(
        self,
        fleet: Fleet,
        provider: str,
        config: BreakerConfig = BreakerConfig(),
        *,
        trial_lease: float | None = None,
        server_clock: bool = True,
    ) -> None:
        if trial_lease is not None and not trial_lease > 0:
            raise ValueError(f"trial_lease must be None or > 0, got {trial_lease!r}")
        self.fleet = fleet
        self.provider = provider
        self.config = config
        self.key = fleet.keys.breaker(provider)
        self.server_clock = server_clock
        self.latest: BreakerSnapshot | None = None
        # The script time of what ``latest`` shows: a notice can arrive after the reply of a later op (two
        # connections), and must not bring an older state back.
        self._latest_at = -math.inf
        #: The breaker's arguments of ``breaker.lua`` (``A[3..9]``): settings, notice channel, names.
        self.script_settings = [
            number(config.failure_threshold),
            number(config.open_timeout),
            number(config.half_open_trials),
            number(trial_lease),
            fleet.keys.notices,
            provider,
            fleet.instance,
        ]
        self._listeners: list[Callable[[BreakerNotice], None]] = []
        self._unregister = fleet.on_notice(self._on_notice)

    def close(self) -> None:
        """Stop listening to notices (the breaker still works; :attr:`latest` then only follows replies)."""
        self._unregister()

    def watch(self, listener: Callable[[BreakerNotice], None]) -> Callable[[], None]:
        """Call ``listener`` with every notice about this provider's breaker; returns an unwatch function."""
        self._listeners.append(listener)

        def unwatch() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unwatch

    # --- queries ---------------------------------------------------------------------------------

    async def state(self, now: float) -> BreakerState:
        """The state at ``now`` (an open breaker whose timeout passed is half-open)."""
        return (await self.snapshot(now)).state

    async def retry_at(self, now: float) -> float | None:
        """When an open breaker will admit a trial; ``None`` when not open, or forced open."""
        return (await self._run("snapshot", now))[2]

    async def snapshot(self, now: float) -> BreakerSnapshot:
        """State, consecutive failures, opening time, trials in flight (fleet-wide) and forcing."""
        _, snapshot, _ = await self._run("snapshot", now)
        return snapshot

    # --- transitions -----------------------------------------------------------------------------

    async def allow(self, now: float) -> bool:
        """May a call go upstream now? When half-open, a True takes one of the fleet's trial slots."""
        allowed, _, _ = await self._run("allow", now)
        return allowed

    async def record_success(self, now: float) -> None:
        """An allowed call succeeded: resets the failure count; closes a half-open breaker."""
        await self._run("success", now)

    async def record_failure(self, now: float, kind: ErrorKind | None = None) -> bool:
        """An allowed call failed; returns False (no verdict) when ``kind`` does not trip the breaker or
        the breaker is disabled."""
        counted = kind is None or ErrorKind(kind) in self.config.tripping_kinds
        verdict, _, _ = await self._run("failure", now, "1" if counted else "0")
        return verdict

    async def release(self, now: float) -> None:
        """An allowed call ended with no verdict (cancelled): frees its slot, changes no state."""
        await self._run("release", now)

    async def force_open(self, now: float) -> None:
        """Hold the breaker open for the whole fleet (``forced_open``) until :meth:`reset` or
        :meth:`disable`."""
        await self._run("force_open", now)

    async def disable(self, now: float) -> None:
        """Switch the breaker off for the whole fleet (``disabled``: admits all, never trips) until
        :meth:`reset` or :meth:`force_open`."""
        await self._run("disable", now)

    async def reset(self, now: float) -> None:
        """Close the breaker for the whole fleet and forget the failure count (ends forced/disabled)."""
        await self._run("reset", now)

    # --- internals -------------------------------------------------------------------------------

    async def _run(
        self, op: str, now: float, counted: str = ""
    ) -> tuple[bool, BreakerSnapshot, float | None]:
        clock = "" if self.server_clock else number(now)
        what = f"breaker {op} ({self.provider})"
        args = [op, clock, *self.script_settings, counted]
        reply = await self.fleet.run_script("breaker", [self.key], args, what, reply_length=7)
        return self.read_reply(reply, now, what)

    def read_reply(
        self, reply: list[str], now: float, what: str
    ) -> tuple[bool, BreakerSnapshot, float | None]:
        """Take in the seven fields of a script reply to a call made at ``now``: whether the op said yes,
        the snapshot after it (into :attr:`latest`) and when an open breaker admits a trial; a reply
        that makes no sense degrades the fleet."""
        try:
            state = BreakerState(reply[1])
            script_now = float(reply[6])
            opened = float(reply[3]) if reply[3] else None
            snapshot = BreakerSnapshot(
                state=state,
                consecutive_failures=int(reply[2]),
                opened_at=None if opened is None else self._caller_time(opened, script_now, now),
                trials_in_flight=int(reply[4]),
            )
        except (ValueError, IndexError) as exc:
            raise self.fleet.unavailable(f"{what}: unexpected script reply {reply!r}: {exc}") from None
        retry_at = None
        if state is BreakerState.OPEN and opened is not None:
            # Computed in the script's clock, then moved: with server_clock=False this is exactly the
            # Python machine's opened_at + open_timeout.
            retry_at = self._caller_time(opened + self.config.open_timeout, script_now, now)
        if script_now >= self._latest_at:
            self.latest, self._latest_at = snapshot, script_now
        return reply[0] == "1", snapshot, retry_at

    def _caller_time(self, value: float, script_now: float, now: float) -> float:
        return value if not self.server_clock else now + (value - script_now)

    def _on_notice(self, data: str) -> None:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("provider") != self.provider:
                return
            state = BreakerState(raw["state"])
            script_now = float(raw["now"])
            opened = float(raw["opened_at"]) if raw["opened_at"] else None
            forced = raw["forced"] is True
            instance = str(raw["instance"])
            failures = int(raw["failures"])
            trials = int(raw["trials"])
        except (ValueError, KeyError, TypeError):
            log.warning("fleet: ignored a malformed breaker notice %.200r", data)
            return
        now = trio.current_time()
        opened_at = None if opened is None else self._caller_time(opened, script_now, now)
        retry_at = None
        if state is BreakerState.OPEN and opened is not None:
            retry_at = self._caller_time(opened + self.config.open_timeout, script_now, now)
        notice = BreakerNotice(self.provider, instance, state, opened_at, forced, retry_at)
        if script_now >= self._latest_at:
            self.latest = BreakerSnapshot(state, failures, opened_at, trials)
            self._latest_at = script_now
        for listener in list(self._listeners):
            try:
                listener(notice)
            except Exception:  # one listener's bug must not stop the others
                log.exception("fleet: a breaker listener failed")
