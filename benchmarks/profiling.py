"""Where the time goes: a pyinstrument profile of one scenario, summarised by duckagents function.

Run when a target is missed (``python -m benchmarks --profile``), in its own worker process:

* ``http``: the duckagents HTTP workload (router -> agent -> provider -> httpx) of the given spec;
* ``restart``: the provider agent crash/restart loop of :mod:`benchmarks.internal_supervision`.

The summary lists, as % of all sampled wall time: duckagents functions by inclusive time (time with the
function on the stack) and by self time, self time by package and by function anywhere, and the idle
share (the event loop waiting in epoll). A C function's time counts for the package that called it.
"Layer" figures leave out the provider's HTTP call (``XProvider.complete``/``stream`` and everything under
it, which is what the direct client does too): they are the agent layer's own cost. pyinstrument is a
benchmark-only tool: ``pip install pyinstrument``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import attrs
import trio

TOP = 15
_SITE = re.compile(r".*/(?:site|dist)-packages/")
_IDLE_FUNCTIONS = frozenset({"poll", "epoll.poll", "select.epoll.poll", "get_events"})


def where(frame: Any) -> str:
    """``path:Class.function`` with the path shortened to the package (or the repo) root."""
    path = str(frame.file_path or "?")
    if "/duckagents/" in path:
        path = "duckagents/" + path.rsplit("/duckagents/", 1)[1]
    elif "/benchmarks/" in path:
        path = "benchmarks/" + path.rsplit("/benchmarks/", 1)[1]
    else:
        path = _SITE.sub("", path)
    name = f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function
    return f"{path}:{name}"


def package(frame: Any) -> str:
    """The top-level package a frame's code belongs to (``duckagents``, ``httpx``, ``stdlib``...)."""
    path = str(frame.file_path or "")
    if "/duckagents/" in path:
        return "duckagents"
    if "/benchmarks/" in path:
        return "benchmarks (load generator)"
    match = _SITE.match(path)
    if match:
        return path[match.end() :].split("/", 1)[0].removesuffix(".py")
    if path.startswith("<built-in>") or not path:
        return "built-in"
    return "stdlib"


def _is_provider_call(key: str) -> bool:
    """The provider's HTTP call (what the direct client does too): everything under it is the floor."""
    # ``stream`` hands back HTTPProvider._stream, the generator that runs the call.
    name = key.rsplit(".", 1)[-1]
    return key.startswith("duckagents/providers/") and name in ("complete", "stream", "_stream")


def summarise(root: Any) -> dict[str, Any]:
    """Aggregate a pyinstrument frame tree (see the module docstring)."""
    total = max(root.time, 1e-12)
    inclusive: dict[str, float] = defaultdict(float)
    own: dict[str, float] = defaultdict(float)
    anywhere: dict[str, float] = defaultdict(float)
    by_package: dict[str, float] = defaultdict(float)
    # Outside the provider call: the agent layer's own cost (router, bus, agent, extra task switches).
    layer_by_package: dict[str, float] = defaultdict(float)
    layer_anywhere: dict[str, float] = defaultdict(float)
    idle = provider = 0.0
    stack: list[tuple[Any, frozenset[str], str, bool]] = [(root, frozenset(), "stdlib", False)]
    while stack:
        frame, on_path, parent_package, in_provider = stack.pop()
        key = where(frame)
        real_children = [c for c in frame.children if not c.is_synthetic]
        self_time = frame.time - sum(c.time for c in real_children)
        pkg = package(frame)
        if pkg == "built-in":
            pkg = parent_package  # a C call (socket.send, json) counts for the code that made it
        if not in_provider and _is_provider_call(key):
            in_provider = True
            provider += frame.time
        if frame.function in _IDLE_FUNCTIONS and not real_children:
            idle += self_time
        else:
            by_package[pkg] += self_time
            anywhere[key] += self_time
            if not in_provider and pkg != "benchmarks (load generator)":
                layer_by_package[pkg] += self_time
                layer_anywhere[key] += self_time
        if pkg == "duckagents":
            if key not in on_path:
                inclusive[key] += frame.time
            own[key] += self_time
        for child in real_children:
            stack.append((child, on_path | {key}, pkg, in_provider))

    def top(table: dict[str, float]) -> list[dict[str, Any]]:
        ranked = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:TOP]
        return [{"where": k, "pct": round(100.0 * v / total, 2)} for k, v in ranked]

    return {
        "sampled_s": total,
        "idle_pct": round(100.0 * idle / total, 2),
        "provider_call_pct": round(100.0 * provider / total, 2),
        "layer_pct": round(100.0 * sum(layer_by_package.values()) / total, 2),
        "duckagents_inclusive": top(inclusive),
        "duckagents_self": top(own),
        "self_by_package": top(by_package),
        "self_anywhere": top(anywhere),
        "layer_by_package": top(layer_by_package),
        "layer_anywhere": top(layer_anywhere),
    }


class TaskSteps(trio.abc.Instrument):
    """Counts Trio task steps and spawned tasks while ``counting`` (the scheduler work per request)."""

    def __init__(self) -> None:
        self.counting = False
        self.steps = 0
        self.spawned = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        """One step of one task (the scheduler resumed it)."""
        if self.counting:
            self.steps += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        """A new task."""
        if self.counting:
            self.spawned += 1


def scheduler_work(spec: Any) -> dict[str, Any]:
    """Task steps and tasks spawned per request in the measurement window of ``spec`` (unprofiled)."""
    from .clients_trio import run_http

    steps = TaskSteps()

    def begin() -> None:
        steps.counting = True

    result = trio.run(run_http, spec, begin, instruments=[steps])
    completed = max(1, result["requests"] + result["errors"])
    return {
        "client": spec.client,
        "task_steps_per_request": steps.steps / completed,
        "tasks_spawned_per_request": steps.spawned / completed,
    }


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Worker entry: profile the ``target`` scenario and return the summary."""
    from pyinstrument import Profiler

    target = params.get("target", "http")
    profiler = Profiler(interval=float(params.get("interval", 0.0005)), async_mode="disabled")
    if target == "http":
        from .clients_trio import run_http
        from .workload import HttpSpec

        spec = HttpSpec.from_dict(params["spec"])
        # Only the measurement window: start-up (imports, the first SSL context) and warm-up are not
        # the hot path.
        result = trio.run(run_http, spec, profiler.start)
        profiler.stop()
        short = attrs.evolve(spec, duration=min(spec.duration, 1.0))
        context: dict[str, Any] = {
            "spec": params["spec"],
            "throughput_rps": result["throughput_rps"],
            "scheduler": [scheduler_work(short), scheduler_work(attrs.evolve(short, client="direct"))],
        }
    elif target == "restart":
        from .internal_supervision import _crash_loop

        profiler.start()
        latencies = trio.run(_crash_loop, "agent", int(params.get("restarts", 100)))
        profiler.stop()
        context = {"restarts": len(latencies)}
    else:
        raise ValueError(f"unknown profile target {target!r} (http, restart)")
    session = profiler.last_session
    if session is None:
        raise RuntimeError("pyinstrument recorded nothing")
    return {"target": target, **context, **summarise(session.root_frame())}
