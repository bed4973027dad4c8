"""The fleet section (issue 14): what ``[fleet]`` on a loopback redis-server costs one process, and how
closely three replicas sharing one rate limit keep to it.

* **Overhead.** The ``duckagents`` client (``open_tree`` -> router -> one OpenAI agent -> the upstream,
  non-streaming) with ``[fleet]`` and without, same config otherwise, same upstream, each run in its own
  worker process, the two back to back in an order rotated every repeat. Paired per repeat: the p50
  added by the fleet at c=1 and the fleet's share of the in-process throughput at c=32. In fleet mode
  every request costs one awaited script call (admit) plus its share of a pipelined batch (its verdict,
  its signals appended to the stream).
* **Shared limit.** Three worker processes, each a replica (``[fleet]``, one key prefix, its own
  instance name), each with the same limit (``FLEET_RATE`` requests a second, a bucket of
  ``FLEET_BURST``), each driven closed-loop at ``FLEET_CONCURRENCY`` with a deadline far away (so a
  refused request waits for its turn rather than failing). Successes are counted in one wall-clock
  window that opens after a warm-up (which drains the burst); their sum over the window is the
  fleet's admitted rate, compared with the limit. The same three without ``[fleet]`` show what the
  fleet prevents: each replica spends the whole quota (about three times the limit together).

Without redis-server the section is skipped with a note (the other sections still run).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from ._stats import CallOutcome
from .upstream import PROMPT, Upstream
from .workload import HttpSpec, check_answer

#: The shared limit of the admitted-rate run: requests a second, and the bucket's size.
FLEET_RATE = 100
FLEET_BURST = 20
#: Replicas of the admitted-rate run, and the closed-loop concurrency of each.
FLEET_REPLICAS = 3
FLEET_CONCURRENCY = 16
#: Seconds the replicas' processes get to import and start before the load begins (a loaded machine).
START_ALLOWANCE = 5.0
#: Deadline of every request (far above any wait for a turn in these runs).
REQUEST_TIMEOUT = 60.0

Log = Callable[[str], None]


def fleet_config(redis_url: str, prefix: str, instance: str, replicas: int = 1) -> Any:
    """A ``[fleet]`` section as a user would write it (the defaults for everything else)."""
    from duckagents.config import FleetConfig

    return FleetConfig(redis_url=redis_url, key_prefix=prefix, instance=instance, expected_replicas=replicas)


def _config(base_url: str, fleet: Any, limits: Any = None) -> Any:
    from duckagents.resilience import RateLimits

    from .clients_trio import bench_config

    config = bench_config(base_url)
    if limits is not None:
        assert isinstance(limits, RateLimits)
        config = attrs.evolve(
            config, providers=tuple(attrs.evolve(p, limits=limits) for p in config.providers)
        )
    return attrs.evolve(config, fleet=fleet)


class _Degradations:
    """Counts a replica's moves to degraded (Redis slower than ``[fleet] timeout``, or gone)."""

    def __init__(self, tree: Any) -> None:
        self.count = 0
        replica = tree.fleet
        self._unwatch = replica.watch(self._changed) if replica is not None else (lambda: None)

    def _changed(self, degraded: bool) -> None:
        self.count += degraded

    def close(self) -> None:
        self._unwatch()


# --- worker side: the overhead run -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def _open_client(spec: HttpSpec, fleet: Any, counts: dict[str, Any]) -> AsyncIterator[Any]:
    from duckagents.app import open_tree

    async with open_tree(_config(spec.base_url, fleet)) as tree:
        if tree.fleet is not None:
            await tree.fleet.wait_joined()
        degradations = _Degradations(tree)

        async def complete() -> CallOutcome:
            response = await tree.router.complete(PROMPT, model=spec.model, timeout=REQUEST_TIMEOUT)
            return check_answer(spec, response.content, 0, None)

        try:
            yield complete
        finally:
            degradations.close()
            counts["degraded"] = degradations.count


def run_http_job(params: dict[str, Any]) -> dict[str, Any]:
    """One closed-loop run of the duckagents client, with ``[fleet]`` when ``redis_url`` is given."""
    import trio

    from .loadgen_trio import run_load

    spec = HttpSpec.from_dict(params["spec"])
    redis_url = params.get("redis_url")
    fleet = None if redis_url is None else fleet_config(redis_url, params["prefix"], "bench")

    async def main() -> dict[str, Any]:
        counts: dict[str, Any] = {}
        async with _open_client(spec, fleet, counts) as call:
            summary = await run_load(call, spec.concurrency, spec.window)
        return {**summary, **counts}

    return trio.run(main)


# --- worker side: one replica of the shared-limit run ----------------------------------------------


def run_replica(params: dict[str, Any]) -> dict[str, Any]:
    """One replica: from wall-clock ``start_at`` until ``end_at``, ``concurrency`` tasks send requests back
    to back; returns how many succeeded within [``window_from``, ``window_to``] (wall clock)."""
    import trio

    from duckagents.app import open_tree
    from duckagents.resilience import RateLimits

    rate, burst = params["rate"], params["burst"]
    limits = RateLimits(requests=burst, period=burst / rate)
    redis_url = params.get("redis_url")
    fleet = None
    if redis_url is not None:
        fleet = fleet_config(redis_url, params["prefix"], params["instance"], params["replicas"])
    config = _config(params["json_base"], fleet, limits)

    async def main() -> dict[str, Any]:
        finished: list[float] = []
        errors: list[str] = []
        async with open_tree(config) as tree:
            if tree.fleet is not None:
                with trio.move_on_after(START_ALLOWANCE):
                    await tree.fleet.wait_joined()
            degradations = _Degradations(tree)
            late = max(0.0, time.time() - params["start_at"])
            await trio.sleep(max(0.0, params["start_at"] - time.time()))

            async def worker() -> None:
                while time.time() < params["end_at"]:
                    try:
                        await tree.router.complete(PROMPT, timeout=REQUEST_TIMEOUT)
                        finished.append(time.time())
                    except Exception as exc:  # counted: the report shows errors
                        if len(errors) < 1000:
                            errors.append(f"{type(exc).__name__}: {exc}"[:200])

            with trio.move_on_at(trio.current_time() + params["end_at"] - time.time()):
                async with trio.open_nursery() as nursery:
                    for _ in range(params["concurrency"]):
                        nursery.start_soon(worker)
            degradations.close()
        inside = [t for t in finished if params["window_from"] <= t <= params["window_to"]]
        return {
            "instance": params["instance"],
            "admitted_in_window": len(inside),
            "completed": len(finished),
            "errors": len(errors),
            "error_examples": errors[:2],
            "started_late_s": late,
            "degraded": degradations.count,
        }

    return trio.run(main)


# --- orchestrator side -----------------------------------------------------------------------------


#: Calls timed by the round-trip floor.
ROUND_TRIPS = 2000


def run_round_trip(params: dict[str, Any]) -> dict[str, Any]:
    """The floor under the fleet's added latency: one awaited coredis round trip from Trio (``PING``,
    and ``EVALSHA`` of a script that does nothing), timed one at a time. An admit cannot cost less."""
    import coredis
    import trio

    async def main() -> dict[str, Any]:
        client: Any = coredis.Redis.from_url(params["redis_url"], decode_responses=True)
        out: dict[str, Any] = {}
        async with client:
            script = client.register_script("return {ARGV[1]}")
            calls = {"ping": lambda: client.ping(), "evalsha": lambda: script(keys=["{b}:k"], args=["1"])}
            for name, call in calls.items():
                for _ in range(100):
                    await call()
                times = []
                for _ in range(ROUND_TRIPS):
                    started = time.perf_counter()
                    await call()
                    times.append(time.perf_counter() - started)
                out[f"{name}_p50_ms"] = 1000 * statistics.median(times)
        return out

    result: dict[str, Any] = trio.run(main)
    return result


def _rotated(items: list[str], shift: int) -> list[str]:
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def _shared_limit(
    upstream: Upstream, redis_url: str | None, warmup: float, duration: float, run_worker: Callable[..., Any]
) -> dict[str, Any]:
    """Three replicas at once against one limit (``redis_url``: as a fleet; None: each on its own)."""
    start_at = time.time() + START_ALLOWANCE
    window_from = start_at + warmup
    window_to = window_from + duration
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    jobs = [
        {
            "kind": "fleet_replica",
            "params": {
                "json_base": upstream.json_base,
                "redis_url": redis_url,
                "prefix": prefix,
                "instance": f"r{n}",
                "replicas": FLEET_REPLICAS,
                "rate": FLEET_RATE,
                "burst": FLEET_BURST,
                "concurrency": FLEET_CONCURRENCY,
                "start_at": start_at,
                "end_at": window_to + 0.2,
                "window_from": window_from,
                "window_to": window_to,
            },
        }
        for n in range(FLEET_REPLICAS)
    ]
    with ThreadPoolExecutor(FLEET_REPLICAS) as pool:
        records = list(pool.map(run_worker, jobs))
    results = [r.get("result") for r in records]
    if not all(results):
        return {"error": "; ".join(str(r.get("error")) for r in records if "error" in r)}
    admitted = sum(r["admitted_in_window"] for r in results)
    return {
        "fleet": redis_url is not None,
        "limit_rps": FLEET_RATE,
        "window_s": duration,
        "admitted_rps": admitted / duration,
        "vs_limit": admitted / duration / FLEET_RATE,
        "replicas": results,
    }


def run_fleet_section(
    upstream: Upstream,
    *,
    repeats: int,
    warmup: float,
    duration: float,
    log: Log,
    run_worker: Callable[..., Any],
) -> dict[str, Any]:
    """Both parts of the section (see the module docstring); the raw records and the paired figures."""
    from duckagents.testing import RedisServer, redis_server_path

    if redis_server_path() is None:
        log(
            "note: redis-server is not installed (apt-get install -y redis-server): "
            "skipping the fleet section"
        )
        return {"error": "redis-server not installed"}
    with RedisServer() as redis:
        log(f"  fleet: redis-server {redis.url} (loopback), one process with [fleet] vs in-process")
        runs: list[dict[str, Any]] = []
        for repeat in range(repeats):
            for concurrency in (1, 32):
                for arm in _rotated(["in-process", "fleet"], repeat):
                    spec = HttpSpec(
                        client="duckagents",
                        concurrency=concurrency,
                        stream=False,
                        json_base=upstream.json_base,
                        sse_base=upstream.sse_base,
                        warmup=warmup,
                        duration=duration,
                        min_requests=concurrency + 50,
                        expected_text=upstream.expected_text,
                    )
                    params = {
                        "spec": spec.to_dict(),
                        "redis_url": redis.url if arm == "fleet" else None,
                        "prefix": f"bench-{uuid.uuid4().hex[:12]}",
                    }
                    record = run_worker({"kind": "fleet_http", "params": params})
                    record.update(arm=arm, concurrency=concurrency, repeat=repeat)
                    log(_progress(record))
                    runs.append(record)
        window = max(duration, 1.0)
        log(
            f"  fleet: {FLEET_REPLICAS} replicas against one limit of {FLEET_RATE} req/s, {window:g} s window"
        )
        floor = run_worker({"kind": "fleet_round_trip", "params": {"redis_url": redis.url}})
        floor = floor.get("result", floor)
        log(f"  fleet: one coredis round trip from Trio (p50 ms): {floor}")
        shared = _shared_limit(upstream, redis.url, max(warmup, 1.0), window, run_worker)
        log(f"    with [fleet]: {_admitted(shared)}")
        separate = _shared_limit(upstream, None, max(warmup, 1.0), window, run_worker)
        log(f"    without:      {_admitted(separate)}")
    return {"runs": runs, "round_trip": floor, "shared_limit": shared, "separate_limits": separate}


def _progress(record: dict[str, Any]) -> str:
    head = f"    {record['arm']:<10} c={record['concurrency']:<3} #{record['repeat'] + 1}"
    if "error" in record:
        return f"{head}  ERROR {record['error'][:200]}"
    r = record["result"]
    p50 = r["p50_ms"]
    return (
        f"{head}  {r['throughput_rps']:7.0f} req/s  p50 {p50 if p50 is None else round(p50, 3)} ms  "
        f"errors {r['errors']}  degraded {r.get('degraded', 0)}"
    )


def _admitted(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"ERROR {record['error'][:200]}"
    return f"{record['admitted_rps']:.1f} req/s admitted ({100 * record['vs_limit']:.1f} % of the limit)"


def fleet_summary(section: Any) -> dict[str, Any] | None:
    """The figures of the section: per arm and concurrency medians, paired ratios, the admitted rates."""
    if not isinstance(section, dict) or "runs" not in section:
        return None
    runs = [r for r in section["runs"] if "result" in r]

    def median(arm: str, concurrency: int, metric: str) -> float | None:
        values = [r["result"][metric] for r in runs if r["arm"] == arm and r["concurrency"] == concurrency]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def paired(concurrency: int, metric: str, how: str) -> float | None:
        by_repeat: dict[int, dict[str, float]] = {}
        for r in runs:
            if r["concurrency"] == concurrency and r["result"][metric] is not None:
                by_repeat.setdefault(r["repeat"], {})[r["arm"]] = r["result"][metric]
        values = []
        for pair in by_repeat.values():
            if "fleet" in pair and "in-process" in pair:
                if how == "diff":
                    values.append(pair["fleet"] - pair["in-process"])
                elif pair["in-process"] > 0:
                    values.append(pair["fleet"] / pair["in-process"])
        return statistics.median(values) if values else None

    rows = [
        {
            "arm": arm,
            "concurrency": c,
            "throughput_rps": median(arm, c, "throughput_rps"),
            "p50_ms": median(arm, c, "p50_ms"),
            "p99_ms": median(arm, c, "p99_ms"),
            "cpu_us_per_request": median(arm, c, "cpu_us_per_request"),
            "errors": sum(r["result"]["errors"] for r in runs if r["arm"] == arm and r["concurrency"] == c),
            "degraded": sum(
                r["result"].get("degraded", 0) for r in runs if r["arm"] == arm and r["concurrency"] == c
            ),
        }
        for c in (1, 32)
        for arm in ("in-process", "fleet")
    ]
    return {
        "rows": rows,
        "added_p50_ms_c1": paired(1, "p50_ms", "diff"),
        "throughput_vs_in_process_c32": paired(32, "throughput_rps", "ratio"),
        "shared_limit": section.get("shared_limit"),
        "separate_limits": section.get("separate_limits"),
        "round_trip": section.get("round_trip"),
        "failed_runs": len(section["runs"]) - len(runs),
    }
