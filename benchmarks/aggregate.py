"""From raw worker records to the figures the report shows: medians over repeats and paired ratios.

Ratios between clients are computed per repeat (the clients of one repeat ran back to back) and then
the median is taken, which cancels most of the drift a shared machine adds between repeats.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from ._stats import median_or_none

#: Per-run HTTP figures that are summarised as medians over repeats.
HTTP_METRICS = (
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "ttfc_p50_ms",
    "ttfc_p99_ms",
    "chunks_per_s",
    "cpu_us_per_request",
)

Key = tuple[bool, int, str]  # (stream, concurrency, client)


def _by_key(records: list[dict[str, Any]]) -> dict[Key, list[dict[str, Any]]]:
    grouped: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[(record["stream"], record["concurrency"], record["client"])].append(record)
    return grouped


def http_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mode, concurrency, client): medians over the successful repeats."""
    rows = []
    for (stream, concurrency, client), group in sorted(_by_key(records).items()):
        ok = [r for r in group if "result" in r]
        row: dict[str, Any] = {
            "stream": stream,
            "concurrency": concurrency,
            "client": client,
            "repeats": len(ok),
            "failed_runs": len(group) - len(ok),
            "errors": sum(r["result"]["errors"] for r in ok),
            "run_errors": [r["error"] for r in group if "error" in r][:2],
            "error_examples": [e for r in ok for e in r["result"]["error_examples"]][:2],
            "peak_rss_mib": median_or_none([r["peak_rss_mib"] for r in ok]),
            # Front doors only: the server process's figures (its RSS peak is a running maximum).
            "server_peak_rss_mib": max(
                (r["server_peak_rss_mib"] for r in ok if r.get("server_peak_rss_mib")), default=None
            ),
            "server_cpu_us_per_request": median_or_none([r.get("server_cpu_us_per_request") for r in ok]),
        }
        for metric in HTTP_METRICS:
            row[metric] = median_or_none([r["result"][metric] for r in ok])
        rows.append(row)
    return rows


def _paired(
    records: list[dict[str, Any]], stream: bool, concurrency: int, a: str, b: str, metric: str, how: str
) -> float | None:
    """Median over repeats of ``a``'s metric over (``how="ratio"``) or minus (``"diff"``) ``b``'s."""
    by_repeat: dict[int, dict[str, float]] = defaultdict(dict)
    for r in records:
        if r["stream"] == stream and r["concurrency"] == concurrency and "result" in r:
            value = r["result"][metric]
            if value is not None and (r["result"]["requests"] > 0):
                by_repeat[r["repeat"]][r["client"]] = value
    values = []
    for pair in by_repeat.values():
        if a in pair and b in pair:
            if how == "ratio":
                if pair[b] > 0:
                    values.append(pair[a] / pair[b])
            else:
                values.append(pair[a] - pair[b])
    return statistics.median(values) if values else None


def http_ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, concurrency): duckagents against direct and against litellm, paired by repeat."""
    keys = sorted({(r["stream"], r["concurrency"]) for r in records})
    out = []
    for stream, concurrency in keys:

        def ratio(
            a: str, b: str, metric: str = "throughput_rps", s: bool = stream, c: int = concurrency
        ) -> Any:
            return _paired(records, s, c, a, b, metric, "ratio")

        out.append(
            {
                "stream": stream,
                "concurrency": concurrency,
                "duckagents_vs_direct_throughput": ratio("duckagents", "direct"),
                "duckagents_added_p50_ms": _paired(
                    records, stream, concurrency, "duckagents", "direct", "p50_ms", "diff"
                ),
                "duckagents_added_ttfc_p50_ms": _paired(
                    records, stream, concurrency, "duckagents", "direct", "ttfc_p50_ms", "diff"
                )
                if stream
                else None,
                "duckagents_vs_direct_cpu": ratio("duckagents", "direct", "cpu_us_per_request"),
                "duckagents_vs_litellm_throughput": ratio("duckagents", "litellm"),
                "litellm_vs_direct_throughput": ratio("litellm", "direct"),
                "duckagents_vs_litellm_cpu": ratio("duckagents", "litellm", "cpu_us_per_request"),
                # HTTP front doors, measured with the direct client (benchmarks/doors.py)
                "door_duckagents_vs_direct_throughput": ratio("door-duckagents", "direct"),
                "door_litellm_vs_direct_throughput": ratio("door-litellm", "direct"),
                "door_duckagents_vs_litellm_throughput": ratio("door-duckagents", "door-litellm"),
                "door_duckagents_added_p50_ms": _paired(
                    records, stream, concurrency, "door-duckagents", "direct", "p50_ms", "diff"
                ),
                "door_litellm_added_p50_ms": _paired(
                    records, stream, concurrency, "door-litellm", "direct", "p50_ms", "diff"
                ),
                # The floor: a bare hypercorn forwarder; duckagents' door over it is what duckagents costs.
                "door_floor_added_p50_ms": _paired(
                    records, stream, concurrency, "door-floor", "direct", "p50_ms", "diff"
                ),
                "door_duckagents_over_floor_p50_ms": _paired(
                    records, stream, concurrency, "door-duckagents", "door-floor", "p50_ms", "diff"
                ),
                "door_duckagents_vs_floor_throughput": ratio("door-duckagents", "door-floor"),
                "door_duckagents_added_ttfc_p50_ms": _paired(
                    records, stream, concurrency, "door-duckagents", "direct", "ttfc_p50_ms", "diff"
                )
                if stream
                else None,
            }
        )
    return out


def find_ratio(ratios: list[dict[str, Any]], stream: bool, concurrency: int, field: str) -> float | None:
    """One figure from :func:`http_ratios`, or None when that combination was not run."""
    for row in ratios:
        if row["stream"] == stream and row["concurrency"] == concurrency:
            value: float | None = row[field]
            return value
    return None


def result_of(record: Any) -> dict[str, Any] | None:
    """A worker record's result, or None when it failed or did not run."""
    if isinstance(record, dict) and "result" in record:
        result: dict[str, Any] = record["result"]
        return result
    return None


def bus_summary(record: Any) -> dict[str, Any] | None:
    """The bus figures plus each fan-out's rate relative to the bare channel hop."""
    result = result_of(record)
    if result is None:
        return None
    hop = result["channel_hop"]["signals_per_s"]
    rows = [{**row, "vs_channel_hop": row["signals_per_s"] / hop} for row in result["bus"]]
    return {**result, "bus": rows, "peak_rss_mib": record["peak_rss_mib"]}


def gateway_summary(records: Any) -> dict[str, Any] | None:
    """Medians over the gateway repeats that succeeded."""
    results = [r for r in (result_of(x) for x in records or []) if r is not None]
    if not results:
        return None
    first = results[0]
    return {
        "clients": first["clients"],
        "signals": first["signals"],
        "repeats": len(results),
        "deliveries_per_s": statistics.median(r["deliveries_per_s"] for r in results),
        "signals_per_s_per_client": statistics.median(r["signals_per_s_per_client"] for r in results),
        "dropped": sum(r["dropped"] for r in results),
        "received": sum(r["received"] for r in results),
    }
