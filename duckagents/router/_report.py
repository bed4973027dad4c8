"""What operators read about a running tree: the status document and the report of a reload.

:class:`StatusReport` is the one shape of "what ``duckagents status`` shows" for a running server: the
router builds it from its views (:meth:`RouterAgent.status_report`), and
:meth:`RouterAgent.status_document` turns it into the JSON object that the gateway's ``status`` op and the
HTTP front door's ``GET /v1/status`` both return (docs/gateway.md, *Status document*; docs/deploy.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import attrs

from ..codec import unstructure
from ..signals import MetricsSnapshot
from ._agent_view import AgentView

__all__ = [
    "NOT_SERVING_BREAKER", "AgentReport", "HeadroomReport", "ReloadReport", "StatusReport", "agent_report",
]


#: Breaker states in which an agent takes no requests (``disabled`` is a breaker switched off: it serves).
NOT_SERVING_BREAKER = frozenset({"open", "forced_open"})


@attrs.frozen
class HeadroomReport:
    """What the agent's rate limiter would still admit (None: unlimited), and in how many seconds a
    refusing limiter admits again (None: it does not refuse)."""

    requests: float | None = None
    tokens: float | None = None
    retry_after: float | None = None


@attrs.frozen
class AgentReport:
    """One agent as the router sees it now.

    ``health``, ``reachable``, ``headroom`` and ``detail`` come from the agent's latest
    ``provider_status`` (null before its first); ``breaker_state`` and ``draining`` are current to the
    last signal (control replies and terminals included); ``metrics`` count the attempts the agent
    answered, up to the last one that ended (``total_requests``, ``in_flight``, ``latency`` in seconds...);
    ``down`` says why its supervisor marked it down (its last crash, or that it gave up), null while it
    runs; ``serving``: it can take a request now (up, reachable, breaker neither open nor forced open, not
    draining, the router not closing).
    """

    provider: str
    kind: str
    up: bool
    serving: bool
    down: str | None
    health: float | None
    reachable: bool | None
    breaker_state: str
    draining: bool
    headroom: HeadroomReport
    metrics: MetricsSnapshot
    models: tuple[str, ...] = ()
    detail: dict[str, str] = attrs.field(factory=dict)


def agent_report(view: AgentView, now: float, closing: bool = False) -> AgentReport:
    """The report of one agent's view at ``now`` (Trio clock)."""
    status = view.status
    config = view.config
    models = (config.model, *config.models)
    headroom = HeadroomReport()
    if status is not None:
        retry_at = status.headroom.retry_at
        headroom = HeadroomReport(
            status.headroom.requests,
            status.headroom.tokens,
            None if retry_at is None else max(0.0, retry_at - now),
        )
    serving = (
        view.up
        and view.down is None
        and status is not None
        and status.reachable
        and view.breaker_state not in NOT_SERVING_BREAKER
        and not view.draining
        and not closing
    )
    return AgentReport(
        provider=view.name,
        kind=config.kind,
        up=view.up,
        serving=serving,
        down=view.down,
        health=None if status is None else status.health,
        reachable=None if status is None else status.reachable,
        breaker_state=view.breaker_state,
        draining=view.draining,
        headroom=headroom,
        metrics=view.metrics(),
        models=tuple(dict.fromkeys(models)),
        detail={} if status is None else dict(status.detail),
    )


@attrs.frozen
class StatusReport:
    """The status of a running tree: one :class:`AgentReport` per agent (in config order), the requests
    in the router and whether it is closing."""

    agents: tuple[AgentReport, ...]
    in_flight: int
    closing: bool = False

    @classmethod
    def of(cls, views: Iterable[AgentView], in_flight: int, closing: bool, now: float) -> StatusReport:
        """The report of the router's views at ``now``."""
        ordered = sorted(views, key=lambda v: v.order)
        return cls(tuple(agent_report(v, now, closing) for v in ordered), in_flight, closing)

    def to_json(self) -> dict[str, Any]:
        """The status document (docs/gateway.md, *Status document*): ``{"object": "list", "data":
        [agent...], "in_flight": N, "closing": bool}``, plain JSON (no NaN or infinity)."""
        return {
            "object": "list",
            "data": [_finite(unstructure(agent)) for agent in self.agents],
            "in_flight": self.in_flight,
            "closing": self.closing,
        }


def _finite(value: Any) -> Any:
    """Non-finite floats as None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@attrs.frozen
class ReloadReport:
    """What a reload did: providers started, stopped after draining, replaced, left alone; and notes
    (settings that need a restart, drains that ran out of time)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for people: ``added a; removed b; changed c`` (or ``no provider changed``)."""
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (("added", self.added), ("removed", self.removed), ("changed", self.changed))
            if names
        ]
        text = "; ".join(parts) or "no provider changed"
        return "; ".join((text, *self.notes))
