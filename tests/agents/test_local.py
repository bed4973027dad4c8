"""The local (Ollama) agent over a real loopback Ollama server: /api/ps resources, load/unload, pulls
with progress signals, automatic pulls, the single-GPU concurrency default."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing

from duckagents.agents import LOCAL_MAX_CONCURRENCY, LocalAgent, agent_class, build_agent
from duckagents.bus import SignalBus
from duckagents.config import ProviderConfig
from duckagents.errors import ConfigError, ErrorKind, ProviderError
from duckagents.providers import OllamaProvider
from duckagents.signals import ProgressEvent, ProviderErrorData, ProviderResponse, ProviderStatus, Signal
from duckagents.testing import Fault, OllamaServer, StreamReply, ndjson, open_ollama_server
from tests.helpers import Recorder, request, running_agent, send


def config(**options: Any) -> ProviderConfig:
    return ProviderConfig(name="local", kind="ollama", default_model="llama3.2", options=options)


@asynccontextmanager
async def local_agent(
    server: OllamaServer, **options: Any
) -> AsyncIterator[tuple[LocalAgent, SignalBus, Recorder]]:
    async with (
        OllamaProvider(base_url=server.url, default_model="llama3.2") as provider,
        running_agent(config(**options), provider, agent_class=LocalAgent, health_interval=3600) as (
            agent, bus, rec,
        ),
    ):
        yield cast(LocalAgent, agent), bus, rec


async def wait_for(rec: Recorder, predicate: Callable[[Signal], bool]) -> Signal:
    with trio.fail_after(10):  # a hang guard only
        return (await rec.wait_for(predicate))[-1]


async def outcome(rec: Recorder, request_id: str) -> ProviderResponse | ProviderErrorData:
    signal = await wait_for(
        rec, lambda s: s.is_terminal and getattr(s.data, "request_id", None) == request_id
    )
    return cast(ProviderResponse | ProviderErrorData, signal.data)


def progress(rec: Recorder) -> list[ProgressEvent]:
    return [cast(ProgressEvent, s.data) for s in rec.of("progress", provider="local")]


def paths(server: OllamaServer, *wanted: str) -> list[str]:
    return [r.path for r in server.requests if r.path in wanted]


def progress_is(prefix: str) -> Callable[[Signal], bool]:
    return lambda s: isinstance(s.data, ProgressEvent) and s.data.status.startswith(prefix)


def loaded_in_status(name: str) -> Callable[[Signal], bool]:
    def check(s: Signal) -> bool:
        return isinstance(s.data, ProviderStatus) and s.data.detail.get("loaded_models") == name

    return check


async def test_registry_and_single_gpu_concurrency_default() -> None:
    assert agent_class("ollama") is LocalAgent
    agent = build_agent(config(), SignalBus())
    assert isinstance(agent, LocalAgent)
    assert agent.config.max_concurrency == agent.slots.value == LOCAL_MAX_CONCURRENCY
    explicit = LocalAgent(attrs.evolve(config(), max_concurrency=5), SignalBus(), agent.provider)
    assert explicit.config.max_concurrency == 5
    for bad in ({"auto_pull": "yes"}, {"ps_interval": 0}):
        with pytest.raises(ValueError):
            config(**bad)  # refused by the config already
        unchecked = config()
        object.__setattr__(unchecked, "options", bad)
        with pytest.raises(ConfigError):
            LocalAgent(unchecked, SignalBus(), agent.provider)
    await agent.provider.aclose()


async def test_load_and_unload_show_in_api_ps_and_in_the_status_detail() -> None:
    async with open_ollama_server() as server, local_agent(server) as (agent, _, rec):
        assert server.loaded_models() == []
        await agent.load("gemma:2b")
        assert server.loaded_models() == ["gemma:2b"]
        status = cast(ProviderStatus, (await wait_for(rec, loaded_in_status("gemma:2b"))).data)
        size = str(server.store.models["gemma:2b"].size)
        assert status.detail["vram_bytes"] == status.detail["size_bytes"] == size
        assert status.detail["model:gemma:2b"].startswith(f"size={size} size_vram={size} expires_at=")
        await agent.unload("gemma:2b")
        assert server.loaded_models() == []
        await wait_for(rec, loaded_in_status(""))
        assert (await agent.status()).detail["vram_bytes"] == "0"


async def test_background_poll_sees_models_loaded_behind_the_agents_back() -> None:
    async with open_ollama_server() as server, local_agent(server, ps_interval=0.01) as (_, _bus, rec):
        await wait_for(rec, loaded_in_status(""))
        server.store.touch("llava:latest", None)  # someone else's request loaded it
        await wait_for(rec, loaded_in_status("llava:latest"))


async def test_pull_publishes_progress_in_order_ending_with_success() -> None:
    async with open_ollama_server() as server, local_agent(server) as (agent, _, rec):
        async with trio.open_nursery() as nursery:  # two callers, one download
            nursery.start_soon(agent.pull, "mistral")
            nursery.start_soon(agent.pull, "mistral:latest")
        await wait_for(rec, progress_is("success"))
        events = progress(rec)
        digest = server.store.models["mistral:latest"].digest[:12]
        assert [e.status for e in events] == [
            "pulling manifest", *[f"pulling {digest}"] * 3, "verifying sha256 digest", "writing manifest",
            "success",
        ]
        assert {e.task for e in events} == {"pull mistral:latest"}
        completed = [e.completed for e in events if e.completed is not None]
        totals = {e.total for e in events if e.total is not None}
        assert len(completed) == 3 and completed == sorted(completed) and totals == {completed[-1]}
        assert paths(server, "/api/pull") == ["/api/pull"]


async def test_failed_pull_raises_and_reports_an_error_progress() -> None:
    async with open_ollama_server() as server, local_agent(server) as (agent, _, rec):
        server.inject(Fault(status=500, message="disk full", path="/api/pull"))
        with pytest.raises(ProviderError, match="disk full"):
            await agent.pull("mistral")
        await wait_for(rec, progress_is("error: disk full"))


@pytest.mark.parametrize("stream", [False, True])
async def test_auto_pull_on_not_found_then_the_request_succeeds(stream: bool) -> None:
    async with open_ollama_server() as server, local_agent(server, auto_pull=True) as (_, bus, rec):
        await send(bus, attrs.evolve(request("a", "hi", provider="local", stream=stream), model="phi3"))
        response = await outcome(rec, "a")
        assert isinstance(response, ProviderResponse) and response.content == "echo: hi"
        assert paths(server, "/api/chat", "/api/pull") == ["/api/chat", "/api/pull", "/api/chat"]
        assert [e.status for e in progress(rec)][-1] == "success"
        assert "phi3:latest" in server.store.models


async def test_without_auto_pull_not_found_is_the_answer() -> None:
    async with open_ollama_server() as server, local_agent(server) as (_, bus, rec):
        await send(bus, attrs.evolve(request("n", provider="local"), model="phi3"))
        failure = await outcome(rec, "n")
        assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.NOT_FOUND
        assert paths(server, "/api/pull") == [] and progress(rec) == []


async def test_a_pull_outliving_the_request_deadline_goes_on_in_the_agent(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.rate = 1.0  # time flows (so the hang guards work); the jump below does the waiting
    gate = trio.Event()

    async def held_pull() -> AsyncIterator[bytes]:
        yield ndjson({"status": "pulling manifest"})
        await gate.wait()
        yield ndjson({"status": "success"})

    async with open_ollama_server() as server, local_agent(server, auto_pull=True) as (agent, bus, rec):
        server.inject(Fault(reply=StreamReply(held_pull()), path="/api/pull"))
        deadline = trio.current_time() + 10.0
        await send(bus, attrs.evolve(request("d", provider="local", deadline=deadline), model="phi3"))
        await wait_for(rec, progress_is("pulling manifest"))
        assert "phi3" in (await agent.resources())["pulling"]
        mock_clock.jump(9.5)  # past the request's wait for the pull (deadline - 1 s), not its deadline
        failure = await outcome(rec, "d")
        assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.NOT_FOUND
        assert failure.retryable and "pulling it (pulling manifest)" in failure.message
        server.store.add("phi3")
        gate.set()  # the pull was not cancelled with the request: it completes now
        await wait_for(rec, progress_is("success"))
        await send(bus, attrs.evolve(request("later", provider="local"), model="phi3"))
        assert isinstance(await outcome(rec, "later"), ProviderResponse)
        assert paths(server, "/api/pull") == ["/api/pull"]


async def test_load_with_auto_pull_pulls_a_missing_model_first() -> None:
    async with open_ollama_server() as server, local_agent(server, auto_pull=True) as (agent, _, rec):
        await agent.load("qwen2")
        assert server.loaded_models() == ["qwen2:latest"]
        assert progress(rec)[-1].status == "success"
        await wait_for(rec, loaded_in_status("qwen2:latest"))
