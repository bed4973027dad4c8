"""Supervisor restart latency: from a child's crash to its next incarnation being up (no backoff).

Two children are measured, each crashing over and over under a one_for_one supervisor whose intensity
never gives up:

* ``bare``: a child that reports started and raises at once (the supervisor's own cost);
* ``agent``: a real OpenAI provider agent whose provider's health probe raises (agents probe at start,
  so every incarnation crashes right away). Its restart includes what a real one pays: the agent
  unsubscribing and resubscribing, closing the old provider and building a new one (an httpx client).

Latency = time the next incarnation calls ``task_status.started()`` minus time the crash was raised.
"""

from __future__ import annotations

import statistics
from typing import Any

import attrs
import trio

from duckagents.agents import agent_class
from duckagents.bus import SignalBus
from duckagents.config import ProviderConfig
from duckagents.providers import HealthProbe, OpenAIProvider
from duckagents.supervision import Backoff, ChildSpec, Intensity, Restart, Strategy, Supervisor

from ._stats import percentile


@attrs.define
class _Clock:
    """Crash and start times of a crash loop, and when to stop crashing."""

    target: int
    crash_at: float | None = None
    latencies: list[float] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)

    def crashed(self) -> None:
        """The child is about to raise."""
        self.crash_at = trio.current_time()

    def started(self) -> None:
        """An incarnation reported started: close the crash-to-start interval, if one is open."""
        if self.crash_at is not None:
            self.latencies.append(trio.current_time() - self.crash_at)
            self.crash_at = None
        if len(self.latencies) >= self.target:
            self.done.set()

    @property
    def crashing(self) -> bool:
        """Should the current incarnation crash (more restarts are wanted)?"""
        return len(self.latencies) < self.target


class _StatusSpy:
    """Wraps the ``task_status`` a supervisor hands a child, noting when the child reports started."""

    def __init__(self, inner: Any, clock: _Clock) -> None:
        self._inner = inner
        self._clock = clock

    def started(self, value: Any = None) -> None:
        """Note the time, then report started to the supervisor."""
        self._clock.started()
        self._inner.started(value)


async def _bare_child(clock: _Clock, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    _StatusSpy(task_status, clock).started()
    if clock.crashing:
        clock.crashed()
        raise RuntimeError("benchmark crash")
    await trio.sleep_forever()


class _CrashingProvider(OpenAIProvider):
    """An OpenAI provider whose health probe (run at every agent start) crashes the agent."""

    clock: _Clock

    async def health(self) -> HealthProbe:
        """Crash the agent while the benchmark wants restarts; then a healthy probe."""
        if self.clock.crashing:
            self.clock.crashed()
            raise RuntimeError("benchmark crash")
        return HealthProbe(True, 0.0, {"probe": "benchmark"})


def _agent_child(clock: _Clock, bus: SignalBus, base_url: str) -> ChildSpec:
    config = ProviderConfig(name="openai", kind="openai", base_url=base_url, default_model="bench-model")

    def factory() -> OpenAIProvider:
        provider = _CrashingProvider(base_url=base_url, default_model="bench-model")
        provider.clock = clock
        return provider

    agent = agent_class("openai")(config, bus, provider_factory=factory)

    async def run_agent(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await agent.run(task_status=_StatusSpy(task_status, clock))

    return ChildSpec("agent:openai", run_agent, restart=Restart.PERMANENT)


async def _crash_loop(kind: str, restarts: int) -> list[float]:
    clock = _Clock(restarts)
    bus = SignalBus()
    # The URL is never dialled: the crashing probe raises before any request is made.
    spec = (
        ChildSpec("bare", _bare_child, (clock,))
        if kind == "bare"
        else _agent_child(clock, bus, "http://127.0.0.1:9/v1")
    )
    supervisor = Supervisor(
        "bench",
        [spec],
        strategy=Strategy.ONE_FOR_ONE,
        intensity=Intensity(max_restarts=restarts + 10, period=3600.0),
        backoff=Backoff(initial=0.0),
        bus=bus,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await clock.done.wait()
        nursery.cancel_scope.cancel()
    bus.close()
    return clock.latencies


def _summary(latencies: list[float]) -> dict[str, Any]:
    ms = [x * 1000.0 for x in latencies]
    return {
        "restarts": len(ms),
        "median_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
    }


async def _measure(params: dict[str, Any]) -> dict[str, Any]:
    restarts = int(params.get("restarts", 500))
    await _crash_loop("bare", 20)  # warm-up
    bare = await _crash_loop("bare", restarts)
    agent = await _crash_loop("agent", max(10, restarts // 2))
    return {"bare": _summary(bare), "agent": _summary(agent)}


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Worker entry: restart latency medians for a bare child and a real provider agent."""
    return trio.run(_measure, params)
