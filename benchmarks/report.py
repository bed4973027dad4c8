"""The benchmark report: markdown tables for stdout (and results/latest.md) and the JSON record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .aggregate import bus_summary, gateway_summary, http_ratios, http_rows, result_of
from .fleet import fleet_summary
from .workload import DOORS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; ``-`` when not measured."""
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _pct(share: float | None) -> str:
    return fmt(None if share is None else 100.0 * share)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _http_section(rows: list[dict[str, Any]], ratios: list[dict[str, Any]], stream: bool) -> str:
    picked = [r for r in rows if r["stream"] is stream and r["client"] not in DOORS]
    if not picked:
        return ""
    share = {(x["concurrency"]): x for x in ratios if x["stream"] is stream}
    body = []
    for r in picked:
        rel = share.get(r["concurrency"], {})
        vs_direct = {
            "direct": "1.00",
            "duckagents": fmt(rel.get("duckagents_vs_direct_throughput"), 2),
            "litellm": fmt(rel.get("litellm_vs_direct_throughput"), 2),
        }[r["client"]]
        errors = str(r["errors"] + r["failed_runs"])
        cells = [str(r["concurrency"]), r["client"], fmt(r["throughput_rps"], 0), vs_direct]
        if stream:
            cells += [fmt(r["ttfc_p50_ms"], 2), fmt(r["ttfc_p99_ms"], 2), fmt(r["chunks_per_s"], 0)]
        cells += [
            fmt(r["p50_ms"], 2),
            fmt(r["p99_ms"], 2),
            fmt(r["cpu_us_per_request"], 0),
            fmt(r["peak_rss_mib"], 1),
            errors,
        ]
        body.append(cells)
    header = ["conc.", "client", "req/s", "vs direct"]
    if stream:
        header += ["TTFC p50 ms", "TTFC p99 ms", "chunks/s"]
    header += ["p50 ms", "p99 ms", "CPU µs/req", "peak RSS MiB", "errors"]
    title = "### HTTP, streaming (20 SSE chunks + usage + [DONE])" if stream else "### HTTP, non-streaming"
    return f"{title}\n\n{table(header, body)}"


def _ratio_section(ratios: list[dict[str, Any]]) -> str:
    ratios = [
        x
        for x in ratios
        if x["duckagents_vs_direct_throughput"] is not None
        or x["duckagents_vs_litellm_throughput"] is not None
    ]
    if not ratios:
        return ""
    body = [
        [
            "stream" if x["stream"] else "json",
            str(x["concurrency"]),
            _pct(x["duckagents_vs_direct_throughput"]),
            fmt(x["duckagents_added_p50_ms"], 3),
            fmt(x["duckagents_added_ttfc_p50_ms"], 3),
            fmt(x["duckagents_vs_direct_cpu"], 2),
            fmt(x["duckagents_vs_litellm_throughput"], 2),
            fmt(x["duckagents_vs_litellm_cpu"], 2),
        ]
        for x in ratios
    ]
    header = [
        "mode",
        "conc.",
        "duckagents % of direct req/s",
        "added p50 ms",
        "added TTFC p50 ms",
        "CPU/req vs direct",
        "x litellm req/s",
        "CPU/req vs litellm",
    ]
    return "### Ratios (median of per-repeat pairs)\n\n" + table(header, body)


def _doors_section(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    """The HTTP front doors: the same HTTP client against nginx, duckagents' door and LiteLLM's proxy."""
    if not any(r["client"] in DOORS for r in rows):
        return ""
    names = {
        "direct": "nginx directly",
        "door-duckagents": "duckagents serve --http",
        "door-litellm": "litellm proxy",
        "door-floor": "floor: bare hypercorn + httpx",
    }
    share = {(x["stream"], x["concurrency"]): x for x in ratios}
    body = []
    for r in rows:
        if r["client"] not in names:
            continue
        rel = share.get((r["stream"], r["concurrency"]), {})
        vs_direct = {
            "direct": "1.00",
            "door-duckagents": fmt(rel.get("door_duckagents_vs_direct_throughput"), 2),
            "door-litellm": fmt(rel.get("door_litellm_vs_direct_throughput"), 2),
            "door-floor": "-",
        }[r["client"]]
        body.append(
            [
                "stream" if r["stream"] else "json",
                str(r["concurrency"]),
                names[r["client"]],
                fmt(r["throughput_rps"], 0),
                vs_direct,
                fmt(r["p50_ms"], 2),
                fmt(r["p99_ms"], 2),
                fmt(r["ttfc_p50_ms"], 2) if r["stream"] else "-",
                fmt(r["server_cpu_us_per_request"], 0),
                fmt(r["server_peak_rss_mib"], 1),
                str(r["errors"] + r["failed_runs"]),
            ]
        )
    header = [
        "mode",
        "conc.",
        "server",
        "req/s",
        "vs direct",
        "p50 ms",
        "p99 ms",
        "TTFC p50 ms",
        "server CPU µs/req",
        "server peak RSS MiB",
        "errors",
    ]
    ratio_rows = [
        [
            "stream" if x["stream"] else "json",
            str(x["concurrency"]),
            fmt(x["door_duckagents_added_p50_ms"], 3),
            fmt(x["door_litellm_added_p50_ms"], 3),
            fmt(x["door_duckagents_vs_litellm_throughput"], 2),
            fmt(x["door_floor_added_p50_ms"], 3),
            fmt(x["door_duckagents_over_floor_p50_ms"], 3),
            fmt(x["door_duckagents_vs_floor_throughput"], 2),
        ]
        for x in ratios
        if x["door_duckagents_added_p50_ms"] is not None or x["door_litellm_added_p50_ms"] is not None
    ]
    ratio_header = [
        "mode",
        "conc.",
        "duckagents door added p50 ms",
        "litellm proxy added p50 ms",
        "x litellm proxy req/s",
        "floor added p50 ms",
        "duckagents over floor p50 ms",
        "x floor req/s",
    ]
    return (
        "### HTTP front doors (one HTTP client: nginx directly, duckagents serve --http -> nginx, "
        "litellm proxy -> nginx, and the floor: a bare hypercorn/Trio forwarder -> nginx, what our HTTP "
        "stack costs before duckagents adds anything)\n\n"
        + table(header, body)
        + "\n\n"
        + table(ratio_header, ratio_rows)
    )


def _internal_section(internal: dict[str, Any]) -> list[str]:
    parts = []
    bus = bus_summary(internal.get("bus"))
    if bus:
        hop = bus["channel_hop"]
        body = [["bare trio memory channel hop", "-", fmt(hop["signals_per_s"], 0), "-", "-", "1.00"]]
        body += [
            [
                "SignalBus.publish",
                str(r["subscribers"]),
                fmt(r["signals_per_s"], 0),
                fmt(r["deliveries_per_s"], 0),
                fmt(r["ns_per_delivery"], 0),
                fmt(r["vs_channel_hop"], 2),
            ]
            for r in bus["bus"]
        ]
        header = ["path", "subscribers", "signals/s", "deliveries/s", "ns/delivery", "vs channel hop"]
        parts.append(
            f"### Signal bus (per CPU-second, median of {bus['repeats']} runs)\n\n" + table(header, body)
        )
    sup = result_of(internal.get("supervisor"))
    if sup:
        body = [
            [name, str(sup[key]["restarts"]), fmt(sup[key]["median_ms"], 3), fmt(sup[key]["p99_ms"], 3)]
            for name, key in (("bare child", "bare"), ("OpenAI provider agent", "agent"))
        ]
        parts.append(
            "### Supervisor restart latency (crash → next incarnation started, no backoff)\n\n"
            + table(["child", "restarts", "median ms", "p99 ms"], body)
        )
    gw = gateway_summary(internal.get("gateway"))
    if gw:
        body = [
            [
                str(gw["clients"]),
                str(gw["signals"]),
                fmt(gw["deliveries_per_s"], 0),
                fmt(gw["signals_per_s_per_client"], 0),
                str(gw["dropped"]),
            ]
        ]
        header = ["WebSocket subscribers", "signals", "deliveries/s", "signals/s per client", "dropped"]
        parts.append(f"### Gateway fan-out (median of {gw['repeats']})\n\n" + table(header, body))
    mem = result_of(internal.get("memory"))
    if mem:
        body = [
            [label, fmt(mem[key][f"traced_kib_per_{unit}"]), fmt(mem[key][f"rss_kib_per_{unit}"], 0)]
            for label, key, unit in (
                ("idle OpenAI agent", "idle_agent", "agent"),
                ("in-flight request, duckagents", "in_flight", "request"),
                ("in-flight request, bare httpx", "in_flight_direct", "request"),
            )
        ]
        parts.append("### Memory\n\n" + table(["what", "tracemalloc KiB each", "RSS KiB each"], body))
    for name in ("bus", "supervisor", "memory"):
        record = internal.get(name)
        if isinstance(record, dict) and "error" in record:
            parts.append(f"**{name} failed:** {record['error']}")
    return parts


def _fleet_section(section: Any) -> str:
    """[fleet] on a loopback redis-server vs in-process, and three replicas against one shared limit."""
    if isinstance(section, dict) and "error" in section and "runs" not in section:
        return f"### Fleet\n\n**fleet section not run:** {section['error']}"
    fleet = fleet_summary(section)
    if fleet is None:
        return ""
    body = [
        [
            str(r["concurrency"]),
            r["arm"],
            fmt(r["throughput_rps"], 0),
            fmt(r["p50_ms"], 3),
            fmt(r["p99_ms"], 2),
            fmt(r["cpu_us_per_request"], 0),
            str(r["errors"]),
            str(r["degraded"]),
        ]
        for r in fleet["rows"]
    ]
    header = ["conc.", "process", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "errors", "degraded"]
    limits = []
    for label, record in (
        ("3 replicas, [fleet]", fleet["shared_limit"]),
        ("3 replicas, no [fleet]", fleet["separate_limits"]),
    ):
        if not isinstance(record, dict) or "error" in record:
            error = record.get("error") if isinstance(record, dict) else "not run"
            limits.append([label, "-", "-", "-", f"failed: {str(error)[:120]}"])
            continue
        replicas = record["replicas"]
        errors, degraded = sum(r["errors"] for r in replicas), sum(r["degraded"] for r in replicas)
        limits.append(
            [
                label,
                str(record["limit_rps"]),
                fmt(record["admitted_rps"], 1),
                fmt(100.0 * record["vs_limit"], 1),
                ", ".join(f"{r['instance']} {r['admitted_in_window']}" for r in replicas)
                + f"; errors {errors}, degraded {degraded}",
            ]
        )
    floor = fleet.get("round_trip") if isinstance(fleet.get("round_trip"), dict) else {}
    side_by_side = table(
        [
            "added p50 ms, c=1",
            "floor: one coredis PING / EVALSHA p50 ms",
            "fleet req/s / in-process, c=32",
            "3 replicas admitted / shared limit",
        ],
        [
            [
                fmt(fleet["added_p50_ms_c1"], 3),
                f"{fmt(floor.get('ping_p50_ms'), 3)} / {fmt(floor.get('evalsha_p50_ms'), 3)}",
                _pct(fleet["throughput_vs_in_process_c32"]) + " %",
                _pct((fleet["shared_limit"] or {}).get("vs_limit")) + " %",
            ]
        ],
    )
    return (
        "### Fleet ([fleet] on a loopback redis-server vs in-process; same upstream, non-streaming)\n\n"
        + side_by_side
        + "\n\n"
        + table(header, body)
        + "\n\n"
        + table(["run", "limit req/s", "admitted req/s", "% of limit", "per replica (in window)"], limits)
    )


def _targets_section(targets: list[dict[str, Any]]) -> str:
    body = [
        [
            t["name"],
            t["target"],
            "-" if t["measured"] is None else f"{fmt(t['measured'], 2)} {t['unit']}",
            {True: "met", False: "**MISSED**", None: "not measured"}[t["met"]],
        ]
        for t in targets
    ]
    return "### Targets (measured, not asserted)\n\n" + table(["target", "goal", "measured", "verdict"], body)


def _profiles_section(profiles: list[dict[str, Any]]) -> str:
    parts = []
    for record in profiles:
        result = result_of(record)
        if result is None:
            parts.append(f"**profile {record.get('key')} failed:** {record.get('error')}")
            continue
        lines = [
            f"#### Profile `{record['key']}` (pyinstrument; % of sampled time: idle {result['idle_pct']}, "
            f"provider HTTP call {result['provider_call_pct']}, agent layer {result['layer_pct']})"
        ]
        for work in result.get("scheduler", []):
            lines.append(
                f"- {work['client']}: {work['task_steps_per_request']:.1f} Trio task steps and "
                f"{work['tasks_spawned_per_request']:.1f} tasks spawned per request"
            )
        for title, field in (
            ("agent layer by package (self)", "layer_by_package"),
            ("agent layer hot spots (self)", "layer_anywhere"),
            ("duckagents functions (self)", "duckagents_self"),
            ("duckagents functions (inclusive)", "duckagents_inclusive"),
            ("everything by package (self)", "self_by_package"),
            ("everything (self)", "self_anywhere"),
        ):
            if result.get(field):
                top = ", ".join(f"`{x['where']}` {x['pct']} %" for x in result[field][:8])
                lines.append(f"- {title}: {top}")
        parts.append("\n".join(lines))
    return "### Profiles of missed targets\n\n" + "\n\n".join(parts) if parts else ""


def render(data: dict[str, Any]) -> str:
    """The whole markdown report."""
    meta = data["meta"]
    rows, ratios = http_rows(data.get("http", [])), http_ratios(data.get("http", []))
    head = [
        "## duckagents benchmarks",
        "",
        f"`{meta.get('command', 'python -m benchmarks')}` — {meta.get('date', '')}, "
        f"{meta.get('machine', '')}; "
        f"upstream: {meta['upstream']['note']}; medians of {meta.get('repeats', '?')} repeat(s), "
        f"{meta.get('duration', '?')} s windows; load average before/after "
        f"{fmt(meta['load_before'][0], 2)}/{fmt(meta.get('load_after', [None])[0], 2)}.",
    ]
    sections = [
        "\n".join(head),
        _http_section(rows, ratios, False),
        _http_section(rows, ratios, True),
        _ratio_section(ratios),
        _doors_section(rows, ratios),
        *_internal_section(data.get("internal", {})),
        _fleet_section(data.get("fleet")),
        _targets_section(data.get("targets", [])),
        _profiles_section(data.get("profiles", [])),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def write(data: dict[str, Any], markdown: str, json_path: Path) -> None:
    """Write the JSON record (raw runs + derived tables) and the markdown next to it."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    derived = {
        "http_rows": http_rows(data.get("http", [])),
        "http_ratios": http_ratios(data.get("http", [])),
        "bus": bus_summary(data.get("internal", {}).get("bus")),
        "gateway": gateway_summary(data.get("internal", {}).get("gateway")),
        "fleet": fleet_summary(data.get("fleet")),
    }
    json_path.write_text(json.dumps({**data, "derived": derived}, indent=1, default=str), encoding="utf-8")
    json_path.with_suffix(".md").write_text(markdown, encoding="utf-8")
