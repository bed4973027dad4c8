"""``python -m benchmarks soak``: a bounded soak run — does memory stay flat under long mixed traffic?

This process runs the whole service — the tree (router, six agents, per-agent supervisors) and the
WebSocket gateway — and drives it for ``--duration`` seconds (10 minutes by default):

* in-process callers at ``--concurrency``: plain and streamed completions, requests pinned to an HTTP
  agent (OpenAI wire format, against duckagents.testing's loopback server in another process), large
  prompts (``--large-kib``, 256 KiB by default), poison inputs refused at the router's door (a lone
  surrogate, a 5,000-digit ``max_tokens``, NaN in a tool schema), ``submit()`` + ``bus.expect``, streams
  abandoned after their first chunk (cancellations), and requests whose deadline a slow agent misses;
* faults, one every ``--fault-interval`` seconds, in turn: a burst of 5xx (the breaker opens and closes),
  an agent crash (``AgentFault``: crash, answers, restart), provider bugs (contained as ``internal``),
  upstream 429s with ``retry-after``;
* gateway clients in another process (:mod:`benchmarks.soak_clients`): subscribers to every signal, like
  ``duckagents watch``, and requesters using the ``request`` op.

RSS is sampled through the run; the figures compared are RSS right after the warm-up (``--warmup``,
default a tenth of the run, at least 20 s) and RSS at the end, both under traffic, each the mean of five
samples over a second taken after a ``gc.collect()``. ``--tracemalloc`` also lists where the Python
heap grew between those two points (slower; for hunting a leak). The run ends with the graceful stop
(``gateway.close_intake``, ``Tree.drain``, ``gateway.aclose``) and checks its invariants: nothing left in
flight anywhere, every caller got an answer, every gateway client saw 1001. Exit status 1 when the growth
exceeds ``--max-growth`` percent (10) or an invariant fails. Prints a markdown report (``--json`` also
writes the figures).

tracemalloc's own bookkeeping inflates RSS: compare RSS figures from runs without ``--tracemalloc``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import random
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from duckagents.app import Tree, open_tree
from duckagents.config import Config, GatewayConfig, ProviderConfig, RouterConfig, SupervisionConfig
from duckagents.errors import ErrorKind, ProviderError
from duckagents.gateway import open_gateway
from duckagents.messages import Features, Message, ToolSpec
from duckagents.providers import Latency, MockProvider
from duckagents.resilience import BreakerConfig
from duckagents.signals import ProviderRequest, ProviderResponse, new_id

from ._stats import current_rss_mib
from .clients_trio import DUMMY_KEY, KEY_ENV
from .upstream import MODEL, run_loopback

ROOT = Path(__file__).resolve().parent.parent
#: Weights of the in-process traffic kinds.
MIX: dict[str, int] = {
    "complete": 36,
    "stream": 18,
    "http": 14,
    "submit": 8,
    "abandon": 6,
    "large": 4,
    "poison": 6,
    "deadline": 4,
    "pinned": 6,
}
SAMPLES = 20
#: Samples averaged for the compared figures (over one second).
RSS_SAMPLES = 5


@attrs.frozen
class SoakSettings:
    """How long and how hard the soak runs."""

    duration: float = 600.0
    warmup: float | None = None
    concurrency: int = 24
    subscribers: int = 4
    requesters: int = 2
    large_kib: int = 256
    fault_interval: float = 5.0
    max_growth: float = 10.0
    seed: int = 1
    tracemalloc: bool = False

    @property
    def warmup_seconds(self) -> float:
        """The warm-up: as given, else a tenth of the run but at least 20 s (the bounded caches fill up
        first: frame cache, mock and server records...), at most half of the run."""
        if self.warmup is not None:
            return self.warmup
        return min(max(20.0, self.duration / 10), self.duration / 2)


@attrs.define
class Tally:
    """Outcomes of the in-process traffic."""

    outcomes: Counter[str] = attrs.field(factory=Counter)
    by_kind: Counter[str] = attrs.field(factory=Counter)
    bugs: list[str] = attrs.field(factory=list)
    faults: Counter[str] = attrs.field(factory=Counter)


def _mocks() -> dict[str, MockProvider]:
    jitter = Latency("uniform", 0.0, 0.005)
    # Room for the large prompts (the default mock window is 32k tokens).
    big = Features(tools=True, vision=True, json_mode=True, context_window=1_000_000)
    return {
        "fast": MockProvider(latency=jitter, seed=1, chunk_size=8, features=big),
        "flaky": MockProvider(latency=jitter, seed=2, features=big),
        "crashy": MockProvider(latency=jitter, seed=3),
        "buggy": MockProvider(latency=jitter, seed=4),
        "slow": MockProvider(latency=2.0),
    }


def soak_config(http_base: str) -> Config:
    """The tree of the soak: an HTTP agent, five mocks, generous agent budgets (a crash every few
    seconds must not exhaust them: the run measures memory, not give-ups), a gateway on a free port."""
    import os

    os.environ.setdefault(KEY_ENV, DUMMY_KEY)
    mock = {"kind": "mock"}
    return Config(
        providers=(
            ProviderConfig(
                name="http", kind="openai", base_url=http_base, api_key_env=KEY_ENV, models=(MODEL,),
                default_model=MODEL, priority=1,
            ),
            ProviderConfig(name="fast", priority=0, **mock),  # type: ignore[arg-type]
            ProviderConfig(
                name="flaky", priority=0, breaker=BreakerConfig(failure_threshold=5, open_timeout=1.0),
                **mock,  # type: ignore[arg-type]
            ),
            ProviderConfig(name="crashy", priority=2, **mock),  # type: ignore[arg-type]
            ProviderConfig(name="buggy", priority=2, **mock),  # type: ignore[arg-type]
            ProviderConfig(name="slow", priority=9, timeout=30.0, **mock),  # type: ignore[arg-type]
        ),
        router=RouterConfig(backoff_initial=0.01, backoff_max=0.2, request_timeout=30.0),
        gateway=GatewayConfig(enabled=True, port=0),
        supervision=SupervisionConfig(agent_max_restarts=1000, agent_period=60.0, agent_backoff_initial=0.05),
        health_interval=5.0,
    )


class Soak:
    """One soak run (see the module docstring)."""

    def __init__(self, settings: SoakSettings, tree: Tree, mocks: dict[str, MockProvider]) -> None:
        self.settings = settings
        self.tree = tree
        self.mocks = mocks
        self.tally = Tally()
        self.rng = random.Random(settings.seed)
        self.kinds = list(MIX)
        self.weights = [MIX[k] for k in self.kinds]
        self.started = 0
        self.samples: list[tuple[float, float]] = []
        #: Set when the run is over: callers finish the request in hand and stop.
        self.stopping = False
        self.done = trio.Semaphore(0)

    async def worker(self, index: int) -> None:
        """Issue requests of random kinds, one after the other, until the run is over."""
        try:
            await self._work(index)
        finally:
            self.done.release()

    async def _work(self, index: int) -> None:
        while not self.stopping:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            self.started += 1
            self.tally.by_kind[kind] += 1
            try:
                await getattr(self, f"_{kind}")(f"w{index}-{self.started}")
                self.tally.outcomes["ok"] += 1
            except ProviderError as exc:
                self.tally.outcomes[exc.kind.value] += 1
            except Exception as exc:  # a bug: the soak fails
                self.tally.bugs.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
                self.tally.outcomes["bug"] += 1

    def _prompt(self, tag: str) -> str:
        return f"soak {tag}: tell me about ducks, please"

    async def _complete(self, tag: str) -> None:
        await self.tree.router.complete(self._prompt(tag), max_tokens=64)

    async def _stream(self, tag: str) -> None:
        async with self.tree.router.stream(self._prompt(tag)) as stream:
            async for _ in stream:
                pass

    async def _http(self, tag: str) -> None:
        if self.rng.random() < 0.5:
            await self.tree.router.complete(self._prompt(tag), provider="http")
        else:
            async with self.tree.router.stream(self._prompt(tag), provider="http") as stream:
                async for _ in stream:
                    pass

    async def _submit(self, tag: str) -> None:
        router = self.tree.router
        request_id = f"soak-{tag}-{new_id()}"
        with router.bus.expect(request_id) as waiter:
            await router.submit(ProviderRequest(request_id, (Message.user(self._prompt(tag)),)))
            final = await waiter.wait()
        if not isinstance(final.data, ProviderResponse):
            raise final.data.to_error()  # type: ignore[union-attr]

    async def _abandon(self, tag: str) -> None:
        async with self.tree.router.stream(self._prompt(tag) + " " + "quack " * 40) as stream:
            async for _ in stream:
                break  # leaving early cancels the request

    async def _large(self, tag: str) -> None:
        size = self.settings.large_kib * 1024
        text = (f"{tag} " + "large prompt text " * (size // 18 + 1))[:size]
        await self.tree.router.complete(text, allow_trim=True)

    async def _poison(self, tag: str) -> None:
        choice = self.rng.randrange(3)
        if choice == 0:
            await self.tree.router.complete(f"poison {tag} \ud800")
        elif choice == 1:
            await self.tree.router.complete(f"poison {tag}", max_tokens=10**5000)
        else:
            tool = ToolSpec("lookup", parameters={"type": "object", "x": math.nan})
            await self.tree.router.complete(f"poison {tag}", tools=(tool,))

    async def _deadline(self, tag: str) -> None:
        await self.tree.router.complete(self._prompt(tag), provider="slow", timeout=0.5)

    async def _pinned(self, tag: str) -> None:
        # The agents that crash (AgentFault) and meet provider bugs (internal) get traffic of their own.
        provider = "crashy" if self.rng.random() < 0.5 else "buggy"
        await self.tree.router.complete(self._prompt(tag), provider=provider)

    async def faults(self) -> None:
        """One fault every ``fault_interval`` seconds, in turn."""
        mocks = self.mocks
        plan = [
            ("5xx burst", lambda: mocks["flaky"].fail_next(ErrorKind.UPSTREAM_5XX, count=20)),
            ("agent crash", lambda: mocks["crashy"].crash_agent_next()),
            ("provider bugs", lambda: mocks["buggy"].crash_next(count=5)),
            ("429 burst", lambda: mocks["fast"].fail_next(ErrorKind.RATE_LIMITED, 3, 0.5, status=429)),
        ]
        step = 0
        while True:
            await trio.sleep(self.settings.fault_interval)
            name, inject = plan[step % len(plan)]
            inject()
            self.tally.faults[name] += 1
            step += 1

    async def sample_rss(self, start: float) -> None:
        """An RSS sample every twentieth of the run."""
        interval = self.settings.duration / SAMPLES
        while True:
            self.samples.append((time.monotonic() - start, current_rss_mib()))
            await trio.sleep(interval)


class LogCount(logging.Handler):
    """Counts the package's log lines by logger and level (the run injects crashes on purpose)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.counts[f"{record.name} {record.levelname}"] += 1


async def _settled_rss() -> float:
    """RSS after a full collection, averaged over a second (large prompts in flight make single samples
    jump by a few MiB)."""
    samples = []
    for _ in range(RSS_SAMPLES):
        gc.collect()
        samples.append(current_rss_mib())
        await trio.sleep(1.0 / RSS_SAMPLES)
    return sum(samples) / len(samples)


def _heap_growth(before: tracemalloc.Snapshot) -> list[str]:
    """The 15 places where the Python heap grew most since ``before``."""
    gc.collect()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "traceback")
    lines = []
    for stat in stats[:15]:
        frames = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stat.traceback][-4:]
        where = " <- ".join(reversed(frames))
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB ({stat.count_diff:+d} blocks) {where}")
    return lines


async def _start_clients(url: str, settings: SoakSettings) -> trio.Process:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "benchmarks.soak_clients", url, str(settings.subscribers),
         str(settings.requesters)],
        stdout=subprocess.PIPE,
        cwd=str(ROOT),
    )
    assert proc.stdout is not None
    buffer = b""
    with trio.fail_after(60):
        while b"ready" not in buffer:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"soak clients did not start: {buffer[-300:]!r}")
            buffer += chunk
    return proc


async def _client_totals(proc: trio.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    buffer = b""
    with trio.fail_after(60):
        while chunk := await proc.stdout.receive_some(65536):
            buffer += chunk
        await proc.wait()
    lines = [line for line in buffer.decode().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"soak clients printed no totals (exit {proc.returncode}): {buffer[-300:]!r}")
    totals: dict[str, Any] = json.loads(lines[-1])
    return totals


async def run_soak(settings: SoakSettings, http_base: str, log: Any) -> dict[str, Any]:
    """The soak itself, against an HTTP upstream at ``http_base``; returns the figures."""
    mocks = _mocks()
    config = soak_config(http_base)
    if settings.tracemalloc:
        tracemalloc.start(8)
    logs = LogCount()
    package_log = logging.getLogger("duckagents")
    package_log.addHandler(logs)
    package_log.propagate = False  # counted, not printed: crashes are injected every few seconds
    rss_start = current_rss_mib()
    async with open_tree(config, providers=mocks) as tree:
        async with open_gateway(tree.router, config.gateway, limits=config.validation) as gateway:
            clients = await _start_clients(gateway.url, settings)
            soak = Soak(settings, tree, mocks)
            start = time.monotonic()
            async with trio.open_nursery() as traffic:
                traffic.start_soon(soak.sample_rss, start)
                traffic.start_soon(soak.faults)
                for index in range(settings.concurrency):
                    traffic.start_soon(soak.worker, index)
                await trio.sleep(settings.warmup_seconds)
                rss_warm = await _settled_rss()
                heap_warm = tracemalloc.take_snapshot() if settings.tracemalloc else None
                log(f"soak: warm-up done after {settings.warmup_seconds:g} s, RSS {rss_warm:.1f} MiB")
                await trio.sleep(max(0.0, settings.duration - settings.warmup_seconds))
                rss_end = await _settled_rss()
                growth = _heap_growth(heap_warm) if heap_warm is not None else []
                log(f"soak: {settings.duration:g} s done, RSS {rss_end:.1f} MiB; stopping gracefully")
                # The graceful stop, as `duckagents serve` does it on SIGTERM: the callers finish the
                # request in hand (answered, or `shutdown` at the drain timeout) and stop.
                soak.stopping = True
                gateway.close_intake()
                stopped = await tree.drain(10.0)
                await gateway.aclose()
                with trio.fail_after(30):
                    for _ in range(settings.concurrency):
                        await soak.done.acquire()
                traffic.cancel_scope.cancel()
            elapsed = time.monotonic() - start
            client_totals = await _client_totals(clients)
            leftovers = {
                "router_in_flight": tree.router.in_flight,
                "agent_requests": sum(len(a.active_requests) for a in tree.agents.values()),
            }
            restarts = {name: sup.restarts for name, sup in tree.agent_supervisors.items()}
            root_restarts = tree.supervisor.restarts
            stats = gateway.stats()
    return {
        "settings": attrs.asdict(settings) | {"warmup_seconds": settings.warmup_seconds},
        "elapsed_s": round(elapsed, 1),
        "requests": soak.started,
        "outcomes": dict(soak.tally.outcomes),
        "by_kind": dict(soak.tally.by_kind),
        "bugs": soak.tally.bugs[:10],
        "log_lines": dict(logs.counts),
        "heap_growth": growth,
        "faults": dict(soak.tally.faults),
        "agent_restarts": restarts,
        "root_restarts": root_restarts,
        "stopped_at_drain": stopped,
        "leftovers": leftovers,
        "gateway": {
            "clients": client_totals,
            "dropped": stats.dropped,
            "unencodable": stats.unencodable,
            "faults": stats.faults,
            "cache_kib": round(stats.cache_bytes / 1024, 1),
        },
        "rss_mib": {
            "start": round(rss_start, 1),
            "after_warmup": round(rss_warm, 1),
            "end": round(rss_end, 1),
            "growth_pct": round(100.0 * (rss_end - rss_warm) / rss_warm, 2) if rss_warm else None,
            "samples": [(round(t, 1), round(r, 1)) for t, r in soak.samples],
        },
    }


def verdict(figures: dict[str, Any], max_growth: float) -> list[str]:
    """What went wrong (empty: the soak passed)."""
    problems = []
    growth = figures["rss_mib"]["growth_pct"]
    if growth is None or growth > max_growth:
        problems.append(f"RSS grew {growth}% after the warm-up (target: within {max_growth:g} %)")
    if figures["bugs"]:
        problems.append(f"unexpected exceptions: {figures['bugs']}")
    if any(figures["leftovers"].values()):
        problems.append(f"requests left in flight: {figures['leftovers']}")
    if figures["root_restarts"]:
        problems.append(f"the router restarted {figures['root_restarts']} time(s)")
    clients = figures["gateway"]["clients"]
    codes = clients["close_codes"]
    if set(codes) != {"1001"}:
        problems.append(f"gateway clients closed with {codes}, not all 1001")
    if clients["unanswered"]:
        problems.append(f"{clients['unanswered']} gateway request(s) without an answer")
    if figures["gateway"]["unencodable"]:
        problems.append(f"{figures['gateway']['unencodable']} signal(s) could not be encoded")
    return problems


def render(figures: dict[str, Any], problems: Sequence[str]) -> str:
    """The markdown report."""
    rss = figures["rss_mib"]
    s = figures["settings"]
    clients = figures["gateway"]["clients"]
    lines = [
        "## Soak",
        "",
        f"{s['duration']:g} s of mixed traffic ({s['concurrency']} in-process callers, "
        f"{s['subscribers']} gateway subscribers, {s['requesters']} gateway requesters, "
        f"{s['large_kib']} KiB large prompts, a fault every {s['fault_interval']:g} s), "
        f"warm-up {s['warmup_seconds']:g} s.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| RSS after warm-up | {rss['after_warmup']} MiB |",
        f"| RSS at the end | {rss['end']} MiB |",
        f"| growth | **{rss['growth_pct']} %** (target ≤ {s['max_growth']:g} %) |",
        f"| RSS at start (before the tree) | {rss['start']} MiB |",
        f"| in-process requests | {figures['requests']} ({_counts(figures['outcomes'])}) |",
        f"| faults injected | {_counts(figures['faults'])} |",
        f"| log lines (warnings and errors) | {_counts(figures['log_lines'])} |",
        f"| agent restarts | {_counts(figures['agent_restarts'])}; router: {figures['root_restarts']} |",
        f"| gateway subscriber frames | {clients['frames']} ({clients['bytes'] / 2**20:.1f} MiB), "
        f"dropped {clients['dropped']} |",
        f"| gateway requests | {_counts(clients['answers'])}; unanswered {clients['unanswered']} |",
        f"| graceful stop | {figures['stopped_at_drain']} stopped at the drain timeout; close codes "
        f"{_counts(clients['close_codes'])} |",
        "",
        "RSS samples (s, MiB): " + ", ".join(f"{t:g}: {r:g}" for t, r in rss["samples"]),
        "",
        *_heap_lines(figures["heap_growth"]),
        "**PASS**" if not problems else "**FAIL**: " + "; ".join(problems),
    ]
    return "\n".join(lines)


def _heap_lines(growth: list[str]) -> list[str]:
    if not growth:
        return []
    return ["Python heap growth after the warm-up (tracemalloc):", "", *[f"    {g}" for g in growth], ""]


def _counts(counter: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1])) or "none"


def parse_args(argv: Sequence[str]) -> tuple[SoakSettings, argparse.Namespace]:
    """Settings from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = SoakSettings()
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds (default 600)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: a tenth of the run)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--subscribers", type=int, default=defaults.subscribers)
    parser.add_argument("--requesters", type=int, default=defaults.requesters)
    parser.add_argument("--large-kib", type=int, default=defaults.large_kib)
    parser.add_argument("--fault-interval", type=float, default=defaults.fault_interval)
    parser.add_argument("--max-growth", type=float, default=defaults.max_growth, help="percent (default 10)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--tracemalloc", action="store_true", help="list where the Python heap grew")
    args = parser.parse_args(argv)
    settings = SoakSettings(
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        subscribers=args.subscribers,
        requesters=args.requesters,
        large_kib=args.large_kib,
        fault_interval=args.fault_interval,
        max_growth=args.max_growth,
        seed=args.seed,
        tracemalloc=args.tracemalloc,
    )
    if not 0 < settings.warmup_seconds < settings.duration:
        parser.error("the warm-up must be shorter than the run")
    return settings, args


def main(argv: Sequence[str]) -> int:
    """Run the soak, print the report; exit status 1 when it failed."""
    settings, args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with run_loopback() as upstream:
        figures = trio.run(run_soak, settings, upstream.json_base, log)
    problems = verdict(figures, settings.max_growth)
    figures["problems"] = problems
    print(render(figures, problems))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if problems else 0
