"""What operators read about a running tree: the status document and the report of a reload.

:class:`StatusReport` is the one shape of "what ``duckagents status`` shows" for a running server: the
router builds it from its views (:meth:`RouterAgent.status_report`), and
:meth:`RouterAgent.status_document` turns it into the JSON object that the gateway's ``status`` op and the
HTTP front door's ``GET /v1/status`` both return (docs/gateway.md, *Status document*).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ..codec import unstructure
from ..signals import LatencySummary
from ._agent_view import AgentView

__all__ = ["AgentReport", "ReloadReport", "StatusReport", "agent_report"]


@attrs.frozen
class AgentReport:
    """One agent as the router sees it now.

    ``health`` and ``reachable`` come from the agent's latest ``provider_status`` (None before its first);
    ``breaker_state`` and ``draining`` are current to the last signal (control replies and terminals
    included); the counts cover the attempts the agent answered, up to the last one that ended, and
    ``latency`` (seconds) its answers.
    """

    provider: str
    kind: str
    up: bool
    health: float | None
    reachable: bool | None
    breaker_state: str
    draining: bool
    in_flight: int
    requests: int
    succeeded: int
    failed: int
    tokens: int
    latency: LatencySummary
    models: tuple[str, ...] = ()
    detail: dict[str, str] = attrs.field(factory=dict)


def agent_report(view: AgentView) -> AgentReport:
    """The report of one agent's view."""
    status = view.status
    metrics = view.metrics()
    config = view.config
    models = (*((config.default_model,) if config.default_model else ()), *config.models)
    return AgentReport(
        provider=view.name,
        kind=config.kind,
        up=view.up,
        health=None if status is None else status.health,
        reachable=None if status is None else status.reachable,
        breaker_state=view.breaker_state,
        draining=view.draining,
        in_flight=metrics.in_flight,
        requests=metrics.total_requests,
        succeeded=metrics.successful_requests,
        failed=metrics.failed_requests,
        tokens=metrics.total_tokens,
        latency=metrics.latency,
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
    def of(cls, views: Iterable[AgentView], in_flight: int, closing: bool) -> StatusReport:
        """The report of the router's views."""
        ordered = sorted(views, key=lambda v: v.order)
        return cls(tuple(agent_report(v) for v in ordered), in_flight, closing)

    def to_json(self) -> dict[str, Any]:
        """The JSON object (docs/gateway.md, *Status document*)."""
        document: dict[str, Any] = unstructure(self)
        return document


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
