"""``python -m benchmarks``: run the benchmarks, print the markdown report, write results/latest.json.

Examples::

    python -m benchmarks                          # everything, 3 repeats (about 5 minutes on 2 cores)
    python -m benchmarks --quick                  # 1 short repeat, smaller internal runs
    python -m benchmarks --scenarios direct,duckagents --concurrency 1,32
    python -m benchmarks --scenarios direct,door-duckagents,door-litellm,door-floor --concurrency 1,32
    python -m benchmarks --scenarios fleet        # [fleet] on a loopback redis-server vs in-process
    python -m benchmarks soak --duration 60       # the soak run: RSS under mixed traffic (default 10 min)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from .report import RESULTS_DIR, render, write
from .runner import ALL_SCENARIOS, Settings, collect
from .targets import evaluate
from .upstream import find_nginx

QUICK = {
    "repeats": 1,
    "warmup": 0.3,
    "duration": 1.0,
    "bus_deliveries": 50_000,
    "bus_repeats": 3,
    "restarts": 100,
    "gateway_signals": 300,
    "memory_agents": 20,
    "memory_in_flight": 128,
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in ALL_SCENARIOS]
    if unknown:
        known = ", ".join(ALL_SCENARIOS)
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {', '.join(unknown)}; known: {known}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    """Settings from the command line (``--quick`` first, explicit options override it)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 short repeat and smaller internal runs")
    parser.add_argument("--scenarios", type=_scenarios, help=f"comma list of: {', '.join(ALL_SCENARIOS)}")
    parser.add_argument("--concurrency", type=_ints, help="comma list (default 1,32,256)")
    parser.add_argument("--modes", choices=("both", "json", "stream"), default="both")
    parser.add_argument("--repeats", type=int, help="repeats per HTTP workload (default 3); medians reported")
    parser.add_argument("--duration", type=float, help="measurement window per HTTP run, seconds")
    parser.add_argument("--warmup", type=float, help="warm-up per HTTP run, seconds")
    parser.add_argument("--max-requests", type=int, help="end each HTTP window after this many requests")
    parser.add_argument("--upstream", choices=("auto", "nginx", "loopback"), default="auto")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile the scenarios behind missed targets (auto), all, or none",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json", help="JSON result file")
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    for name in (
        "bus_deliveries",
        "restarts",
        "gateway_clients",
        "gateway_signals",
        "memory_agents",
        "memory_in_flight",
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    overrides = {
        "scenarios": args.scenarios,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "duration": args.duration,
        "warmup": args.warmup,
        "max_requests": args.max_requests,
        **{
            n: getattr(args, n)
            for n in (
                "bus_deliveries",
                "restarts",
                "gateway_clients",
                "gateway_signals",
                "memory_agents",
                "memory_in_flight",
            )
        },
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["modes"] = {"both": (False, True), "json": (False,), "stream": (True,)}[args.modes]
    values["upstream"] = args.upstream
    values["profile"] = args.profile
    return Settings(**values), args


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nginx_version() -> str:
    binary = find_nginx()
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().rsplit("/", 1)[-1]


def meta(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    """What produced the numbers: command, date, machine, versions, settings."""
    return {
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "versions": {
            name: _version(name)
            for name in (
                "duckagents",
                "trio",
                "httpx",
                "httpcore",
                "hypercorn",
                "starlette",
                "litellm",
                "aiohttp",
            )
        }
        | {"nginx": _nginx_version()},
        "repeats": settings.repeats,
        "duration": settings.duration,
        "settings": attrs.asdict(settings),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print, write."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["soak"]:
        from .soak import main as soak_main

        return soak_main(argv[1:])
    settings, args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    data = collect(settings, log, evaluate)
    data["meta"] = {**meta(settings, argv), **data["meta"]}
    markdown = render(data)
    print(markdown)
    if not args.no_write:
        write(data, markdown, args.output)
        log(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
