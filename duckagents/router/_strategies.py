"""Pluggable choice of provider agent: a strategy ranks the eligible candidates, best first.

The router filters first (the agents that serve the request's model; up, breaker not open, not cooling
down after a rate limit, with the features and context window the request needs), then asks the strategy
to rank what is left, then orders the ranking: agents whose last health probe failed after the healthy
ones, and agents already tried for this request after those not tried yet (so a retry goes to the *next*
candidate). Every strategy breaks ties by ``priority`` (lower first), then by the order of the providers
in the config, so rankings are deterministic.

========================  =================================================================================
``priority``              lower ``priority`` first
``round_robin``           weighted round robin (smooth, as nginx does it): over any run of requests each
                          agent gets its ``weight``'s share, spread out rather than in bursts; equal
                          weights rotate in config order
``least_busy``            fewest attempts in flight (counted by the router) first
``lowest_latency``        agents with no latency sample yet first (so each gets measured), then the lowest
                          latency: the router's exponentially weighted moving average of the latency of
                          the agent's recent answered attempts (newest sample weighs
                          ``LATENCY_ALPHA`` = 0.3), seeded with the p50 the agent reports
``cheapest``              lowest expected cost: estimated input tokens x input price + expected output
                          tokens (``max_tokens``, else :data:`DEFAULT_OUTPUT_TOKENS`) x output price, at
                          the price of the requested model on that agent (docs/routing.md)
========================  =================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "STRATEGIES",
    "Candidate",
    "CheapestStrategy",
    "LeastBusyStrategy",
    "LowestLatencyStrategy",
    "PriorityStrategy",
    "RequestShape",
    "RoundRobinStrategy",
    "RoutingStrategy",
    "make_strategy",
]

#: Output tokens assumed by ``cheapest`` when a request sets no ``max_tokens``.
DEFAULT_OUTPUT_TOKENS = 256


@attrs.frozen
class Candidate:
    """What a strategy knows about one eligible agent."""

    name: str
    #: Position in the config (tie breaker of last resort).
    order: int
    priority: int = 0
    cost_per_1k_input: float = 0.0
    cost_per_1k_output: float = 0.0
    #: Attempts the router has in flight on this agent.
    active: int = 0
    #: Seconds; ``None`` when never measured.
    latency: float | None = None
    health: float = 1.0
    #: Share of the traffic under ``round_robin``.
    weight: float = 1.0


@attrs.frozen
class RequestShape:
    """The size of the request being routed."""

    input_tokens: int = 0
    max_tokens: int | None = None

    @property
    def expected_output_tokens(self) -> int:
        """``max_tokens``, else :data:`DEFAULT_OUTPUT_TOKENS`."""
        return self.max_tokens if self.max_tokens is not None else DEFAULT_OUTPUT_TOKENS


class RoutingStrategy(Protocol):
    """Ranks eligible candidates for one request, best first."""

    name: str

    def rank(self, candidates: Sequence[Candidate], shape: RequestShape) -> list[Candidate]:
        """The candidates, best first (a permutation of the input)."""
        ...


def _tie(c: Candidate) -> tuple[int, int]:
    return (c.priority, c.order)


class PriorityStrategy:
    """Lower ``priority`` first; the rest are the fallbacks, in order."""

    name = "priority"

    def rank(self, candidates: Sequence[Candidate], shape: RequestShape) -> list[Candidate]:
        """Sorted by (priority, config order)."""
        return sorted(candidates, key=_tie)


class RoundRobinStrategy:
    """Smooth weighted round robin: each call adds every candidate's ``weight`` to its credit, ranks by
    credit (ties: config order) and charges the first the total weight of the call's candidates. With
    equal weights this rotates through the candidates in config order."""

    name = "round_robin"

    #: Agents whose credit is kept at most (one per provider in practice; bounded all the same).
    MAX_AGENTS = 4096

    def __init__(self) -> None:
        self._credit: dict[str, float] = {}

    def rank(self, candidates: Sequence[Candidate], shape: RequestShape) -> list[Candidate]:
        """The candidates by credit after this call's increment, highest first (see the class)."""
        if not candidates:
            return []
        credit = self._credit
        if len(credit) > self.MAX_AGENTS:
            credit.clear()
        total = 0.0
        for c in candidates:
            credit[c.name] = credit.get(c.name, 0.0) + c.weight
            total += c.weight
        ranked = sorted(candidates, key=lambda c: (-credit[c.name], c.order))
        credit[ranked[0].name] -= total
        return ranked


class LeastBusyStrategy:
    """Fewest in-flight attempts first."""

    name = "least_busy"

    def rank(self, candidates: Sequence[Candidate], shape: RequestShape) -> list[Candidate]:
        """Sorted by (active, priority, config order)."""
        return sorted(candidates, key=lambda c: (c.active, *_tie(c)))


class LowestLatencyStrategy:
    """Unmeasured agents first (to measure them), then the lowest latency."""

    name = "lowest_latency"

    def rank(self, candidates: Sequence[Candidate], shape: RequestShape) -> list[Candidate]:
        """Sorted by (measured?, latency, priority, config order)."""
        return sorted(
            candidates, key=lambda c: (c.latency is not None, c.latency or 0.0, *_tie(c))
        )


def expected_cost(candidate: Candidate, shape: RequestShape) -> float:
    """USD the request is expected to cost on ``candidate``."""
    return (
        shape.input_tokens * candidate.cost_per_1k_input
        + shape.expected_output_tokens * candidate.cost_per_1k_output
    ) / 1000.0


class CheapestStrategy:
    """Lowest expected cost first."""

    name = "cheapest"

    def rank(self, candidates: Sequence[Candidate], shape: RequestShape) -> list[Candidate]:
        """Sorted by (expected cost, priority, config order)."""
        return sorted(candidates, key=lambda c: (expected_cost(c, shape), *_tie(c)))


#: Strategy factories by the name used in ``[router] strategy``.
STRATEGIES: dict[str, Callable[[], RoutingStrategy]] = {
    "priority": PriorityStrategy,
    "round_robin": RoundRobinStrategy,
    "least_busy": LeastBusyStrategy,
    "lowest_latency": LowestLatencyStrategy,
    "cheapest": CheapestStrategy,
}


def make_strategy(name: str) -> RoutingStrategy:
    """A new strategy by name; raises ``ValueError`` listing the known names."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
