"""The router agent: chooses a provider agent per request, retries and fails over, and publishes exactly
one final result per request (docs/signals.md)."""

from ._agent_view import AgentView
from ._controls import CONTROL_SOURCE, OperatorControls, Reloader
from ._report import NOT_SERVING_BREAKER, AgentReport, HeadroomReport, ReloadReport, StatusReport
from ._request import DISPATCH, SOURCE, attempt_subject
from ._router import RouterAgent, is_final
from ._state import AGENT_CHILD_PREFIX
from ._strategies import (
    DEFAULT_OUTPUT_TOKENS,
    STRATEGIES,
    Candidate,
    CheapestStrategy,
    LeastBusyStrategy,
    LowestLatencyStrategy,
    PriorityStrategy,
    RequestShape,
    RoundRobinStrategy,
    RoutingStrategy,
    make_strategy,
)
from ._stream import ResponseStream

__all__ = [
    "AGENT_CHILD_PREFIX",
    "CONTROL_SOURCE",
    "DEFAULT_OUTPUT_TOKENS",
    "DISPATCH",
    "NOT_SERVING_BREAKER",
    "SOURCE",
    "STRATEGIES",
    "AgentReport",
    "AgentView",
    "Candidate",
    "CheapestStrategy",
    "HeadroomReport",
    "LeastBusyStrategy",
    "LowestLatencyStrategy",
    "OperatorControls",
    "PriorityStrategy",
    "ReloadReport",
    "Reloader",
    "RequestShape",
    "ResponseStream",
    "RoundRobinStrategy",
    "RouterAgent",
    "RoutingStrategy",
    "StatusReport",
    "attempt_subject",
    "is_final",
    "make_strategy",
]
