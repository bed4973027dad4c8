"""Per-provider request metrics, cheap enough for the hot path.

Recording is O(1): counters plus an append to a bounded ring (``deque(maxlen=window)``) of the latest
latencies. Percentiles are computed only in :meth:`ProviderMetrics.snapshot`, by sorting the ring.

A request counts in ``total_requests`` when it *ends* (success or failure); while running it counts in
``in_flight``. ``avg_latency`` is the mean over every ended request since creation, successes and
failures alike (as the seed design does), while the percentiles cover only the last ``window`` of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from ..signals import LatencySummary, MetricsSnapshot

__all__ = ["COST_MODELS", "OTHER_MODELS", "ProviderMetrics", "summarize"]

#: Models whose spend is kept apart in a snapshot's ``cost_by_model``; the rest add up under OTHER_MODELS.
COST_MODELS = 64
OTHER_MODELS = "other"


def summarize(samples: Collection[float]) -> LatencySummary:
    """p50 / p95 / p99 of ``samples`` (see :meth:`LatencySummary.of`, which the router uses too)."""
    return LatencySummary.of(samples)


class ProviderMetrics:
    """Counters and latency distribution of one provider agent."""

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"the latency window must hold at least one sample, got {window}")
        self.window = window
        self._total = 0
        self._successes = 0
        self._failures = 0
        self._tokens = 0
        self._latency_sum = 0.0
        self._in_flight = 0
        self._latencies: deque[float] = deque(maxlen=window)
        self._first_chunk: deque[float] = deque(maxlen=window)
        self._cost = 0.0
        self._cost_by_model: dict[str, float] = {}

    def request_started(self) -> None:
        """A request went upstream; it counts as in flight until recorded as a success or failure."""
        self._in_flight += 1

    def record_success(self, latency: float, tokens: int, time_to_first_chunk: float | None = None) -> None:
        """A request ended well after ``latency`` seconds, using ``tokens`` tokens.

        ``time_to_first_chunk`` is given for streams only.
        """
        self._ended(latency)
        self._successes += 1
        self._tokens += tokens
        if time_to_first_chunk is not None:
            self._first_chunk.append(time_to_first_chunk)

    def record_cost(self, model: str, cost: float) -> None:
        """``cost`` USD was spent on ``model``. Models beyond the first :data:`COST_MODELS` are summed
        under ``"other"`` (the table is bounded; an agent serving ``*`` may see any name)."""
        self._cost += cost
        by_model = self._cost_by_model
        if model not in by_model and len(by_model) >= COST_MODELS:
            model = OTHER_MODELS
        by_model[model] = by_model.get(model, 0.0) + cost

    def record_failure(self, latency: float) -> None:
        """A request failed after ``latency`` seconds."""
        self._ended(latency)
        self._failures += 1

    def snapshot(self) -> MetricsSnapshot:
        """The counters now, with percentiles over the last ``window`` samples."""
        return MetricsSnapshot(
            total_requests=self._total,
            successful_requests=self._successes,
            failed_requests=self._failures,
            total_tokens=self._tokens,
            avg_latency=self._latency_sum / self._total if self._total else 0.0,
            latency=summarize(self._latencies),
            time_to_first_chunk=summarize(self._first_chunk),
            in_flight=self._in_flight,
            cost=self._cost,
            cost_by_model=dict(self._cost_by_model),
        )

    def _ended(self, latency: float) -> None:
        self._total += 1
        self._latency_sum += latency
        self._latencies.append(latency)
        # Never negative, even if a caller records a result it did not announce with request_started.
        if self._in_flight > 0:
            self._in_flight -= 1
