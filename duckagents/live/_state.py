"""The live figures of a running tree, folded from its signals: what ``duckagents top`` shows.

:class:`LiveState` takes CloudEvents envelopes (dicts, as the gateway sends them or as
``codec.signal_to_dict`` makes them) and status documents, and keeps per-agent figures, per-bucket
rates and a feed of the latest requests. It mirrors the dashboard page's model (``static/dashboard.js``);
docs/dashboard.md says what each figure means. Pure: the caller passes ``now`` (wall-clock seconds), and
every collection is bounded.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = ["AgentFigures", "FeedEntry", "LiveState", "Rates"]

#: Chart/rate resolution and window: 60 buckets of 5 s.
BUCKET_SECONDS = 5.0
BUCKETS = 60
#: The window is the last BUCKETS buckets, or the time since the first signal when shorter (at least
#: this many buckets).
MIN_BUCKETS = 12
FEED_KEPT = 500
LATENCIES_KEPT = 256
AGENTS_MAX = 256
#: An attempt whose terminal never came (frames dropped) stops counting as in flight after this.
STALE_ATTEMPT = 15 * 60.0
#: How long a crash or breaker change is shown as fresh.
FLASH_SECONDS = 1.6
#: Error kinds counted apart per bucket; the rest are "other" (kinds come from outside: bound them).
KINDS_MAX = 16

_AGENT_SUPERVISOR = re.compile(r"^agent:(.+)$")
_INCARNATION = re.compile(r"#(\d+)$")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _text(value: Any) -> str:
    """A string field: an enum member (envelopes made in-process by the codec keep them) as its value."""
    return str(getattr(value, "value", value))


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``; None for none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@attrs.define
class AgentFigures:
    """One agent as the signals describe it (``instance`` is its replica in a fleet)."""

    provider: str
    instance: str | None = None
    kind: str = ""
    model: str = ""
    up: bool | None = None
    gave_up: bool = False
    health: float | None = None
    reachable: bool | None = None
    breaker: str | None = None
    half_open_at: float | None = None
    draining: bool = False
    headroom_requests: float | None = None
    headroom_tokens: float | None = None
    limit_requests: float | None = None
    limit_tokens: float | None = None
    refusing: bool = False
    status_p50: float | None = None
    status_p95: float | None = None
    latencies: deque[float] = attrs.field(factory=lambda: deque(maxlen=LATENCIES_KEPT))
    attempts: dict[str, float] = attrs.field(factory=dict)
    attempts_seen: bool = False
    active_reported: int | None = None
    spend_base: float | None = None
    spend_live: float = 0.0
    restarts: int = 0
    requests: int | None = None
    last_crash: str = ""
    flash: str = ""
    flash_until: float = 0.0

    @property
    def key(self) -> str:
        """``provider``, or ``instance/provider`` in a fleet."""
        return f"{self.instance}/{self.provider}" if self.instance else self.provider

    def in_flight(self, now: float) -> int | None:
        """Attempts sent to it and not answered yet (as seen live), else what its last status said."""
        for subject in [s for s, t in self.attempts.items() if now - t > STALE_ATTEMPT]:
            del self.attempts[subject]
        return len(self.attempts) if self.attempts_seen else self.active_reported

    def latency(self, q: float) -> float | None:
        """Seconds: the ``q`` quantile of the answers seen live, else of the agent's own last status."""
        if self.latencies:
            return percentile(self.latencies, q)
        return self.status_p50 if q <= 0.5 else self.status_p95

    @property
    def spend(self) -> float | None:
        """USD: the agent's own total at its last status plus the answers' costs since."""
        if self.spend_base is None and not self.spend_live:
            return None
        return (self.spend_base or 0.0) + self.spend_live

    def flashing(self, now: float) -> str:
        """``"crash"`` or ``"breaker"`` while a fresh one is shown, else ``""``."""
        return self.flash if now < self.flash_until else ""


@attrs.define
class FeedEntry:
    """One request: the caller's view (its final result) plus the attempts it took."""

    request_id: str
    at: float
    started: float | None = None
    model: str = ""
    provider: str = ""
    attempts: int = 0
    tried: list[str] = attrs.field(factory=list)
    outcome: str = ""
    ok: bool | None = None
    latency: float | None = None

    @property
    def failover(self) -> bool:
        """More than one attempt was made."""
        return self.attempts > 1


@attrs.define
class Rates:
    """One bucket: final results (ok, failed), attempt errors by kind, attempt latencies (seconds)."""

    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = attrs.field(factory=dict)
    latencies: list[float] = attrs.field(factory=list)


@attrs.define
class Replica:
    """A replica of a fleet, as seen in its events."""

    name: str
    seen: float
    degraded: bool = False
    reason: str = ""


class LiveState:
    """Figures folded from signals; see the module docstring."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentFigures] = {}
        self.feed: OrderedDict[str, FeedEntry] = OrderedDict()
        self.buckets: dict[int, Rates] = {}
        self.replicas: dict[str, Replica] = {}
        self.missed = 0
        self.last_event_id: str | None = None
        self._first_bucket: int | None = None

    # --- input -------------------------------------------------------------------------------------------

    def agent(self, provider: str, instance: str | None = None) -> AgentFigures:
        """The figures of ``provider`` (created on first sight; beyond :data:`AGENTS_MAX`, a spare)."""
        key = f"{instance}/{provider}" if instance else provider
        found = self.agents.get(key)
        if found is None:
            found = AgentFigures(provider, instance)
            if len(self.agents) < AGENTS_MAX:
                self.agents[key] = found
        return found

    def apply_status_document(self, document: Mapping[str, Any], now: float) -> None:
        """The gateway's ``status`` answer, the status document (``data``: one object per agent, its counts
        under ``metrics``; docs/gateway.md), as a snapshot. An older flat form (``agents``) is read too."""
        entries = document.get("data", document.get("agents"))
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("provider"), str):
                continue
            instance = entry.get("instance") or entry.get("replica") or None
            if instance:
                self._touch_replica(str(instance), now)
            agent = self.agent(entry["provider"], instance)
            detail = entry.get("detail") if isinstance(entry.get("detail"), Mapping) else {}
            assert isinstance(detail, Mapping)
            agent.kind = str(entry.get("kind") or detail.get("provider_kind") or agent.kind)
            models = entry.get("models")
            agent.model = str((models[0] if models else None) or detail.get("default_model") or agent.model)
            agent.up = entry.get("up") is not False
            if _number(entry.get("health")) is not None:
                agent.health = _number(entry.get("health"))
            if entry.get("reachable") is not None:
                agent.reachable = bool(entry.get("reachable"))
            agent.draining = bool(entry.get("draining"))
            self._breaker(agent, entry.get("breaker_state"), detail.get("breaker_retry_in"), now)
            metrics = entry.get("metrics") if isinstance(entry.get("metrics"), Mapping) else {}
            assert isinstance(metrics, Mapping)
            latency = metrics.get("latency", entry.get("latency"))
            if isinstance(latency, Mapping) and latency.get("samples"):
                agent.status_p50, agent.status_p95 = _number(latency.get("p50")), _number(latency.get("p95"))
            in_flight = metrics.get("in_flight", entry.get("in_flight"))
            if isinstance(in_flight, int) and not isinstance(in_flight, bool):
                agent.active_reported = in_flight
            requests = metrics.get("total_requests", entry.get("requests"))
            if isinstance(requests, int) and not isinstance(requests, bool):
                agent.requests = requests
            spend = _number(metrics.get("cost", entry.get("spend")))
            if spend is not None:
                agent.spend_base, agent.spend_live = spend, 0.0
            headroom = entry.get("headroom")
            if isinstance(headroom, Mapping):
                agent.headroom_requests = _number(headroom.get("requests"))
                agent.headroom_tokens = _number(headroom.get("tokens"))
                agent.refusing = headroom.get("retry_after") is not None
            if isinstance(entry.get("restarts"), int):
                agent.restarts = max(agent.restarts, entry["restarts"])
            self._from_detail(agent, detail)
        # A fleet's document lists its replicas too (docs/fleet.md): whether each reaches Redis.
        replicas = document.get("replicas")
        for listed in replicas if isinstance(replicas, list) else ():
            if isinstance(listed, Mapping) and isinstance(listed.get("instance"), str):
                replica = self._touch_replica(listed["instance"], now)
                replica.degraded = listed.get("degraded") is True

    def apply(self, event: Mapping[str, Any], now: float) -> None:
        """One CloudEvents envelope; types this view does not use are ignored."""
        if self._first_bucket is None:
            self._first_bucket = int(now // BUCKET_SECONDS)
        if isinstance(event.get("id"), str):
            self.last_event_id = event["id"]
        data = event.get("data")
        if not isinstance(data, Mapping):
            return
        instance = event.get("instance") if isinstance(event.get("instance"), str) else None
        if instance:
            self._touch_replica(instance, now)
        kind = event.get("type")
        subject = str(event.get("subject") or "")
        attempt_level = "#" in subject
        if kind == "provider_status" and isinstance(data.get("provider"), str):
            self._status(self.agent(data["provider"], instance), data, now)
        elif kind == "supervisor_event":
            self._supervisor(data, instance, now)
        elif kind == "provider_request" and isinstance(data.get("request_id"), str):
            self._request(subject, attempt_level, data, instance, now)
        elif kind in ("provider_response", "provider_error") and isinstance(data.get("request_id"), str):
            self._terminal(kind == "provider_response", subject, attempt_level, data, instance, now)
        elif kind == "control_reply" and isinstance(data.get("provider"), str):
            agent = self.agent(data["provider"], instance)
            if isinstance(data.get("draining"), bool):
                agent.draining = data["draining"]
            self._breaker(agent, data.get("breaker_state"), None, now)
        elif kind in ("fleet_degraded", "fleet_rejoined"):
            # A replica lost the fleet's Redis (fleet_degraded, with why) or reaches it again.
            replica = self._touch_replica(str(data.get("instance") or instance or "?"), now)
            replica.degraded = kind == "fleet_degraded"
            replica.reason = str(data.get("reason") or "") if replica.degraded else ""

    def note_missed(self, count: int) -> None:
        """Signals the gateway dropped for this client (it read too slowly)."""
        self.missed += max(0, count)

    def disconnected(self) -> None:
        """The stream broke: attempts in flight may never see their terminal here."""
        for agent in self.agents.values():
            agent.attempts.clear()

    # --- output ------------------------------------------------------------------------------------------

    def window(self, now: float) -> list[Rates | None]:
        """The last :data:`BUCKETS` buckets, or those since the first signal when fewer (at least
        :data:`MIN_BUCKETS`), oldest first; None where nothing happened."""
        last = int(now // BUCKET_SECONDS)
        since = last if self._first_bucket is None else self._first_bucket
        first = max(last - BUCKETS + 1, min(since, last - MIN_BUCKETS + 1))
        return [self.buckets.get(n) for n in range(first, last + 1)]

    def recent(self, seconds: float, now: float) -> Rates:
        """The buckets of the last ``seconds`` summed up."""
        total = Rates()
        last = int(now // BUCKET_SECONDS)
        for n in range(last - max(1, int(seconds // BUCKET_SECONDS)) + 1, last + 1):
            rates = self.buckets.get(n)
            if rates is None:
                continue
            total.ok += rates.ok
            total.failed += rates.failed
            total.latencies += rates.latencies
            for kind, count in rates.errors.items():
                total.errors[kind] = total.errors.get(kind, 0) + count
        return total

    # --- internals ---------------------------------------------------------------------------------------

    def _breaker(self, agent: AgentFigures, state: Any, retry_in: Any, now: float) -> None:
        if not isinstance(state, str) or not state:
            return
        state = _text(state)
        if agent.breaker is not None and agent.breaker != state:
            self._flash(agent, "breaker", now)
        agent.breaker = state
        seconds = _number(retry_in)
        agent.half_open_at = now + seconds if state == "open" and seconds is not None else None

    @staticmethod
    def _flash(agent: AgentFigures, kind: str, now: float) -> None:
        agent.flash, agent.flash_until = kind, now + FLASH_SECONDS

    @staticmethod
    def _from_detail(agent: AgentFigures, detail: Mapping[str, Any]) -> None:
        agent.limit_requests = _number(detail.get("limit_requests"))
        agent.limit_tokens = _number(detail.get("limit_tokens"))
        match = _INCARNATION.search(str(detail.get("agent_id") or ""))
        if match:  # "<name>#<incarnation>": the first run is incarnation 1
            agent.restarts = max(agent.restarts, int(match.group(1)) - 1)

    def _status(self, agent: AgentFigures, data: Mapping[str, Any], now: float) -> None:
        detail = data.get("detail") if isinstance(data.get("detail"), Mapping) else {}
        assert isinstance(detail, Mapping)
        agent.up = True
        agent.health = _number(data.get("health"))
        agent.reachable = data.get("reachable") if isinstance(data.get("reachable"), bool) else None
        agent.kind = str(detail.get("provider_kind") or agent.kind)
        agent.model = str(detail.get("default_model") or agent.model)
        if isinstance(data.get("draining"), bool):  # a status field with the operator controls
            agent.draining = data["draining"]
        elif "draining" in detail:
            agent.draining = detail["draining"] == "true"
        self._breaker(agent, data.get("breaker_state"), detail.get("breaker_retry_in"), now)
        self._from_detail(agent, detail)
        headroom = data.get("headroom") if isinstance(data.get("headroom"), Mapping) else {}
        assert isinstance(headroom, Mapping)
        agent.headroom_requests = _number(headroom.get("requests"))
        agent.headroom_tokens = _number(headroom.get("tokens"))
        agent.refusing = headroom.get("retry_at") is not None
        metrics = data.get("metrics") if isinstance(data.get("metrics"), Mapping) else {}
        assert isinstance(metrics, Mapping)
        latency = metrics.get("latency")
        if isinstance(latency, Mapping) and latency.get("samples"):
            agent.status_p50, agent.status_p95 = _number(latency.get("p50")), _number(latency.get("p95"))
        if isinstance(metrics.get("total_requests"), int):
            agent.requests = metrics["total_requests"]
        if _number(metrics.get("cost")) is not None:
            agent.spend_base, agent.spend_live = _number(metrics.get("cost")), 0.0
        active = _number(detail.get("active"))
        if active is not None:
            agent.active_reported = int(active)

    def _supervisor(self, data: Mapping[str, Any], instance: str | None, now: float) -> None:
        supervisor = str(data.get("supervisor") or "")
        match = _AGENT_SUPERVISOR.match(supervisor)
        # An agent runs as "agent:<name>" under a supervisor of its own with the same name.
        if not match or data.get("child") != supervisor:
            return
        agent = self.agent(match.group(1), instance)
        restarts = data.get("restarts")
        if isinstance(restarts, int):
            agent.restarts = max(agent.restarts, restarts)
        event = data.get("event")
        if event in ("crashed", "gave_up"):
            agent.up = False
            agent.gave_up = event == "gave_up"
            error_type, message = data.get("error_type"), data.get("error_message")
            agent.last_crash = f"{error_type}: {message}" if error_type else str(data.get("reason") or "")
            self._flash(agent, "crash", now)
        elif event in ("restarted", "started"):
            agent.up, agent.gave_up = True, False
            if event == "restarted":
                self._flash(agent, "crash", now)

    def _entry(self, request_id: str, now: float) -> FeedEntry:
        entry = self.feed.get(request_id)
        if entry is None:
            entry = self.feed[request_id] = FeedEntry(request_id, now)
            while len(self.feed) > FEED_KEPT:
                self.feed.popitem(last=False)
        return entry

    def _request(
        self, subject: str, attempt_level: bool, data: Mapping[str, Any], instance: str | None, now: float
    ) -> None:
        entry = self._entry(data["request_id"], now)
        if not attempt_level:  # the caller's request as the router took it in
            entry.started = now
            entry.model = entry.model or str(data.get("model") or "")
            return
        provider = data.get("provider")
        if not isinstance(provider, str):
            return
        agent = self.agent(provider, instance)
        agent.attempts[subject] = now
        agent.attempts_seen = True
        attempt = data.get("attempt")
        entry.attempts = max(entry.attempts, attempt if isinstance(attempt, int) else 1)
        if provider not in entry.tried:
            entry.tried.append(provider)

    def _bucket(self, now: float) -> Rates:
        number = int(now // BUCKET_SECONDS)
        rates = self.buckets.get(number)
        if rates is None:
            rates = self.buckets[number] = Rates()
            for old in [n for n in self.buckets if n <= number - BUCKETS]:
                del self.buckets[old]
        return rates

    def _terminal(
        self,
        response: bool,
        subject: str,
        attempt_level: bool,
        data: Mapping[str, Any],
        instance: str | None,
        now: float,
    ) -> None:
        rates = self._bucket(now)
        if attempt_level:
            provider = data.get("provider")
            if not isinstance(provider, str):
                return
            agent = self.agent(provider, instance)
            agent.attempts.pop(subject, None)
            if response:
                latency = _number(data.get("latency")) or 0.0
                agent.latencies.append(latency)
                rates.latencies.append(latency)
                usage = data.get("usage")
                cost = _number(usage.get("cost")) if isinstance(usage, Mapping) else None
                if cost is not None:
                    agent.spend_live += cost
            else:
                self._count_error(rates, data.get("kind"))
            return
        entry = self._entry(data["request_id"], now)
        entry.ok = response
        entry.provider = str(data.get("provider") or "")
        entry.model = str(data.get("model") or entry.model)
        attempt = data.get("attempt")
        entry.attempts = max(entry.attempts, attempt if isinstance(attempt, int) else 0)
        if response:
            entry.outcome = _text(data.get("finish_reason") or "stop")
        else:
            entry.outcome = _text(data.get("kind") or "error")
        if entry.started is not None:
            entry.latency = now - entry.started
        elif response:
            entry.latency = _number(data.get("latency"))
        if response:
            rates.ok += 1
        else:
            rates.failed += 1
            if not attempt:  # refused before any attempt: no attempt-level error tells of it
                self._count_error(rates, data.get("kind"))

    @staticmethod
    def _count_error(rates: Rates, kind: Any) -> None:
        name = _text(kind or "error")[:40]
        if name not in rates.errors and len(rates.errors) >= KINDS_MAX:
            name = "other"
        rates.errors[name] = rates.errors.get(name, 0) + 1

    def _touch_replica(self, name: str, now: float) -> Replica:
        replica = self.replicas.get(name)
        if replica is None:
            replica = Replica(name, now)
            if len(self.replicas) < AGENTS_MAX:
                self.replicas[name] = replica
        replica.seen = now
        return replica
