"""Provider metrics: counters, bounded latency window, percentiles against the statistics module."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckagents.agents._metrics import ProviderMetrics, summarize
from duckagents.signals import LatencySummary, MetricsSnapshot


def reference(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def test_fresh_metrics_are_all_zero() -> None:
    assert ProviderMetrics().snapshot() == MetricsSnapshot()


def test_counters_and_in_flight() -> None:
    metrics = ProviderMetrics()
    for _ in range(3):
        metrics.request_started()
    assert metrics.snapshot().in_flight == 3
    metrics.record_success(0.5, tokens=100)
    metrics.record_success(1.5, tokens=20, time_to_first_chunk=0.25)
    metrics.record_failure(4.0)
    snap = metrics.snapshot()
    assert (snap.total_requests, snap.successful_requests, snap.failed_requests) == (3, 2, 1)
    assert snap.total_tokens == 120
    assert snap.in_flight == 0
    assert snap.avg_latency == pytest.approx(2.0)  # over successes and failures alike
    assert snap.latency.samples == 3
    assert snap.time_to_first_chunk == LatencySummary(p50=0.25, p95=0.25, p99=0.25, samples=1)


def test_in_flight_never_goes_negative() -> None:
    metrics = ProviderMetrics()
    metrics.record_failure(1.0)
    assert metrics.snapshot().in_flight == 0
    metrics.request_started()
    assert metrics.snapshot().in_flight == 1


def test_percentiles_match_statistics_quantiles_on_known_data() -> None:
    samples = [i / 10 for i in range(1, 101)]  # 0.1 .. 10.0
    random.Random(7).shuffle(samples)
    metrics = ProviderMetrics()
    for latency in samples:
        metrics.request_started()
        metrics.record_success(latency, tokens=1)
    snap = metrics.snapshot()
    assert (snap.latency.p50, snap.latency.p95, snap.latency.p99) == pytest.approx(reference(samples))
    # and the plain numbers, so a shared mistake with the reference would still show
    assert snap.latency.p50 == pytest.approx(5.05)
    assert snap.latency.p95 == pytest.approx(9.505)
    assert snap.latency.p99 == pytest.approx(9.901)
    assert snap.latency.samples == 100


def test_percentiles_cover_only_the_window_but_the_average_covers_everything() -> None:
    metrics = ProviderMetrics(window=10)
    for _ in range(90):
        metrics.record_failure(100.0)
    for i in range(10):
        metrics.record_success(float(i), tokens=0)
    snap = metrics.snapshot()
    assert snap.latency.samples == 10
    assert snap.latency.p99 < 10.0  # the 90 slow ones fell out of the window
    expected = reference([float(i) for i in range(10)])
    assert (snap.latency.p50, snap.latency.p95, snap.latency.p99) == pytest.approx(expected)
    assert snap.avg_latency == pytest.approx((90 * 100.0 + 45.0) / 100)
    assert snap.total_requests == 100


def test_single_sample_and_invalid_window() -> None:
    assert summarize([2.5]) == LatencySummary(2.5, 2.5, 2.5, 1)
    assert summarize([]) == LatencySummary()
    with pytest.raises(ValueError):
        ProviderMetrics(window=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=2, max_size=300))
def test_summarize_equals_statistics_quantiles(samples: list[float]) -> None:
    summary = summarize(samples)
    # Same interpolation, different float rounding of it (see metrics._cut).
    expected = reference(samples)
    assert (summary.p50, summary.p95, summary.p99) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert min(samples) <= summary.p50 <= summary.p95 <= summary.p99 <= max(samples)
