"""The router agent: chooses a provider agent per request, retries and fails over, and publishes exactly
one final result per request (docs/signals.md)."""

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
    "DEFAULT_OUTPUT_TOKENS",
    "DISPATCH",
    "SOURCE",
    "STRATEGIES",
    "Candidate",
    "CheapestStrategy",
    "LeastBusyStrategy",
    "LowestLatencyStrategy",
    "PriorityStrategy",
    "RequestShape",
    "ResponseStream",
    "RoundRobinStrategy",
    "RouterAgent",
    "RoutingStrategy",
    "attempt_subject",
    "is_final",
    "make_strategy",
]
