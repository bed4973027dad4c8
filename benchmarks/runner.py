"""The orchestrator: start the upstream, run every selected scenario in its own worker process, repeat,
and collect the raw records for :mod:`benchmarks.report`.

HTTP workloads of one repeat run side by side: for each (mode, concurrency) the clients run back to back,
in an order rotated every repeat, so slow drifts of a shared machine hit every client alike.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs

from .clients_litellm import available as litellm_available
from .doors import Door, cpu_seconds, model_for, run_door_floor, run_duckagents_door, run_litellm_proxy
from .doors import peak_rss_mib as doors_peak_rss
from .fleet import run_fleet_section
from .upstream import MODEL, Upstream, open_upstream, run_loopback
from .workload import CLIENTS, HttpSpec

ROOT = Path(__file__).resolve().parent.parent
HTTP_SCENARIOS = CLIENTS
INTERNAL_SCENARIOS = ("bus", "supervisor", "gateway", "memory")
#: ``[fleet]`` on a loopback redis-server (benchmarks/fleet.py).
FLEET_SCENARIOS = ("fleet",)
ALL_SCENARIOS = (*HTTP_SCENARIOS, *INTERNAL_SCENARIOS, *FLEET_SCENARIOS)
WORKER_TIMEOUT = 300.0

Log = Callable[[str], None]


@attrs.frozen
class Settings:
    """What to run and how long; built from the command line by :mod:`benchmarks.__main__`."""

    scenarios: tuple[str, ...] = ALL_SCENARIOS
    concurrency: tuple[int, ...] = (1, 32, 256)
    modes: tuple[bool, ...] = (False, True)  # stream?
    repeats: int = 3
    warmup: float = 0.5
    duration: float = 2.5
    max_requests: int | None = None
    upstream: str = "auto"
    bus_deliveries: int = 100_000
    bus_repeats: int = 5
    restarts: int = 400
    gateway_clients: int = 100
    gateway_signals: int = 500
    memory_agents: int = 50
    memory_in_flight: int = 256
    profile: str = "auto"  # auto | always | never

    def http_clients(self) -> tuple[str, ...]:
        """The selected HTTP clients, in canonical order."""
        return tuple(c for c in HTTP_SCENARIOS if c in self.scenarios)


def run_worker(job: dict[str, Any], timeout: float = WORKER_TIMEOUT) -> dict[str, Any]:
    """Run one job in a fresh ``python -m benchmarks.worker`` process; return its record.

    A failed worker yields ``{"error": ...}`` instead of raising, so one broken scenario does not lose
    the others' numbers.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", json.dumps(job)],
            cwd=str(ROOT),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"error": f"worker exited {proc.returncode}: " + " | ".join(tail)}
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def _rotated(items: Sequence[str], shift: int) -> list[str]:
    if not items:
        return []
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def _start_doors(clients: list[str], upstream: Upstream, stack: ExitStack, log: Log) -> dict[str, Door]:
    """Start the front doors among ``clients`` (dropping those that cannot start, with a note)."""
    doors: dict[str, Door] = {}
    openers = (
        ("door-duckagents", run_duckagents_door),
        ("door-litellm", run_litellm_proxy),
        ("door-floor", run_door_floor),
    )
    for client, opener in openers:
        if client not in clients:
            continue
        try:
            doors[client] = stack.enter_context(opener(upstream))
        except RuntimeError as exc:
            log(f"note: {client} unavailable, skipped: {exc}")
            clients.remove(client)
            continue
        log(f"  {client}: {doors[client].note} at {doors[client].base_url}")
    return doors


def run_http(settings: Settings, upstream: Upstream, log: Log) -> list[dict[str, Any]]:
    """Every selected HTTP client x mode x concurrency x repeat; one record each.

    Front doors run as servers for the whole section; their records add the server's CPU per request
    (``server_cpu_us_per_request``) and its peak RSS so far (``server_peak_rss_mib``).
    """
    clients = list(settings.http_clients())
    if "litellm" in clients and not litellm_available():
        log("note: litellm is not installed (pip install litellm): skipping the litellm scenario")
        clients.remove("litellm")
    records = []
    with ExitStack() as stack:
        doors = _start_doors(clients, upstream, stack, log)
        for repeat in range(settings.repeats):
            for stream in settings.modes:
                for concurrency in settings.concurrency:
                    for client in _rotated(clients, repeat):
                        door = doors.get(client)
                        spec = HttpSpec(
                            client=client,  # type: ignore[arg-type]
                            concurrency=concurrency,
                            stream=stream,
                            json_base=upstream.json_base if door is None else door.base_url,
                            sse_base=upstream.sse_base if door is None else door.base_url,
                            warmup=settings.warmup,
                            duration=settings.duration,
                            max_requests=settings.max_requests,
                            min_requests=0 if settings.max_requests else concurrency + 50,
                            expected_text=upstream.expected_text,
                            expected_chunks=upstream.expected_chunks,
                            model=MODEL if door is None else model_for(stream),
                        )
                        cpu_before = cpu_seconds(door.pid) if door is not None else None
                        record = run_worker({"kind": "http", "params": spec.to_dict()})
                        record.update(client=client, stream=stream, concurrency=concurrency, repeat=repeat)
                        if door is not None:
                            _server_figures(record, door, cpu_before)
                        log(_progress(record))
                        records.append(record)
    return records


def _server_figures(record: dict[str, Any], door: Door, cpu_before: float | None) -> None:
    cpu_after = cpu_seconds(door.pid)
    result = record.get("result")
    record["server_peak_rss_mib"] = doors_peak_rss(door.pid)
    record["server_cpu_us_per_request"] = None
    if result and cpu_before is not None and cpu_after is not None:
        # Every request the server saw in the run: warm-up, measured, failed (stragglers cut at the end of
        # the window are not counted, which errs on the server's side by at most ``concurrency``).
        served = result["warmup_requests"] + result["requests"] + result["errors"]
        if served:
            record["server_cpu_us_per_request"] = (cpu_after - cpu_before) * 1e6 / served


def _progress(record: dict[str, Any]) -> str:
    head = (
        f"  {record['client']:<10} {'stream' if record['stream'] else 'json':<6} "
        f"c={record['concurrency']:<4} #{record['repeat'] + 1}"
    )
    if "error" in record:
        return f"{head}  ERROR {record['error'][:200]}"
    r = record["result"]
    p50 = r["p50_ms"]
    return (
        f"{head}  {r['throughput_rps']:8.0f} req/s  p50 {p50 if p50 is None else round(p50, 2)} ms  "
        f"errors {r['errors']}  rss {record['peak_rss_mib']:.0f} MiB"
    )


def run_internal(settings: Settings, upstream: Upstream, log: Log) -> dict[str, Any]:
    """The internal scenarios that are selected; each record (or error) by scenario name."""
    out: dict[str, Any] = {}
    if "bus" in settings.scenarios:
        log("  bus: signal bus vs bare channel hop")
        params: dict[str, Any] = {"deliveries": settings.bus_deliveries, "repeats": settings.bus_repeats}
        out["bus"] = run_worker({"kind": "bus", "params": params})
    if "supervisor" in settings.scenarios:
        log("  supervisor: restart latency of a crashed child")
        out["supervisor"] = run_worker({"kind": "supervisor", "params": {"restarts": settings.restarts}})
    if "gateway" in settings.scenarios:
        log(f"  gateway: fan-out to {settings.gateway_clients} WebSocket subscribers")
        params = {"clients": settings.gateway_clients, "signals": settings.gateway_signals}
        out["gateway"] = [
            run_worker({"kind": "gateway", "params": params}) for _ in range(max(1, settings.repeats))
        ]
    if "memory" in settings.scenarios:
        log("  memory: per idle agent and per in-flight request (tracemalloc)")
        with run_loopback(hang=2 * settings.memory_in_flight + 16) as hanging:
            params = {
                "json_base": upstream.json_base,
                "hang_base": hanging.json_base,
                "agents": settings.memory_agents,
                "in_flight": settings.memory_in_flight,
            }
            out["memory"] = run_worker({"kind": "memory", "params": params})
    return out


def run_profiles(
    targets: list[dict[str, Any]], settings: Settings, upstream: Upstream, log: Log
) -> list[Any]:
    """Profile the scenarios behind missed targets (or all of them with ``profile="always"``)."""
    if settings.profile == "never":
        return []
    if importlib.util.find_spec("pyinstrument") is None:
        log("note: pyinstrument is not installed (pip install pyinstrument): no profiles of missed targets")
        return []
    wanted = {
        t["profile"]
        for t in targets
        if t.get("profile") and (settings.profile == "always" or t["met"] is False)
    }
    profiles = []
    for key in sorted(wanted):
        kind, _, rest = key.partition(":")
        if kind == "http":
            mode, concurrency = rest.split(":")
            spec = HttpSpec(
                client="duckagents",
                concurrency=int(concurrency),
                stream=mode == "stream",
                json_base=upstream.json_base,
                sse_base=upstream.sse_base,
                warmup=settings.warmup,
                duration=settings.duration,
                expected_text=upstream.expected_text,
                expected_chunks=upstream.expected_chunks,
            )
            params: dict[str, Any] = {"target": "http", "spec": spec.to_dict()}
        else:
            params = {"target": "restart", "restarts": max(20, settings.restarts // 4)}
        log(f"  profiling {key} (pyinstrument)")
        record = run_worker({"kind": "profile", "params": params})
        record["key"] = key
        profiles.append(record)
    return profiles


def collect(
    settings: Settings, log: Log, evaluate: Callable[[dict[str, Any]], list[dict[str, Any]]]
) -> dict[str, Any]:
    """Run everything selected; return the raw data (``meta``, ``http``, ``internal``, ``profiles``).

    ``evaluate`` turns the data so far into target verdicts, used to decide what to profile.
    """
    started = time.time()
    data: dict[str, Any] = {"meta": {"load_before": os.getloadavg()}}
    with open_upstream(settings.upstream) as upstream:  # type: ignore[arg-type]
        data["meta"]["upstream"] = attrs.asdict(upstream)
        log(f"upstream: {upstream.note} at {upstream.json_base.rsplit('/', 2)[0]}")
        if settings.http_clients():
            log("HTTP scenarios")
            data["http"] = run_http(settings, upstream, log)
        else:
            data["http"] = []
        if any(s in settings.scenarios for s in INTERNAL_SCENARIOS):
            log("internal scenarios")
        data["internal"] = run_internal(settings, upstream, log)
        if "fleet" in settings.scenarios:
            log("fleet scenarios")
            data["fleet"] = run_fleet_section(
                upstream,
                repeats=settings.repeats,
                warmup=settings.warmup,
                duration=settings.duration,
                log=log,
                run_worker=run_worker,
            )
        data["targets"] = evaluate(data)
        data["profiles"] = run_profiles(data["targets"], settings, upstream, log)
    data["meta"]["load_after"] = os.getloadavg()
    data["meta"]["elapsed_s"] = time.time() - started
    return data
