"""Pure measurement helpers shared by every worker: percentiles, the load recorder, process memory.

No Trio, no asyncio and no duckagents here, so any worker (including the LiteLLM one) can import it
without changing what it measures.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None (repeats where a metric was unavailable are skipped)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Current resident set size of this process in MiB (``VmRSS``), or 0.0 when unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


@attrs.frozen
class CallOutcome:
    """What one request returned: success, the number of content chunks and the time to the first one."""

    ok: bool
    chunks: int = 0
    #: Seconds from sending the request to the first content chunk (streaming only).
    first_chunk: float | None = None
    error: str | None = None


@attrs.frozen
class LoadWindow:
    """When a closed-loop load run counts: after ``warmup`` seconds, for ``duration`` seconds.

    ``min_requests`` stretches the window (up to ``max_stretch`` times ``duration``) until that many
    requests completed in it, so a slow client still yields enough samples for a p99. ``max_requests``
    ends the window early once that many completed (smoke runs).
    """

    warmup: float
    duration: float
    max_requests: int | None = None
    min_requests: int = 0
    max_stretch: float = 3.0


class Recorder:
    """Collects per-request samples of a closed-loop load run and summarises them.

    Times are whatever clock the caller uses, as long as it is one clock. A request counts when it
    *completes* inside the window, so requests in flight at the window's start or end neither inflate nor
    deflate the throughput of a steady state.

    It also measures process CPU time per request (``cpu_clock``, from the first completion inside the
    window to :meth:`summary`, over every completion in that span): on a shared, noisy machine the CPU
    cost of a request is far steadier than its wall-clock throughput.
    """

    def __init__(
        self,
        window: LoadWindow,
        start: float,
        cpu_clock: Callable[[], float] = time.process_time,
        on_window: Callable[[], None] | None = None,
    ) -> None:
        self.window = window
        #: Called once, when the first request completes inside the window (a profiler starts there).
        self._on_window = on_window
        self.window_start = start + window.warmup
        self.window_end = self.window_start + window.duration
        self.hard_end = self.window_start + window.duration * max(1.0, window.max_stretch)
        self.latencies: list[float] = []
        self.first_chunks: list[float] = []
        self.chunks = 0
        self.errors = 0
        self.error_examples: list[str] = []
        self.warmup_requests = 0
        self._cpu_clock = cpu_clock
        self._cpu_start: float | None = None
        self._cpu_requests = 0
        self._last_counted = self.window_start
        self._full = False

    @property
    def counted(self) -> int:
        """Requests (successful or not) counted in the window so far."""
        return len(self.latencies) + self.errors

    def _open_at(self, now: float) -> bool:
        if self._full:
            return False
        if now <= self.window_end:
            return True
        return self.counted < self.window.min_requests and now <= self.hard_end

    def should_continue(self, now: float) -> bool:
        """May a worker start another request at ``now``?"""
        return self._open_at(now)

    def record(self, started: float, finished: float, outcome: CallOutcome) -> None:
        """Record one finished request."""
        if finished < self.window_start:
            self.warmup_requests += 1
            return
        if self._cpu_start is None:
            self._cpu_start = self._cpu_clock()
            if self._on_window is not None:
                self._on_window()
        else:
            self._cpu_requests += 1
        if not self._open_at(finished):
            return
        self._last_counted = finished
        if outcome.ok:
            self.latencies.append(finished - started)
            self.chunks += outcome.chunks
            if outcome.first_chunk is not None:
                self.first_chunks.append(outcome.first_chunk)
        else:
            self.errors += 1
            if outcome.error and len(self.error_examples) < 3:
                self.error_examples.append(outcome.error)
        limit = self.window.max_requests
        if limit is not None and self.counted >= limit:
            self._full = True
        elif finished > self.window_end and self.counted >= self.window.min_requests:
            self._full = True  # a stretched window closes as soon as it has its samples

    def summary(self) -> dict[str, Any]:
        """Throughput, latency percentiles (ms) and streaming figures of the window, as plain data."""
        end = self._last_counted if (self._full or self._last_counted > self.window_end) else self.window_end
        span = max(end - self.window_start, 1e-9)
        ok = len(self.latencies)
        ms = [x * 1000.0 for x in self.latencies]
        ttfc = [x * 1000.0 for x in self.first_chunks]
        cpu_us = None
        if self._cpu_start is not None and self._cpu_requests:
            cpu_us = (self._cpu_clock() - self._cpu_start) / self._cpu_requests * 1e6
        return {
            "requests": ok,
            "errors": self.errors,
            "error_examples": self.error_examples,
            "warmup_requests": self.warmup_requests,
            "window_s": span,
            "throughput_rps": ok / span,
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "mean_ms": statistics.fmean(ms) if ms else None,
            "ttfc_p50_ms": percentile(ttfc, 50),
            "ttfc_p99_ms": percentile(ttfc, 99),
            "chunks": self.chunks,
            "chunks_per_s": self.chunks / span,
            "cpu_us_per_request": cpu_us,
        }
