"""Containment in the tree (issue 10): an agent that keeps crashing goes down alone, with readable reasons;
upstream wait hints cannot block a provider for years."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from duckagents.app import Tree, open_tree
from duckagents.bus import SignalBus
from duckagents.config import Config, ModelConfig, ProviderConfig, RouterConfig, SupervisionConfig
from duckagents.errors import ErrorKind
from duckagents.providers import MockProvider
from duckagents.signals import SupervisorEvent
from duckagents.testing import Fault, ScriptedReply, open_openai_server
from tests.helpers import Recorder, assert_one_terminal_per_request, mock_config

KEY = "sk-containment-secret-0123456789abcdef"
CHAT = "/v1/chat/completions"
CRASH = "injected agent fault in the mock provider"


@asynccontextmanager
async def recorded(config: Config, **kwargs: object) -> AsyncIterator[tuple[Tree, Recorder]]:
    bus = SignalBus()
    recorder = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        async with open_tree(config, bus=bus, environ={"KEY": KEY}, **kwargs) as tree:  # type: ignore[arg-type]
            yield tree, recorder
        bus.close()


def events(recorder: Recorder, event: str) -> list[SupervisorEvent]:
    found = [s.data for s in recorder.of("supervisor_event")]
    return [e for e in found if isinstance(e, SupervisorEvent) and e.event == event]


async def test_a_crash_looping_agent_exhausts_its_own_budget_while_the_rest_serves(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = MockProvider(), MockProvider()
    bad.crash_agent_next(count=1000)  # every call crashes the agent running it
    config = Config(
        providers=(mock_config("bad"), mock_config("good", priority=1)),
        router=RouterConfig(backoff_initial=0.0),
        supervision=SupervisionConfig(agent_max_restarts=2, agent_period=60.0, agent_backoff_initial=0.1),
        health_interval=1000.0,
    )
    caplog.set_level(logging.ERROR, logger="duckagents.supervision")
    async with recorded(config, providers={"bad": bad, "good": good}) as (tree, rec):
        for index in range(50):  # traffic, and time for the restarts' backoff, until the budget runs out
            response = await tree.router.complete(f"hi {index}", request_id=f"r{index}")
            assert response.provider == "good"
            if events(rec, "gave_up"):
                break
            await trio.sleep(1)
        assert events(rec, "gave_up")
        # Down for good: later requests never try it, the router and the healthy agent serve on.
        calls = bad.calls
        for index in range(5):
            assert (await tree.router.complete(f"after {index}")).provider == "good"
        assert bad.calls == calls == 3  # the first incarnation and two restarts
        root = tree.supervisor
        assert root.running == ["router", "agent:good"] and root.restarts == 0
        assert tree.agent_supervisors["good"].restarts == 0
        assert tree.agent_supervisors["bad"].restarts == 2
    [gave_up] = events(rec, "gave_up")
    assert (gave_up.supervisor, gave_up.child) == ("agent:bad", "agent:bad")
    assert (gave_up.error_type, gave_up.error_message) == ("AgentFault", CRASH)
    crashed = [e for e in events(rec, "crashed") if e.supervisor == "agent:bad"]
    assert len(crashed) == 3 and all(e.reason == f"AgentFault: {CRASH}" for e in crashed)
    [lost] = [e for e in events(rec, "crashed") if e.supervisor == "duckagents"]
    assert lost.child == "agent:bad" and lost.error_type == "SupervisorGaveUp"
    assert_one_terminal_per_request(rec)
    logged = [r.getMessage() for r in caplog.records]
    crash_logs = [m for m in logged if "child agent:bad crashed: AgentFault" in m]
    assert len(crash_logs) == 3
    assert all("Traceback (most recent call last)" in m and "in _begin" in m for m in crash_logs)
    assert any("gave up" in m and "Traceback" in m for m in logged)
    assert not any("Exceptions from Trio nursery" in m for m in logged)


async def test_the_root_still_gives_up_when_the_router_cannot_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from duckagents.errors import SupervisorGaveUp
    from duckagents.router import RouterAgent

    config = Config(providers=(mock_config("a"),), supervision=SupervisionConfig(max_restarts=1, period=10.0))
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_tree(config) as tree:
            router: RouterAgent = tree.router
            for _ in range(3):
                router._crash(RuntimeError("the router is broken"))  # a bug met in a caller's task
                await trio.sleep(1)
    assert info.value.supervisor == "duckagents" and info.value.child == "router"


@pytest.fixture
def flowing_clock() -> trio.testing.MockClock:
    """Real-speed time that the test may also jump forward."""
    return trio.testing.MockClock(rate=1.0)


@pytest.mark.parametrize(
    ("header", "expected"), [("999999999", 20.0), ("inf", None), ("nan", None), ("-5", None)]
)
async def test_absurd_retry_after_never_blocks_a_provider_for_long(
    flowing_clock: trio.testing.MockClock, header: str, expected: float | None
) -> None:
    async with open_openai_server(api_key=KEY) as server:
        config = Config(
            providers=(
                ProviderConfig(name="gpt", kind="openai", base_url=server.base_url, api_key_env="KEY",
                               default_model="gpt-4o-mini"),
                ProviderConfig(name="backup", kind="mock", priority=1),
            ),
            router=RouterConfig(backoff_initial=0.0, max_retry_after=20.0),
            models={"gpt-4o-mini": ModelConfig(fallbacks=("mock-1",))},  # the mock by name (docs/routing.md)
            health_interval=10_000.0,
        )
        async with recorded(config) as (tree, rec):
            server.inject(Fault(status=429, error_type="rate_limit_exceeded", headers={"retry-after": header},
                                path=CHAT))
            assert (await tree.router.complete("hi")).provider == "backup"
            [limited] = [s.data for s in rec.terminals() if s.source == "/agents/gpt"]
            assert limited.kind is ErrorKind.RATE_LIMITED  # type: ignore[union-attr]
            wait = limited.retry_after  # type: ignore[union-attr]
            if expected is None:  # the header is ignored (the body's "try again in 1s" may still count)
                assert wait is None or wait < 20.0
            else:
                assert wait == expected
            blocked = tree.agents["gpt"].limiter.blocked_until
            assert blocked is None or blocked <= trio.current_time() + 20.0
            flowing_clock.jump(21.0)  # the cap (not 31 years) later, the provider serves again
            server.script.push(ScriptedReply(text="back"))
            response = await tree.router.complete("hi")
            assert (response.provider, response.content) == ("gpt", "back")
