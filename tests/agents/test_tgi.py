"""The TGI agent over a real loopback TGI server: /info limits drive fail-fast, features and concurrency;
/health drives reachability."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import trio
import trio.testing

from duckagents.agents import TGIAgent, agent_class
from duckagents.bus import SignalBus
from duckagents.config import ProviderConfig
from duckagents.errors import ErrorKind
from duckagents.providers import Completion, TGIProvider
from duckagents.signals import (
    FeatureCheck,
    FeatureReply,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    make_signal,
)
from duckagents.testing import Fault, TGIServer, open_tgi_server
from tests.helpers import Recorder, request, running_agent, send

CONFIG = ProviderConfig(name="tgi", kind="tgi")


@asynccontextmanager
async def tgi_agent(
    server: TGIServer, provider: TGIProvider | None = None, health_interval: float = 3600
) -> AsyncIterator[tuple[TGIAgent, SignalBus, Recorder]]:
    async with (
        provider or TGIProvider(base_url=server.url) as tgi,
        running_agent(CONFIG, tgi, agent_class=TGIAgent, health_interval=health_interval) as (
            agent, bus, rec,
        ),
    ):
        yield cast(TGIAgent, agent), bus, rec


async def outcome(rec: Recorder, request_id: str) -> ProviderResponse | ProviderErrorData:
    with trio.fail_after(10):  # a hang guard only
        [signal] = await rec.wait_for(
            lambda s: s.is_terminal and getattr(s.data, "request_id", None) == request_id
        )
    return cast(ProviderResponse | ProviderErrorData, signal.data)


def chats(server: TGIServer) -> int:
    return sum(1 for r in server.requests if r.path == "/v1/chat/completions")


def words(n: int) -> str:
    return " ".join(["word"] * n)


def test_registry_serves_tgi_with_this_agent() -> None:
    assert agent_class("tgi") is TGIAgent


async def test_context_limits_from_info_fail_fast_with_context_length() -> None:
    async with (
        open_tgi_server(max_input_tokens=20, max_total_tokens=40) as server,
        tgi_agent(server) as (agent, bus, rec),
    ):
        assert agent.info is not None and agent.info.max_total_tokens == 40  # fetched before started
        await send(bus, request("input", words(30), provider="tgi"))
        too_long = await outcome(rec, "input")
        assert isinstance(too_long, ProviderErrorData) and too_long.kind is ErrorKind.CONTEXT_LENGTH
        assert "max_input_tokens (20)" in too_long.message and not too_long.retryable
        await send(bus, request("total", words(10), provider="tgi", max_tokens=35))
        too_much = await outcome(rec, "total")
        assert isinstance(too_much, ProviderErrorData) and too_much.kind is ErrorKind.CONTEXT_LENGTH
        assert "max_total_tokens (40)" in too_much.message
        assert chats(server) == 0 and agent.metrics.snapshot().total_requests == 0
        assert any(r.path == "/tokenize" for r in server.requests)  # the server's tokenizer counted
        await send(bus, request("fits", words(5), provider="tgi", max_tokens=10))
        assert isinstance(await outcome(rec, "fits"), ProviderResponse)
        assert chats(server) == 1


async def test_features_report_the_window_from_info() -> None:
    async with open_tgi_server(max_total_tokens=3000) as server, tgi_agent(server) as (agent, bus, rec):
        await bus.publish(make_signal(FeatureCheck("f", ("tools",), provider="tgi"), "/test"))
        with trio.fail_after(10):
            [reply] = await rec.wait_for(lambda s: s.type == "feature_reply")
        data = cast(FeatureReply, reply.data)
        assert data.features.context_window == 3000 and data.supported == {"tools": True}
        assert agent.features().max_output_tokens == 2999


async def test_concurrency_is_bounded_by_max_concurrent_requests() -> None:
    gate, full = trio.Event(), trio.Event()
    running = peak = 0

    class Gated(TGIProvider):
        async def complete(self, req: ProviderRequest) -> Completion:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if running == 3:
                full.set()
            try:
                await gate.wait()
                return await super().complete(req)
            finally:
                running -= 1

    async with open_tgi_server(max_concurrent_requests=3) as server:
        async with tgi_agent(server, Gated(base_url=server.url)) as (agent, bus, rec):
            assert agent.config.max_concurrency == 3 and agent.configured_concurrency == 64
            for i in range(7):
                await send(bus, request(f"c{i}", provider="tgi"))
            with trio.fail_after(10):
                await full.wait()
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert running == 3  # the other four wait for a slot
            gate.set()
            with trio.fail_after(10):
                terminals = await rec.wait_for(lambda s: s.is_terminal, count=7)
            assert all(isinstance(s.data, ProviderResponse) for s in terminals) and peak == 3


async def test_a_bound_learnt_while_busy_applies_once_idle() -> None:
    async with open_tgi_server(max_concurrent_requests=2) as server, TGIProvider(base_url=server.url) as tgi:
        agent = TGIAgent(CONFIG, SignalBus(), tgi)
        await agent.slots.acquire()  # a request holds a slot
        await agent.refresh_info()
        assert agent.info is not None and agent.config.max_concurrency == 64  # not swapped under a holder
        agent.slots.release()
        await agent.prepare(request("p"))
        assert agent.config.max_concurrency == 2 and agent.slots.value == 2


async def test_health_follows_the_health_endpoint_and_reports_info() -> None:
    async with open_tgi_server(max_concurrent_requests=5) as server:
        server.healthy = False
        async with tgi_agent(server, health_interval=0.01) as (_, _bus, rec):
            with trio.fail_after(10):
                first = (await rec.wait_for(lambda s: s.type == "provider_status"))[0]
                status = cast(ProviderStatus, first.data)
                assert not status.reachable and status.detail["kind"] == ErrorKind.OVERLOADED.value
                assert status.detail["model_id"] == server.model_id
                assert status.detail["max_concurrent_requests"] == status.detail["max_concurrency"] == "5"
                server.healthy = True
                await rec.wait_for(lambda s: isinstance(s.data, ProviderStatus) and s.data.reachable)


async def test_unknown_limits_leave_the_judgement_to_the_server() -> None:
    async with open_tgi_server(max_input_tokens=20) as server, TGIProvider(base_url=server.url) as tgi:
        server.inject(*[Fault(status=500, path="/info") for _ in range(2)])
        agent = TGIAgent(CONFIG, SignalBus(), tgi)
        req = request("u", words(30))
        assert await agent.prepare(req) is req  # /info failed: no fail-fast on a guess
        assert "info_error" in await agent.resources()
