"""The performance targets of the benchmarks issue, checked against measured figures (never asserted).

Each verdict is ``met`` True/False, or None when the figure was not measured in this run. A missed
target names the profile (:mod:`benchmarks.profiling`) that explains it.
"""

from __future__ import annotations

from typing import Any

from .aggregate import bus_summary, find_ratio, http_ratios, result_of
from .fleet import fleet_summary

#: Fan-out counts as linear when one delivery to 100 subscribers costs at most this much more than one
#: delivery to 10 (a superlinear bus would grow per-delivery cost with the subscriber count).
LINEAR_SLACK = 1.25


def _verdict(
    name: str, target: str, measured: float | None, ok: bool | None, unit: str, profile: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "target": target,
        "measured": measured,
        "unit": unit,
        "met": ok,
        "profile": profile,
    }


def _at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def _at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def evaluate(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target's verdict from the raw run data (see :func:`benchmarks.runner.collect`)."""
    ratios = http_ratios(data.get("http", []))
    verdicts = []
    for stream, mode in ((False, "non-streaming"), (True, "streaming")):
        key = "stream" if stream else "json"
        share = find_ratio(ratios, stream, 32, "duckagents_vs_direct_throughput")
        verdicts.append(
            _verdict(
                f"duckagents throughput vs direct, c=32, {mode}",
                ">= 90 %",
                None if share is None else 100.0 * share,
                _at_least(share, 0.90),
                "%",
                f"http:{key}:32",
            )
        )
        added = find_ratio(ratios, stream, 1, "duckagents_added_p50_ms")
        verdicts.append(
            _verdict(
                f"duckagents added p50 latency, c=1, {mode}",
                "<= 0.2 ms",
                added,
                _at_most(added, 0.2),
                "ms",
                f"http:{key}:1",
            )
        )
        times = find_ratio(ratios, stream, 32, "duckagents_vs_litellm_throughput")
        verdicts.append(
            _verdict(
                f"duckagents throughput vs litellm.Router, c=32, {mode}",
                ">= 4x",
                times,
                _at_least(times, 4.0),
                "x",
                f"http:{key}:32",
            )
        )
    for stream, mode in ((False, "non-streaming"), (True, "streaming")):
        added = find_ratio(ratios, stream, 1, "door_duckagents_added_p50_ms")
        verdicts.append(
            _verdict(
                f"front door (serve --http) added p50 latency over nginx, c=1, {mode}",
                "<= 1 ms",
                added,
                _at_most(added, 1.0),
                "ms",
            )
        )
        times = find_ratio(ratios, stream, 32, "door_duckagents_vs_litellm_throughput")
        verdicts.append(
            _verdict(
                f"front door throughput vs LiteLLM proxy, c=32, {mode}",
                ">= 3x",
                times,
                _at_least(times, 3.0),
                "x",
            )
        )
    bus = bus_summary(data.get("internal", {}).get("bus"))
    one = next((r for r in bus["bus"] if r["subscribers"] == 1), None) if bus else None
    share = None if one is None else one["vs_channel_hop"]
    verdicts.append(
        _verdict(
            "bus publish to 1 subscriber vs bare channel hop",
            ">= 50 %",
            None if share is None else 100.0 * share,
            _at_least(share, 0.5),
            "%",
        )
    )
    per = {r["subscribers"]: r["ns_per_delivery"] for r in bus["bus"]} if bus else {}
    growth = per[100] / per[10] if 10 in per and 100 in per else None
    verdicts.append(
        _verdict(
            "bus fan-out linear: cost per delivery at 100 subscribers / at 10",
            f"<= {LINEAR_SLACK}",
            growth,
            _at_most(growth, LINEAR_SLACK),
            "x",
        )
    )
    supervisor = result_of(data.get("internal", {}).get("supervisor"))
    restart = supervisor["agent"]["median_ms"] if supervisor else None
    verdicts.append(
        _verdict(
            "restart of a crashed provider agent (median)",
            "< 5 ms",
            restart,
            None if restart is None else restart < 5.0,
            "ms",
            "restart",
        )
    )
    verdicts += _fleet_verdicts(fleet_summary(data.get("fleet")))
    return verdicts


def _fleet_verdicts(fleet: dict[str, Any] | None) -> list[dict[str, Any]]:
    added = None if fleet is None else fleet["added_p50_ms_c1"]
    share = None if fleet is None else fleet["throughput_vs_in_process_c32"]
    shared = None if fleet is None else fleet["shared_limit"]
    vs_limit = shared.get("vs_limit") if isinstance(shared, dict) else None
    off = None if vs_limit is None else abs(vs_limit - 1.0)
    return [
        _verdict(
            "[fleet] added p50 latency vs in-process, c=1", "<= 0.3 ms", added, _at_most(added, 0.3), "ms"
        ),
        _verdict(
            "[fleet] throughput vs in-process, c=32",
            ">= 70 %",
            None if share is None else 100.0 * share,
            _at_least(share, 0.70),
            "%",
        ),
        _verdict(
            "3 replicas' admitted rate vs their shared limit (distance)",
            "within 5 %",
            None if off is None else 100.0 * off,
            _at_most(off, 0.05),
            "%",
        ),
    ]
