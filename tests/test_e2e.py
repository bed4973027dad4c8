"""End to end over real loopback sockets: router -> agent -> httpx -> wire server -> back.

Timed scenarios use a MockClock that flows at real speed (so network waits behave normally) and is
jumped forward by hand to pass breaker timeouts and retry-after windows without waiting for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from duckagents.app import Tree, open_router, open_tree
from duckagents.bus import SignalBus
from duckagents.codec import dumps_signal
from duckagents.config import Config, ModelConfig, ProviderConfig, RouterConfig
from duckagents.errors import ErrorKind, ProviderError
from duckagents.providers import MockProvider
from duckagents.resilience import BreakerConfig
from duckagents.router import is_final
from duckagents.signals import ProviderResponse
from duckagents.testing import (
    Fault,
    ScriptedReply,
    open_anthropic_server,
    open_ollama_server,
    open_openai_server,
    open_tgi_server,
)
from tests.helpers import Recorder, assert_one_terminal_per_request, request, send

KEY = "sk-e2e-secret-0123456789abcdefghij"
ENV = {"E2E_KEY": KEY}
CHAT = "/v1/chat/completions"

Opener = Callable[..., AbstractAsyncContextManager[Any]]
SERVERS: dict[str, tuple[Opener, Callable[[Any], str], str | None]] = {
    "openai": (open_openai_server, lambda s: s.base_url, "gpt-4o-mini"),
    "anthropic": (open_anthropic_server, lambda s: s.url, "claude-sonnet-4-5"),
    "ollama": (open_ollama_server, lambda s: s.url, "llama3.2"),
    "tgi": (open_tgi_server, lambda s: s.url, None),
}


@pytest.fixture
def flowing_clock() -> trio.testing.MockClock:
    """Real-speed time that tests may also jump forward."""
    return trio.testing.MockClock(rate=1.0)


def http_config(name: str, kind: str, url: str, model: str | None, **kwargs: Any) -> ProviderConfig:
    return ProviderConfig(
        name=name, kind=kind, base_url=url, api_key_env="E2E_KEY", default_model=model, **kwargs  # type: ignore[arg-type]
    )


@asynccontextmanager
async def recorded_tree(config: Config, **kwargs: Any) -> AsyncIterator[tuple[Tree, Recorder]]:
    bus = SignalBus()
    recorder = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        async with open_tree(config, bus=bus, environ=ENV, **kwargs) as tree:
            yield tree, recorder
        bus.close()


def chat_calls(server: Any, path: str = CHAT) -> int:
    return sum(1 for r in server.requests if r.path == path)


@pytest.mark.parametrize("kind", sorted(SERVERS))
async def test_complete_and_stream_through_every_provider_kind(kind: str) -> None:
    opener, url, model = SERVERS[kind]
    async with opener(api_key=KEY) as server:
        config = Config(providers=(http_config(kind, kind, url(server), model),), health_interval=1000.0)
        async with recorded_tree(config) as (tree, rec):
            server.script.push(ScriptedReply(text="hello over the wire"))
            response = await tree.router.complete("hi")
            assert (response.provider, response.content) == (kind, "hello over the wire")
            assert response.usage.completion_tokens > 0
            server.script.push(ScriptedReply(text="streamed over the wire", chunk_size=5))
            async with tree.router.stream("hi") as stream:
                pieces = [chunk.delta async for chunk in stream]
            assert "".join(pieces) == "streamed over the wire" and len(pieces) > 1
            assert stream.response is not None and stream.response.content == "streamed over the wire"
    assert_one_terminal_per_request(rec)
    # The key went over the wire (the server checked it) but into no signal.
    assert not any(KEY in dumps_signal(s) for s in rec.signals)


async def test_open_router_from_a_toml_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_openai_server(api_key=KEY) as server:
        path = tmp_path / "duckagents.toml"
        path.write_text(
            f'[[providers]]\nname = "gpt"\nkind = "openai"\nbase_url = "{server.base_url}"\n'
            'api_key_env = "E2E_KEY"\ndefault_model = "gpt-4o-mini"\n'
        )
        monkeypatch.setenv("E2E_KEY", KEY)
        server.script.push(ScriptedReply(text="configured by file"))
        async with open_router(str(path)) as router:
            assert (await router.complete("hi")).content == "configured by file"


async def test_a_missing_api_key_disables_that_provider_only() -> None:
    """The provider whose key variable is unset shows as down with the reason and takes no request; the
    others serve."""
    config = Config(
        providers=(
            http_config("gpt", "openai", "http://127.0.0.1:9", "gpt-4o-mini", priority=0),
            ProviderConfig(name="backup", kind="mock", priority=5, models=("*",)),
        )
    )
    async with open_tree(config, environ={}) as tree:
        statuses = {s.provider: s for s in await tree.router.status()}
        assert statuses["gpt"].reachable is False
        assert statuses["gpt"].detail["disabled"] == "E2E_KEY is not set"
        reply = await tree.router.complete("hi")
        assert reply.provider == "backup" and reply.attempt == 1  # never tried on the disabled one
        with pytest.raises(ProviderError) as info:
            await tree.router.complete("pinned", provider="gpt")
    assert info.value.kind is ErrorKind.NO_PROVIDER and "E2E_KEY is not set" in str(info.value)


async def test_breaker_opens_on_5xx_fails_over_and_half_open_trial_closes(
    flowing_clock: trio.testing.MockClock,
) -> None:
    async with open_openai_server(api_key=KEY) as server:
        config = Config(
            providers=(
                http_config("gpt", "openai", server.base_url, "gpt-4o-mini",
                            breaker=BreakerConfig(failure_threshold=3, open_timeout=30.0)),
                ProviderConfig(name="backup", kind="mock", priority=1),
            ),
            router=RouterConfig(backoff_initial=0.0),
            models={"gpt-4o-mini": ModelConfig(fallbacks=("mock-1",))},  # the mock is a fallback by name
            health_interval=10_000.0,
        )
        async with recorded_tree(config) as (tree, rec):
            router = tree.router
            server.inject(*(Fault(status=500, path=CHAT) for _ in range(3)))
            for _ in range(3):
                response = await router.complete("hi")
                assert (response.provider, response.attempt) == ("backup", 2)
            assert chat_calls(server) == 3
            await rec.wait_for(
                lambda s: s.provider == "gpt" and s.type == "provider_status"
                and s.data.breaker_state == "open",
                within=30,
            )
            # Open: the router does not even try the upstream.
            assert (await router.complete("hi")).provider == "backup"
            assert chat_calls(server) == 3
            flowing_clock.jump(31.0)
            await rec.wait_for(
                lambda s: s.provider == "gpt" and s.type == "provider_status"
                and s.data.breaker_state == "half_open",
                within=30,
            )
            server.script.push(ScriptedReply(text="back again"))
            trial = await router.complete("hi")
            assert (trial.provider, trial.content) == ("gpt", "back again")
            assert chat_calls(server) == 4
            closed = await rec.wait_for(
                lambda s: s.provider == "gpt" and s.type == "provider_status"
                and s.data.breaker_state == "closed",
                count=2,
                within=30,
            )
            assert closed[-1].data.health > 0.5  # type: ignore[union-attr]
            assert (await router.complete("hi")).provider == "gpt"
    assert_one_terminal_per_request(rec)
    failures = [
        s for s in rec.terminals() if s.source == "/agents/gpt" and not isinstance(s.data, ProviderResponse)
    ]
    assert [s.data.kind for s in failures] == [ErrorKind.UPSTREAM_5XX] * 3  # type: ignore[union-attr]


async def test_429_retry_after_is_honoured_while_another_provider_serves(
    flowing_clock: trio.testing.MockClock,
) -> None:
    async with open_openai_server(api_key=KEY) as server:
        config = Config(
            providers=(
                http_config("gpt", "openai", server.base_url, "gpt-4o-mini"),
                ProviderConfig(name="backup", kind="mock", priority=1),
            ),
            router=RouterConfig(backoff_initial=0.0),
            models={"gpt-4o-mini": ModelConfig(fallbacks=("mock-1",))},
            health_interval=10_000.0,
        )
        async with recorded_tree(config) as (tree, rec):
            router = tree.router
            server.inject(Fault(status=429, error_type="rate_limit_exceeded", headers={"retry-after": "20"},
                                path=CHAT))
            assert (await router.complete("hi")).provider == "backup"
            [limited] = [s for s in rec.terminals() if s.source == "/agents/gpt"]
            assert limited.data.kind is ErrorKind.RATE_LIMITED  # type: ignore[union-attr]
            assert limited.data.retry_after == pytest.approx(20.0)  # type: ignore[union-attr]
            # The agent's limiter holds the block...
            agent = tree.agents["gpt"]
            assert agent.limiter.blocked_until == pytest.approx(trio.current_time() + 20.0, abs=1.0)
            # ...so a request sent straight to it is refused locally, never reaching the upstream.
            await send(tree.bus, request("direct", provider="gpt", deadline=trio.current_time() + 5))
            [refused] = await rec.wait_for(lambda s: s.subject == "direct#1" and s.is_terminal, within=30)
            assert refused.data.kind is ErrorKind.RATE_LIMITED  # type: ignore[union-attr]
            # And the router sends everything to the other provider meanwhile.
            for _ in range(3):
                assert (await router.complete("hi")).provider == "backup"
            with pytest.raises(ProviderError) as info:
                await router.complete("hi", provider="gpt", timeout=5)
            assert info.value.kind is ErrorKind.RATE_LIMITED
            assert chat_calls(server) == 1
            flowing_clock.jump(21.0)
            server.script.push(ScriptedReply(text="limits lifted"))
            response = await router.complete("hi")
            assert (response.provider, response.content) == ("gpt", "limits lifted")
            assert chat_calls(server) == 2


async def test_agent_crash_mid_request_over_http_stack(autojump_clock: trio.testing.MockClock) -> None:
    """A fault of one agent's machinery (the mock raising AgentFault) while an HTTP agent serves: the
    supervisor restarts the broken agent, the request is answered once, later requests succeed."""
    buggy = MockProvider()
    buggy.crash_agent_next()
    async with open_openai_server(api_key=KEY) as server:
        config = Config(
            providers=(
                ProviderConfig(name="buggy", kind="mock"),
                http_config("gpt", "openai", server.base_url, "gpt-4o-mini", priority=1),
            ),
            models={"mock-1": ModelConfig(fallbacks=("gpt-4o-mini",))},
            health_interval=10_000.0,
        )
        async with recorded_tree(config, providers={"buggy": buggy}) as (tree, rec):
            server.script.push(ScriptedReply(text="saved by http"))
            response = await tree.router.complete("hi", request_id="crash", timeout=10_000)
            assert (response.provider, response.content, response.attempt) == ("gpt", "saved by http", 2)
            await rec.wait_for(lambda s: s.type == "supervisor_event" and s.data.event == "restarted")
            assert tree.agent_supervisors["buggy"].restarts == 1 and tree.supervisor.restarts == 0
            assert [s.source for s in rec.terminals("crash#1")] == ["/agents/buggy"]
            assert len([s for s in rec.signals if is_final(s) and s.subject == "crash"]) == 1
            after = await tree.router.complete("hi", timeout=10_000)
            assert after.provider == "buggy"
    assert_one_terminal_per_request(rec)
