"""The provider agent's hot path: requests run in the inbox tasks, and what that must never cost.

An agent runs requests in its inbox tasks (leader/followers) and publishes terminals without a scheduler
turn. These tests pin down what those shortcuts must keep: a bounded pool of inbox tasks, nothing taken by
a request answered before it starts, and terminals that go out at once or wait for room.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from duckagents.agents import _agent
from duckagents.agents._agent import ActiveRequest
from duckagents.bus import SignalFilter
from duckagents.config import ProviderConfig
from duckagents.providers import MockProvider
from duckagents.resilience import RateLimits
from duckagents.signals import (
    ProviderChunk,
    ProviderResponse,
    make_signal,
)
from tests.helpers import (
    request,
    running_agent,
    send,
)


class Spawns(trio.abc.Instrument):
    """Counts the tasks spawned while installed."""

    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1



async def test_a_burst_runs_concurrently_and_the_inbox_pool_shrinks_back(autojump_clock: object) -> None:
    config = ProviderConfig(name="m", kind="mock", max_concurrency=64)
    async with running_agent(config, MockProvider(latency=1.0)) as (agent, bus, rec):
        assert agent._nursery is not None
        base = len(agent._nursery.child_tasks)  # health, background and broadcast tasks
        start = trio.current_time()
        for i in range(40):
            await send(bus, request(f"b{i}", provider="m"))
        terminals = await rec.wait_for(lambda s: s.is_terminal, count=40)
        assert all(isinstance(s.data, ProviderResponse) for s in terminals)
        # All 40 ran side by side (one second of mock latency in all), each answered once.
        assert trio.current_time() - start == pytest.approx(1.0)
        assert sorted(s.subject for s in terminals) == sorted(f"b{i}#1" for i in range(40))  # type: ignore[type-var]
        await trio.sleep(1)
        # Idle inbox tasks are kept up to IDLE_WORKERS (plus the one reading); the rest ended.
        helpers = len(agent._nursery.child_tasks) - base
        assert 1 <= helpers <= _agent.IDLE_WORKERS + 1
        spawns = Spawns()
        trio.lowlevel.add_instrument(spawns)
        try:
            await send(bus, request("after", provider="m"))
            await rec.wait_for(lambda s: s.is_terminal and s.subject == "after#1")
        finally:
            trio.lowlevel.remove_instrument(spawns)
        assert spawns.count == 0  # an idle inbox task took over the reading
        assert not agent.active_requests


async def test_an_attempt_answered_before_it_starts_takes_nothing(autojump_clock: object) -> None:
    provider = MockProvider()
    config = ProviderConfig(name="m", kind="mock", limits=RateLimits(requests=10))
    async with running_agent(config, provider) as (agent, _, rec):
        req = request("early", provider="m", deadline=trio.current_time() + 10)
        active = ActiveRequest(req, trio.current_time(), trio.CancelScope(), "early#1")
        agent.active_requests[("early", 1)] = active
        # What the inbox does when the router's answer for it came in the same batch as the request.
        active.answered = True
        active.scope.cancel()
        await agent._answer(active)
        await trio.sleep(1)
        assert provider.calls == 0 and not agent.active_requests
        assert agent.metrics.snapshot().total_requests == 0
        snap = agent.breaker.snapshot(trio.current_time())
        assert snap.consecutive_failures == 0 and snap.trials_in_flight == 0
        assert agent.limiter.headroom(trio.current_time()).requests == 10  # nothing reserved
        assert rec.terminals() == []


class Reschedules(trio.abc.Instrument):
    """Counts how often one task is put back on the run queue (each time is a scheduler turn)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1



async def test_an_agent_publishes_its_terminal_without_a_scheduler_turn(autojump_clock: object) -> None:
    async with running_agent() as (agent, bus, _):
        with bus.subscribe(SignalFilter(request_ids={"t"})) as sub:
            instrument = Reschedules(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(instrument)
            try:
                payload = ProviderResponse("t", agent.name, "m", "done")
                await agent._publish_terminal(payload, "t")
            finally:
                trio.lowlevel.remove_instrument(instrument)
            assert instrument.count == 0
            # Delivered all the same, before anyone else ran.
            assert sub.receive_nowait().data == payload


async def test_a_terminal_waits_for_a_full_subscriber_then_goes_out(autojump_clock: object) -> None:
    async with running_agent() as (agent, bus, rec):
        with bus.subscribe(SignalFilter(request_ids={"t"}), buffer=1) as tight:
            await bus.publish(make_signal(ProviderChunk("t", agent.name, 0, "x"), "/test"))  # now full
            payload = ProviderResponse("t", agent.name, "m", "done")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(agent._publish_terminal, payload, "t")
                await trio.sleep(1)
                assert tight.pending == 1  # the terminal waits for room (shielded, bounded)
                assert isinstance((await tight.receive()).data, ProviderChunk)
            assert (await tight.receive()).data == payload
            await rec.wait_for(lambda s: s.is_terminal and s.subject == "t")


