"""Routing policy over real loopback wire servers (real HTTP): model names, fallback chains, context-window
fallbacks, stream timeouts, health-aware choice, cost and budgets (docs/routing.md).

These run on the real clock (sockets and an autojumping clock do not mix); the timeouts they wait for
are fractions of a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from duckagents.app import Tree, open_tree
from duckagents.bus import SignalBus
from duckagents.config import Config, ModelConfig, ProviderConfig, RouterConfig
from duckagents.costs import BUILTIN_PRICES, Budget, ModelPrice
from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import FinishReason
from duckagents.router import DISPATCH, is_final
from duckagents.signals import ProviderErrorData, ProviderRequest, ProviderResponse
from duckagents.testing import (
    Fault,
    ScriptedReply,
    open_anthropic_server,
    open_ollama_server,
    open_openai_server,
    open_tgi_server,
)
from tests.helpers import Recorder, assert_one_terminal_per_request

KEY = "sk-routing-0123456789abcdefghijkl"
ENV = {"ROUTING_KEY": KEY}
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def http(name: str, kind: str, url: str, model: str | None = None, **kwargs: Any) -> ProviderConfig:
    """A provider on a loopback server (keys only for the kinds that take one)."""
    key = "ROUTING_KEY" if kind in ("openai", "anthropic") else None
    return ProviderConfig(
        name=name, kind=kind, base_url=url, api_key_env=key, default_model=model, **kwargs  # type: ignore[arg-type]
    )


@asynccontextmanager
async def tree_of(config: Config) -> AsyncIterator[tuple[Tree, Recorder]]:
    bus = SignalBus()
    recorder = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        async with open_tree(config, bus=bus, environ=ENV) as tree:
            yield tree, recorder
        bus.close()


def config_of(
    *providers: ProviderConfig, models: dict[str, ModelConfig] | None = None, **router: Any
) -> Config:
    return Config(
        providers=providers, router=RouterConfig(backoff_initial=0.0, **router), models=models or {},
        health_interval=10_000.0,
    )


def chat_calls(server: Any, path: str = CHAT) -> int:
    return sum(1 for r in server.requests if r.path == path)


def attempts(rec: Recorder, request_id: str) -> list[tuple[str | None, str | None]]:
    """(agent, model) of each attempt of a request, in order."""
    return [
        (s.provider, s.data.model)  # type: ignore[union-attr]
        for s in rec.of("provider_request", source=DISPATCH)
        if isinstance(s.data, ProviderRequest) and s.data.request_id == request_id
    ]


def finals(rec: Recorder, request_id: str) -> list[Any]:
    return [s.data for s in rec.signals if is_final(s) and s.subject == request_id]


# --- model names ------------------------------------------------------------------------------------


async def test_a_misspelt_model_fails_with_what_is_served_and_the_closest_name() -> None:
    async with open_openai_server(api_key=KEY) as gpt, open_ollama_server() as ollama:
        config = config_of(
            http("gpt", "openai", gpt.base_url, "gpt-4o-mini", models=("gpt-4o", "gpt-4.1*")),
            http("local", "ollama", ollama.url, "llama3.2"),
            ProviderConfig(name="backup", kind="mock", priority=9),
        )
        async with tree_of(config) as (tree, rec):
            with pytest.raises(ProviderError) as info:
                await tree.router.complete("hi", model="gpt-4o-mnii", request_id="typo")
            # The right name still works, and nothing else answers for it (not the mock).
            ok = await tree.router.complete("hi", model="gpt-4o-mini", request_id="right")
    error = info.value
    assert error.kind is ErrorKind.NO_PROVIDER and error.attempt == 0
    assert "no provider serves model 'gpt-4o-mnii' (did you mean 'gpt-4o-mini'?)" in error.message
    assert "served: gpt-4o-mini, gpt-4o, gpt-4.1*, llama3.2, mock-1" in error.message
    assert attempts(rec, "typo") == []  # no agent was asked
    assert len(finals(rec, "typo")) == 1
    assert (ok.provider, ok.model) == ("gpt", "gpt-4o-mini")
    assert chat_calls(gpt) == 1 and not [r for r in ollama.requests if r.path == "/api/chat"]
    assert_one_terminal_per_request(rec)


async def test_a_pattern_routes_to_the_agents_whose_models_match_only() -> None:
    async with (
        open_openai_server(api_key=KEY) as gpt,
        open_ollama_server() as ollama,
        open_tgi_server() as tgi,
    ):
        config = config_of(
            http("tgi", "tgi", tgi.url),  # no list: its default model only
            http("local", "ollama", ollama.url, "llama3.2", models=("gemma:*",)),
            http("gpt", "openai", gpt.base_url, "gpt-4o-mini", models=("gpt-4o*",)),
            strategy="round_robin",
        )
        async with tree_of(config) as (tree, rec):
            gemma = [await tree.router.complete("hi", model="gemma:2b") for _ in range(3)]
            gpt4o = await tree.router.complete("hi", model="gpt-4o")
            with pytest.raises(ProviderError) as info:
                await tree.router.complete("hi", model="gemma2")  # matches no pattern
    assert {(r.provider, r.model) for r in gemma} == {("local", "gemma:2b")}
    assert (gpt4o.provider, gpt4o.model) == ("gpt", "gpt-4o")
    assert info.value.kind is ErrorKind.NO_PROVIDER and "gemma:*" in info.value.message
    assert not [r for r in tgi.requests if r.path in ("/generate", "/generate_stream", CHAT)]
    assert_one_terminal_per_request(rec)


async def test_a_mock_in_a_config_answers_only_where_a_chain_names_it() -> None:
    async with open_openai_server(api_key=KEY) as gpt:
        providers = (
            http("gpt", "openai", gpt.base_url, "gpt-4o-mini"),
            ProviderConfig(name="backup", kind="mock", priority=9),
        )
        async with tree_of(config_of(*providers, strategy="round_robin")) as (tree, _):
            served = {(await tree.router.complete("hi")).provider for _ in range(6)}
            gpt.inject(*(Fault(status=500, path=CHAT) for _ in range(3)))
            with pytest.raises(ProviderError) as info:
                await tree.router.complete("hi")
        assert served == {"gpt"}  # round robin does not hand every other request to the mock
        assert info.value.kind is ErrorKind.UPSTREAM_5XX  # and it does not answer real traffic after 5xx
        chained = config_of(*providers, models={"gpt-4o-mini": ModelConfig(fallbacks=("mock-1",))})
        async with tree_of(chained) as (tree, _):
            gpt.inject(Fault(status=500, path=CHAT))
            rescued = await tree.router.complete("hi")
        assert (rescued.provider, rescued.model) == ("backup", "mock-1")


# --- fallback chains --------------------------------------------------------------------------------


async def test_a_fallback_chain_crosses_three_wire_servers_with_one_final_and_signals_per_hop() -> None:
    async with (
        open_openai_server(api_key=KEY) as gpt,
        open_anthropic_server(api_key=KEY) as claude,
        open_ollama_server() as ollama,
    ):
        config = config_of(
            http("gpt", "openai", gpt.base_url, "gpt-4o-mini"),
            http("claude", "anthropic", claude.url, "claude-sonnet-4-6"),
            http("local", "ollama", ollama.url, "llama3.2"),
            models={"gpt-4o-mini": ModelConfig(fallbacks=("claude-sonnet-4-6", "llama3.2"))},
        )
        async with tree_of(config) as (tree, rec):
            gpt.inject(Fault(status=429, error_type="rate_limit_exceeded", path=CHAT))
            claude.inject(Fault(status=529, path=MESSAGES))
            ollama.script.push(ScriptedReply(text="the local model answers"))
            response = await tree.router.complete("hi", model="gpt-4o-mini", request_id="chain")
        # Each upstream was called once: an agent is not retried while a fallback can take over.
        assert (chat_calls(gpt), chat_calls(claude, MESSAGES)) == (1, 1)
    assert (response.provider, response.content, response.attempt) == ("local", "the local model answers", 3)
    assert response.model.startswith("llama3.2")  # the response says which model answered
    assert attempts(rec, "chain") == [
        ("gpt", "gpt-4o-mini"), ("claude", "claude-sonnet-4-6"), ("local", "llama3.2"),
    ]
    hops = [rec.terminals(f"chain#{k}") for k in (1, 2, 3)]
    assert [len(t) for t in hops] == [1, 1, 1]  # every hop's attempt has exactly one terminal
    assert [t[0].source for t in hops] == ["/agents/gpt", "/agents/claude", "/agents/local"]
    assert [getattr(t[0].data, "kind", None) for t in hops] == [
        ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, None,
    ]
    assert finals(rec, "chain") == [response]  # exactly one final, the last hop's answer
    assert_one_terminal_per_request(rec)


async def test_the_chain_is_not_followed_for_a_mistake_of_the_callers() -> None:
    async with open_openai_server(api_key=KEY) as gpt:
        config = config_of(
            http("gpt", "openai", gpt.base_url, "gpt-4o-mini"),
            ProviderConfig(name="backup", kind="mock"),
            models={"gpt-4o-mini": ModelConfig(fallbacks=("mock-1",))},
        )
        async with tree_of(config) as (tree, rec):
            gpt.inject(Fault(status=401, error_type="invalid_api_key", path=CHAT))
            with pytest.raises(ProviderError) as info:
                await tree.router.complete("hi", request_id="auth")
    assert info.value.kind is ErrorKind.AUTH
    assert attempts(rec, "auth") == [("gpt", None)]


async def test_a_request_too_long_for_its_model_goes_down_the_context_window_chain() -> None:
    long_prompt = "word " * 400  # ~500 tokens
    async with open_openai_server(api_key=KEY, context_window=300) as gpt, open_anthropic_server(
        api_key=KEY
    ) as claude, open_ollama_server() as ollama:
        config = config_of(
            http("gpt", "openai", gpt.base_url, "gpt-4o-mini"),
            http("claude", "anthropic", claude.url, "claude-sonnet-4-6"),
            http("local", "ollama", ollama.url, "llama3.2"),
            models={
                "gpt-4o-mini": ModelConfig(
                    fallbacks=("llama3.2",), context_window_fallbacks=("claude-sonnet-4-6",)
                ),
            },
        )
        async with tree_of(config) as (tree, rec):
            claude.script.push(ScriptedReply(text="plenty of room here"))
            response = await tree.router.complete(long_prompt, model="gpt-4o-mini", request_id="long")
    # The upstream said the prompt is too long: the context-window chain, not the general one, applies.
    assert (response.provider, response.content) == ("claude", "plenty of room here")
    assert attempts(rec, "long") == [("gpt", "gpt-4o-mini"), ("claude", "claude-sonnet-4-6")]
    [too_long] = rec.terminals("long#1")
    assert too_long.data.kind is ErrorKind.CONTEXT_LENGTH  # type: ignore[union-attr]
    assert not [r for r in ollama.requests if r.path == "/api/chat"]
    assert_one_terminal_per_request(rec)


async def test_a_context_window_fallback_skips_models_whose_window_is_too_small() -> None:
    prompt = "word " * 3000  # ~3,750 tokens
    async with open_anthropic_server(api_key=KEY) as claude:
        config = config_of(
            http("haiku", "anthropic", claude.url, "claude-haiku-4-5", options={"context_window": 2000}),
            http("opus", "anthropic", claude.url, "claude-opus-4-1", options={"context_window": 3000}),
            http("sonnet", "anthropic", claude.url, "claude-sonnet-4-6"),
            models={
                "claude-haiku-4-5": ModelConfig(
                    context_window_fallbacks=("claude-opus-4-1", "claude-sonnet-4-6")
                ),
            },
        )
        async with tree_of(config) as (tree, rec):
            response = await tree.router.complete(
                prompt, model="claude-haiku-4-5", max_tokens=100, request_id="w"
            )
    # The router knows both small windows from the agents' features: neither gets an attempt.
    assert (response.provider, response.attempt) == ("sonnet", 1)
    assert attempts(rec, "w") == [("sonnet", "claude-sonnet-4-6")]
    assert chat_calls(claude, MESSAGES) == 1
    assert_one_terminal_per_request(rec)


async def test_a_model_missing_on_ollama_moves_on_and_the_final_error_says_to_pull_it() -> None:
    async with open_ollama_server(models=()) as ollama:  # Ollama runs, without any model
        local = http("ollama", "ollama", ollama.url)
        mock = ProviderConfig(name="mock", kind="mock", default_model="mock-1", priority=10)
        alone = config_of(local, mock)
        async with tree_of(alone) as (tree, rec):
            with pytest.raises(ProviderError) as info:
                await tree.router.complete("hello", request_id="missing")
            assert info.value.kind is ErrorKind.NOT_FOUND
            assert "duckagents pull llama3.2" in info.value.message
            # Remembered until the agent's next status: a second request does not even try it.
            with pytest.raises(ProviderError) as again:
                await tree.router.complete("hello", request_id="again")
            assert "duckagents pull llama3.2" in again.value.message and attempts(rec, "again") == []
        # The embedded default (mock, plus Ollama when it answers) falls back to the mock.
        embedded = config_of(local, mock, models={"llama3.2": ModelConfig(fallbacks=("mock-1",))})
        async with tree_of(embedded) as (tree, rec):
            response = await tree.router.complete("hello", request_id="fallback")
    assert (response.provider, response.model) == ("mock", "mock-1")
    [first] = rec.terminals("fallback#1")
    assert first.data.kind is ErrorKind.NOT_FOUND  # type: ignore[union-attr]


async def test_a_refusal_goes_down_the_content_policy_chain_only_when_the_model_has_one() -> None:
    async with open_anthropic_server(api_key=KEY) as claude, open_ollama_server() as ollama:
        providers = (
            http("claude", "anthropic", claude.url, "claude-sonnet-4-6"),
            http("local", "ollama", ollama.url, "llama3.2"),
        )
        refusal = ScriptedReply(text="I can't help with that.", raw_finish_reason="refusal")
        async with tree_of(config_of(*providers)) as (tree, _):
            claude.script.push(refusal)
            refused = await tree.router.complete("hi", model="claude-sonnet-4-6")
        assert refused.finish_reason is FinishReason.REFUSAL and refused.provider == "claude"
        chained = config_of(
            *providers, models={"claude-sonnet-4-6": ModelConfig(content_policy_fallbacks=("llama3.2",))}
        )
        async with tree_of(chained) as (tree, rec):
            claude.script.push(refusal)
            ollama.script.push(ScriptedReply(text="here you go"))
            answered = await tree.router.complete("hi", model="claude-sonnet-4-6", request_id="policy")
            # When the fallback fails too, the refusal is the answer (a refusal beats a failure).
            claude.script.push(refusal)
            ollama.inject(*(Fault(status=500, path="/api/chat") for _ in range(3)))  # every attempt
            kept = await tree.router.complete("hi", model="claude-sonnet-4-6", request_id="kept")
    assert (answered.provider, answered.content, answered.attempt) == ("local", "here you go", 2)
    [first] = rec.terminals("policy#1")
    assert isinstance(first.data, ProviderResponse) and first.data.finish_reason is FinishReason.REFUSAL
    assert (kept.provider, kept.finish_reason, kept.attempt) == ("claude", FinishReason.REFUSAL, 1)
    assert finals(rec, "kept") == [kept]
    assert attempts(rec, "kept") == [("claude", "claude-sonnet-4-6")] + [("local", "llama3.2")] * 3
    assert_one_terminal_per_request(rec)


# --- stream timeouts --------------------------------------------------------------------------------


async def test_a_stream_whose_first_chunk_never_comes_times_out_and_fails_over() -> None:
    async with open_openai_server(api_key=KEY) as slow, open_openai_server(api_key=KEY) as fast:
        config = config_of(
            http("slow", "openai", slow.base_url, "gpt-4o-mini", first_chunk_timeout=0.3),
            http("fast", "openai", fast.base_url, "gpt-4o-mini", priority=1),
        )
        async with tree_of(config) as (tree, rec):
            slow.inject(Fault(first_byte_delay=30.0, path=CHAT))  # headers, then nothing
            fast.script.push(ScriptedReply(text="from the fast one", chunk_size=4))
            started = trio.current_time()
            async with tree.router.stream("hi", request_id="ttft") as stream:
                text = "".join([chunk.delta async for chunk in stream])
            elapsed = trio.current_time() - started
    assert text == "from the fast one" and stream.response is not None
    assert stream.response.provider == "fast"
    [timed_out] = rec.terminals("ttft#1")
    failure = timed_out.data
    assert isinstance(failure, ProviderErrorData) and failure.kind is ErrorKind.TIMEOUT
    assert "first_chunk_timeout" in failure.message and not failure.partial and failure.retryable
    assert elapsed < 10  # the first chunk timeout fired, not the request's 120 s deadline
    assert_one_terminal_per_request(rec)


async def test_a_stream_that_stalls_after_a_chunk_times_out_partial_without_failover() -> None:
    async with open_openai_server(api_key=KEY) as stalling, open_openai_server(api_key=KEY) as other:
        config = config_of(
            http("stalling", "openai", stalling.base_url, "gpt-4o-mini", idle_chunk_timeout=0.3),
            http("other", "openai", other.base_url, "gpt-4o-mini", priority=1),
        )
        async with tree_of(config) as (tree, rec):
            stalling.script.push(ScriptedReply(text="one two three four five", chunk_size=4))
            stalling.inject(Fault(stall_after=3, stall=30.0, path=CHAT))  # role, two pieces, then silence
            received: list[str] = []
            with pytest.raises(ProviderError) as info:
                async with tree.router.stream("hi", request_id="idle") as stream:
                    async for chunk in stream:
                        received.append(chunk.delta)
    error = info.value
    assert error.kind is ErrorKind.TIMEOUT and error.partial and "idle_chunk_timeout" in error.message
    assert "".join(received) == "one two "  # what came before the stall reached the caller
    assert chat_calls(other) == 0  # a stream that delivered chunks never fails over
    assert attempts(rec, "idle") == [("stalling", None)]
    assert_one_terminal_per_request(rec)


# --- health-aware choice ----------------------------------------------------------------------------


async def test_an_agent_whose_probe_fails_gets_no_first_attempts_while_a_healthy_one_exists() -> None:
    async with open_openai_server(api_key=KEY) as sick, open_openai_server(api_key=KEY) as well:
        sick.inject(Fault(status=500, path="/v1/models"))  # its first health probe fails
        config = config_of(
            http("sick", "openai", sick.base_url, "gpt-4o-mini", priority=0),  # preferred by priority
            http("well", "openai", well.base_url, "gpt-4o-mini", priority=1),
        )
        async with tree_of(config) as (tree, rec):
            statuses = {s.provider: s for s in await tree.router.status()}
            assert statuses["sick"].reachable is False and statuses["well"].reachable is True
            served = [(await tree.router.complete("hi")).provider for _ in range(5)]
            assert served == ["well"] * 5 and chat_calls(sick) == 0
            # It still serves when the healthy one cannot.
            well.inject(Fault(status=500, path=CHAT))
            rescued = await tree.router.complete("hi", request_id="rescue")
            assert rescued.provider == "sick"
            assert attempts(rec, "rescue") == [("well", None), ("sick", None)]
    assert_one_terminal_per_request(rec)


# --- cost and budgets -------------------------------------------------------------------------------


async def test_cost_of_known_models_matches_the_price_table_and_shows_in_status() -> None:
    async with (
        open_openai_server(api_key=KEY) as gpt,
        open_anthropic_server(api_key=KEY) as claude,
        open_ollama_server() as ollama,
    ):
        config = config_of(
            http("gpt", "openai", gpt.base_url, "gpt-4o-mini"),
            http("claude", "anthropic", claude.url, "claude-sonnet-4-6"),
            http("local", "ollama", ollama.url, "llama3.2"),
        )
        async with tree_of(config) as (tree, rec):
            gpt.script.push(ScriptedReply(text="a", prompt_tokens=1000, completion_tokens=500))
            claude.script.push(ScriptedReply(text="b", prompt_tokens=2000, completion_tokens=100))
            mini = await tree.router.complete("hi", model="gpt-4o-mini")
            sonnet = await tree.router.complete("hi", model="claude-sonnet-4-6")
            local = await tree.router.complete("hi", model="llama3.2")
            # The streamed answer carries it too.
            gpt.script.push(ScriptedReply(text="streamed", prompt_tokens=10, completion_tokens=20))
            async with tree.router.stream("hi", model="gpt-4o-mini") as stream:
                [c async for c in stream]
            tree.agents["gpt"].poke_status()
            update = await rec.wait_for(
                lambda s: s.type == "provider_status" and s.provider == "gpt"
                and s.data.metrics.cost > 0,  # type: ignore[union-attr]
                within=10,
            )
    # USD per million tokens: gpt-4o-mini 0.15 in / 0.60 out; claude-sonnet-4-6 3 / 15; local models 0.
    assert mini.usage.cost == pytest.approx(1000 * 0.15e-6 + 500 * 0.60e-6)  # $0.00045
    assert mini.usage.cost == pytest.approx(BUILTIN_PRICES["openai"]["gpt-4o-mini"].cost(1000, 500))
    assert sonnet.usage.cost == pytest.approx(2000 * 3e-6 + 100 * 15e-6)  # $0.0075
    assert local.usage.cost == 0.0
    assert stream.response is not None
    assert stream.response.usage.cost == pytest.approx(10 * 0.15e-6 + 20 * 0.6e-6)
    metrics = update[-1].data.metrics  # type: ignore[union-attr]
    assert metrics.cost == pytest.approx(mini.usage.cost + stream.response.usage.cost)
    assert metrics.cost_by_model == {"gpt-4o-mini": pytest.approx(metrics.cost)}


async def test_a_budget_stops_the_request_that_would_cross_it_also_when_requests_race() -> None:
    # $1,000 per million output tokens = $0.001 a token; 2 tokens a request: $0.002. A 1-cent budget fits
    # five requests; ten sent at once must not overspend it.
    price = ModelPrice(input=0.0, output=1000.0)
    async with open_openai_server(api_key=KEY) as gpt:
        config = config_of(
            http("gpt", "openai", gpt.base_url, "gpt-4o-mini", budget=Budget(usd=0.01, period="day")),
            models={"gpt-4o-mini": ModelConfig(price=price)},
        )
        async with tree_of(config) as (tree, rec):
            outcomes: list[ProviderResponse | ProviderError] = []

            async def one(i: int) -> None:
                try:
                    outcomes.append(await tree.router.complete(f"q{i}", max_tokens=2, request_id=f"b{i}"))
                except ProviderError as exc:
                    outcomes.append(exc)

            for _ in range(10):
                gpt.script.push(ScriptedReply(text="ok", completion_tokens=2))
            gpt.inject(*(Fault(latency=0.2, path=CHAT) for _ in range(10)))  # all in flight together
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
            [spend] = await tree.router.spend()
    answered = [o for o in outcomes if isinstance(o, ProviderResponse)]
    refused = [o for o in outcomes if isinstance(o, ProviderError)]
    assert len(answered) == 5 and chat_calls(gpt) == 5
    assert {e.kind for e in refused} == {ErrorKind.BUDGET_EXCEEDED} and len(refused) == 5
    assert "provider:gpt" in refused[0].message and "$0.01 per day budget" in refused[0].message
    assert sum(r.usage.cost or 0 for r in answered) == pytest.approx(0.01)
    assert (spend.account, spend.spent, spend.held) == ("provider:gpt", pytest.approx(0.01), 0.0)
    assert_one_terminal_per_request(rec)


async def test_another_provider_within_budget_takes_over_from_one_over_it() -> None:
    price = ModelPrice(input=0.0, output=1000.0)
    async with open_openai_server(api_key=KEY) as capped, open_openai_server(api_key=KEY) as spare:
        config = config_of(
            http("capped", "openai", capped.base_url, "gpt-4o-mini", budget=Budget(usd=0.004)),
            http("spare", "openai", spare.base_url, "gpt-4o-mini", priority=1),
            models={"gpt-4o-mini": ModelConfig(price=price)},
        )
        async with tree_of(config) as (tree, _):
            for server in (capped, spare):
                server.script.push(*(ScriptedReply(text="ok", completion_tokens=2) for _ in range(4)))
            served = [(await tree.router.complete("hi", max_tokens=2)).provider for _ in range(4)]
    assert served == ["capped", "capped", "spare", "spare"]
