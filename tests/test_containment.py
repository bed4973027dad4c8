"""Containment in the tree (issue 10): an agent that keeps crashing goes down alone, with readable reasons;
upstream wait hints cannot block a provider for years."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from duckagents.app import Tree, open_tree
from duckagents.bus import SignalBus
from duckagents.config import Config, ModelConfig, ProviderConfig, RouterConfig, SupervisionConfig
from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import ToolSpec
from duckagents.providers import MockProvider
from duckagents.signals import ProviderErrorData, SupervisorEvent
from duckagents.testing import (
    Fault,
    ScriptedReply,
    open_anthropic_server,
    open_ollama_server,
    open_openai_server,
)
from tests.helpers import Recorder, assert_one_terminal_per_request, mock_config, request, send

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


# --- per-request containment (issue 10, item 2) ----------------------------------------------------

HTTP_SERVERS = {
    "openai": (open_openai_server, "gpt-4o-mini"),
    "anthropic": (open_anthropic_server, "claude-sonnet-4-5"),
    "ollama": (open_ollama_server, "llama3.2"),
}
#: What no HTTP provider can encode: a lone surrogate in the prompt, NaN in a tool schema.
POISONS = {
    "surrogate": {"text": "hello \ud800"},
    "nan": {"tools": (ToolSpec("lookup", parameters={"type": "object", "x": math.nan}),)},
}


@asynccontextmanager
async def three_http_agents() -> AsyncIterator[tuple[Tree, Recorder, dict[str, Any]]]:
    """A tree of three HTTP agents (OpenAI, Anthropic, Ollama wire formats) over loopback servers."""
    async with (
        open_openai_server(api_key=KEY) as openai,
        open_anthropic_server(api_key=KEY) as anthropic,
        open_ollama_server() as ollama,
    ):
        servers = {"openai": openai, "anthropic": anthropic, "ollama": ollama}
        providers = tuple(
            ProviderConfig(
                name=kind, kind=kind, base_url=server.url if kind != "openai" else server.base_url,  # type: ignore[arg-type]
                api_key_env=None if kind == "ollama" else "KEY", default_model=HTTP_SERVERS[kind][1],
                priority=index,
            )
            for index, (kind, server) in enumerate(servers.items())
        )
        config = Config(providers=providers, health_interval=10_000.0)
        async with recorded(config) as (tree, rec):
            yield tree, rec, servers


#: Each wire format's completion path.
COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/messages", "/api/chat"})


def upstream_calls(servers: dict[str, Any]) -> int:
    """Completion calls the upstreams received (model lookups and the like left out)."""
    return sum(1 for s in servers.values() for r in s.requests if r.path in COMPLETION_PATHS)


@pytest.mark.parametrize("poison", sorted(POISONS))
async def test_a_poison_request_fails_once_with_internal_and_three_http_agents_serve_on(
    poison: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Past every door (here: addressed to each agent on the bus, as the router dispatches), an input no
    HTTP provider can encode fails that attempt alone with ``internal``; no agent crashes or restarts."""
    caplog.set_level(logging.ERROR, logger="duckagents.agents")
    async with three_http_agents() as (tree, rec, servers):
        calls = upstream_calls(servers)
        for name in servers:
            subject = await send(tree.bus, request(f"poison-{name}", provider=name, **POISONS[poison]))
            [terminal] = await rec.wait_for(lambda s, subject=subject: s.is_terminal and s.subject == subject)
            failure = terminal.data
            assert isinstance(failure, ProviderErrorData), failure
            assert failure.kind is ErrorKind.INTERNAL and not failure.retryable and failure.provider == name
            assert "internal error while handling the request" in failure.message
            assert len(failure.message) < 400 and KEY not in failure.message
        await trio.sleep(0.2)  # a restart would have come by now
        assert len(rec.terminals()) == 3  # one answer each, no second one
        assert upstream_calls(servers) == calls  # never sent: it failed while encoding
        assert not events(rec, "crashed") and not events(rec, "restarted")
        assert all(agent.incarnation == 1 and agent.running for agent in tree.agents.values())
        for name in servers:  # each serves the next normal request
            response = await tree.router.complete("hello", provider=name)
            assert response.provider == name and response.content
        assert upstream_calls(servers) == calls + 3
    assert_one_terminal_per_request(rec)
    logged = [r.getMessage() for r in caplog.records if r.name == "duckagents.agents"]
    # One traceback per kind of fault (here the same encoding fault in each agent), with the request id.
    assert logged and all("failed with an internal error" in m and "Traceback" in m for m in logged)
    assert any("poison-openai" in m for m in logged) and not any(KEY in m for m in logged)


@pytest.mark.parametrize("poison", sorted(POISONS))
async def test_a_poison_request_through_the_router_is_refused_at_its_door(poison: str) -> None:
    """Through ``complete()``, ``stream()`` or ``submit()`` the same input never reaches an agent: the
    router refuses it with ``invalid_request`` naming the field."""
    fields = POISONS[poison]
    text = str(fields.get("text", "hello"))
    options = {k: v for k, v in fields.items() if k != "text"}
    path = "$.messages[0]" if poison == "surrogate" else "$.options.tools[0].parameters"
    async with three_http_agents() as (tree, rec, servers):
        calls = upstream_calls(servers)
        router = tree.router
        errors = []
        with pytest.raises(ProviderError) as info:
            await router.complete(text, **options)
        errors.append(info.value)
        with pytest.raises(ProviderError) as info:
            async with router.stream(text, **options) as stream:
                async for _ in stream:
                    pass
        errors.append(info.value)
        with pytest.raises(ProviderError) as info:
            await router.submit(request("submitted", text, **options))
        errors.append(info.value)
        for error in errors:
            assert error.kind is ErrorKind.INVALID_REQUEST and not error.retryable
            assert error.message.startswith(path) and len(error.message) <= 300, error.message
        assert upstream_calls(servers) == calls and router.in_flight == 0
        assert not rec.of("provider_request")  # not even an intake: nothing was accepted
        assert (await router.complete("hello")).provider == "openai"
    assert not events(rec, "crashed")


async def test_huge_max_tokens_four_times_each_fails_alone_and_the_tree_stays_up(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``max_tokens`` of 4,400 digits used to crash the router (int-to-str), and four ended the process."""
    huge = 10**4400
    async with recorded(Config(providers=(mock_config("a"),), health_interval=1000.0)) as (tree, rec):
        router = tree.router
        for index in range(4):
            with pytest.raises(ProviderError) as info:
                if index % 2:
                    await router.submit(request(f"huge{index}", max_tokens=huge))
                else:
                    await router.complete("hi", max_tokens=huge)
            assert info.value.kind is ErrorKind.INVALID_REQUEST
            assert info.value.message.startswith("$.options.max_tokens") and len(info.value.message) <= 300
        assert (await router.complete("hi", max_tokens=5)).provider == "a"
        assert router.running and not events(rec, "crashed")
        assert tree.supervisor.running == ["router", "agent:a"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
