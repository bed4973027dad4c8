"""One measured scenario in its own process: ``python -m benchmarks.worker '<job json>'``.

A job is ``{"kind": ..., "params": {...}}``. The worker imports only what that scenario needs, runs it,
and prints one JSON line: ``{"result": ..., "peak_rss_mib": ..., "start_rss_mib": ...}``. Running each
scenario in a fresh process is what makes the peak RSS figures comparable.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from ._stats import current_rss_mib, peak_rss_mib

#: kind -> "module:function"; each function takes the params dict and returns plain JSON data.
SCENARIOS: dict[str, str] = {
    "http": "benchmarks.worker:run_http_job",
    "bus": "benchmarks.internal_bus:run",
    "supervisor": "benchmarks.internal_supervision:run",
    "gateway": "benchmarks.internal_gateway:run",
    "memory": "benchmarks.internal_memory:run",
    "profile": "benchmarks.profiling:run",
    "fleet_http": "benchmarks.fleet:run_http_job",
    "fleet_replica": "benchmarks.fleet:run_replica",
    "fleet_round_trip": "benchmarks.fleet:run_round_trip",
}


def run_http_job(params: dict[str, Any]) -> dict[str, Any]:
    """An HTTP workload: Trio for ``direct``/``duckagents``, asyncio for ``litellm``."""
    from .workload import HttpSpec

    spec = HttpSpec.from_dict(params)
    if spec.client == "litellm":
        from . import clients_litellm

        return clients_litellm.run_http(spec)
    import trio

    from . import clients_trio

    return trio.run(clients_trio.run_http, spec)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this process and return the worker's output record."""
    kind = job["kind"]
    if kind not in SCENARIOS:
        raise ValueError(f"unknown scenario kind {kind!r}; known: {', '.join(SCENARIOS)}")
    module_name, _, func_name = SCENARIOS[kind].partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    start_rss = current_rss_mib()
    result = func(job.get("params", {}))
    return {"result": result, "peak_rss_mib": peak_rss_mib(), "start_rss_mib": start_rss}


def main(argv: list[str] | None = None) -> int:
    """Entry point: the job is the single argument, the record goes to stdout as the last line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.worker '<job json>'", file=sys.stderr)
        return 2
    record = run_job(json.loads(args[0]))
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
