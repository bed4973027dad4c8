"""OllamaProvider against the loopback Ollama server over real HTTP (plus MockTransport edge cases)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import FinishReason, ImagePart, Message, RequestOptions, ToolCall, ToolSpec
from duckagents.providers import (
    OllamaProvider,
    Provider,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    heuristic_token_count,
    ollama_canonical_model_name,
)
from duckagents.signals import ProviderRequest
from duckagents.testing import (
    Fault,
    OllamaServer,
    Reply,
    ScriptedReply,
    StreamReply,
    ndjson,
    open_ollama_server,
)

KEY = "sk-ollama-proxy-secret-0123456789"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image").decode()
WEATHER = ToolSpec(
    "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
)


def req(*messages: Message, model: str | None = None, **options: Any) -> ProviderRequest:
    return ProviderRequest(
        "r1", messages or (Message.user("hello there"),), model=model, options=RequestOptions(**options)
    )


async def collect(provider: OllamaProvider, request: ProviderRequest) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    async with aclosing(provider.stream(request)) as stream:
        async for event in stream:
            events.append(event)
    return events


def sent(server: OllamaServer, path: str = "/api/chat") -> dict[str, Any]:
    """The JSON body of the last request to ``path``."""
    return next(r for r in reversed(server.requests) if r.path == path).json()  # type: ignore[no-any-return]


@pytest.fixture
async def server() -> AsyncIterator[OllamaServer]:
    async with open_ollama_server() as srv:
        yield srv


@pytest.fixture
async def provider(server: OllamaServer) -> AsyncIterator[OllamaProvider]:
    async with OllamaProvider(server.url) as p:
        yield p


# --- chat ------------------------------------------------------------------------------------------


async def test_is_a_provider_and_completes(provider: OllamaProvider, server: OllamaServer) -> None:
    assert isinstance(provider, Provider)
    done = await provider.complete(req())
    assert done.content == "echo: hello there"
    assert done.model == "llama3.2:latest"
    assert done.finish_reason is FinishReason.STOP and done.raw_finish_reason == "stop"
    assert done.usage.prompt_tokens == 2 and done.usage.completion_tokens == 5
    assert done.rate_limit is None
    body = sent(server)
    assert body["stream"] is False and body["model"] == "llama3.2"
    assert body["messages"] == [{"role": "user", "content": "hello there"}]


async def test_request_translation(server: OllamaServer) -> None:
    async with OllamaProvider(server.url, keep_alive="10m", num_ctx=2048) as provider:
        history = (
            Message.of("developer", "be terse"),
            Message.user("weather?"),
            Message.assistant(tool_calls=(ToolCall("c9", "get_weather", '{"city": "Oslo"}'),)),
            Message.tool_result("c9", "sunny"),
        )
        await provider.complete(
            req(
                *history,
                temperature=0.2,
                top_p=0.9,
                max_tokens=64,
                stop=("END",),
                tools=(WEATHER,),
                response_format="json_object",
            )
        )
    body = sent(server)
    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "num_predict": 64,
        "num_ctx": 2048,
        "stop": ["END"],
    }
    assert body["format"] == "json" and body["keep_alive"] == "10m" and body["stream"] is False
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert body["messages"][2]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ]
    assert body["messages"][3] == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}


async def test_json_mode_reply_is_json(provider: OllamaProvider) -> None:
    done = await provider.complete(req(response_format="json_object"))
    assert json.loads(done.content) == {"echo": "hello there"}


async def test_tool_choice_none_sends_no_tools(provider: OllamaProvider, server: OllamaServer) -> None:
    await provider.complete(req(tools=(WEATHER,), tool_choice="none"))
    assert "tools" not in sent(server)


async def test_stream_text(provider: OllamaProvider, server: OllamaServer) -> None:
    events = await collect(provider, req())
    *deltas, end = events
    assert isinstance(end, StreamEnd) and all(isinstance(d, StreamDelta) for d in deltas)
    assert len(deltas) == 5  # "echo: hello there" in pieces of 4
    assert "".join(d.text for d in deltas if isinstance(d, StreamDelta)) == end.completion.content
    assert end.completion.content == "echo: hello there"
    assert end.completion.usage.completion_tokens == 5 and end.completion.finish_reason is FinishReason.STOP
    assert sent(server)["stream"] is True


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_calls_get_stable_ids(
    provider: OllamaProvider, server: OllamaServer, streamed: bool
) -> None:
    calls = (
        ToolCall("ignored", "get_weather", '{"city": "Paris"}'),
        ToolCall("x", "get_time", '{"tz": "CET"}'),
    )
    server.script.push(ScriptedReply(text="checking", tool_calls=calls))
    if streamed:
        events = await collect(provider, req(tools=(WEATHER,)))
        fragments = [e.tool_call for e in events if isinstance(e, StreamDelta) and e.tool_call]
        assert [(f.index, f.id, f.name) for f in fragments] == [
            (0, "call_0", "get_weather"),
            (1, "call_1", "get_time"),
        ]
        end = events[-1]
        assert isinstance(end, StreamEnd)
        done = end.completion
    else:
        done = await provider.complete(req(tools=(WEATHER,)))
    assert [c.id for c in done.tool_calls] == ["call_0", "call_1"]
    assert json.loads(done.tool_calls[0].arguments) == {"city": "Paris"}
    assert done.finish_reason is FinishReason.TOOL_CALLS and done.raw_finish_reason == "stop"
    assert done.content == "checking"


async def test_length_finish(provider: OllamaProvider, server: OllamaServer) -> None:
    server.script.push(ScriptedReply(text="cut", finish_reason=FinishReason.LENGTH, completion_tokens=64))
    done = await provider.complete(req(max_tokens=64))
    assert done.finish_reason is FinishReason.LENGTH and done.raw_finish_reason == "length"
    assert done.usage.completion_tokens == 64


async def test_vision_input(provider: OllamaProvider, server: OllamaServer) -> None:
    image = ImagePart(media_type="image/png", data=PNG)
    as_url = ImagePart(url=f"data:image/png;base64,{PNG}")
    done = await provider.complete(req(Message.user("what is it?", image, as_url), model="llava"))
    assert done.content == "echo: what is it?"
    assert sent(server)["messages"][0]["images"] == [PNG, PNG]
    # A text-only model refuses images, as Ollama does (400 -> invalid request).
    with pytest.raises(ProviderError) as err:
        await provider.complete(req(Message.user("what?", image)))
    assert err.value.kind is ErrorKind.INVALID_REQUEST and err.value.status == 400


async def test_remote_image_url_is_unsupported_before_sending(
    provider: OllamaProvider, server: OllamaServer
) -> None:
    before = server.server.request_count
    with pytest.raises(ProviderError) as err:
        await provider.complete(
            req(Message.user("see", ImagePart(url="https://example.com/a.png")), model="llava")
        )
    assert err.value.kind is ErrorKind.UNSUPPORTED
    assert server.server.request_count == before


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=60), chunk=st.integers(1, 9))
async def test_stream_and_complete_agree(text: str, chunk: int) -> None:
    async with open_ollama_server() as server, OllamaProvider(server.url) as provider:
        server.script.push(
            ScriptedReply(text=text, chunk_size=chunk), ScriptedReply(text=text, chunk_size=chunk)
        )
        whole = await provider.complete(req())
        events = await collect(provider, req())
    streamed = "".join(e.text for e in events if isinstance(e, StreamDelta))
    assert whole.content == streamed == text
    assert isinstance(events[-1], StreamEnd) and events[-1].completion.content == text
    assert sum(isinstance(e, StreamEnd) for e in events) == 1


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "retryable"),
    [
        (Fault(status=429, message="too many requests"), ErrorKind.RATE_LIMITED, True),
        (Fault(status=400, message="invalid options"), ErrorKind.INVALID_REQUEST, False),
        (Fault(status=404, message="model 'nope' not found"), ErrorKind.NOT_FOUND, False),
        (Fault(status=500, message="llama runner process has terminated"), ErrorKind.UPSTREAM_5XX, True),
        (
            Fault(status=503, message="server busy, please try again.  maximum pending requests exceeded"),
            ErrorKind.OVERLOADED,
            True,
        ),
        (
            Fault(status=400, message="input length exceeds maximum context length"),
            ErrorKind.CONTEXT_LENGTH,
            False,
        ),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
async def test_error_statuses(
    provider: OllamaProvider,
    server: OllamaServer,
    fault: Fault,
    kind: ErrorKind,
    retryable: bool,
    streamed: bool,
) -> None:
    server.inject(fault)
    with pytest.raises(ProviderError) as err:
        if streamed:
            await collect(provider, req())
        else:
            await provider.complete(req())
    assert err.value.kind is kind and err.value.retryable is retryable
    assert err.value.status == fault.status and err.value.provider == "ollama"
    assert fault.message in err.value.message
    if fault.status == 429:
        assert err.value.retry_after == 2.0


async def test_missing_model_is_not_found(provider: OllamaProvider) -> None:
    with pytest.raises(ProviderError) as err:
        await provider.complete(req(model="nope"))
    assert err.value.kind is ErrorKind.NOT_FOUND and "model 'nope' not found" in err.value.message
    assert err.value.model == "nope"


async def test_tools_on_model_without_tools_is_invalid(provider: OllamaProvider) -> None:
    with pytest.raises(ProviderError) as err:
        await provider.complete(req(model="gemma:2b", tools=(WEATHER,)))
    assert err.value.kind is ErrorKind.INVALID_REQUEST and "does not support tools" in err.value.message


async def test_request_id_is_in_message(provider: OllamaProvider, server: OllamaServer) -> None:
    server.inject(Fault(status=500, message="boom", headers={"x-request-id": "req-abc123"}))
    with pytest.raises(ProviderError) as err:
        await provider.complete(req())
    assert "req-abc123" in err.value.message


async def test_auth_and_key_never_leaks() -> None:
    async with open_ollama_server(api_key="right-key") as server:
        async with OllamaProvider(server.url, api_key=KEY) as provider:
            with pytest.raises(ProviderError) as err:
                await provider.complete(req())
            assert err.value.kind is ErrorKind.AUTH and err.value.status == 401
            # An upstream that echoes the key back still cannot leak it.
            server.api_key = None
            server.inject(Fault(status=500, message=f"bad token {KEY}"))
            with pytest.raises(ProviderError) as echoed:
                await provider.complete(req())
            for text in (
                str(err.value),
                repr(err.value),
                str(echoed.value),
                repr(echoed.value),
                repr(provider),
            ):
                assert KEY not in text
            assert "***" in echoed.value.message
            # With the right key, the bearer header goes out.
        async with OllamaProvider(server.url, api_key="right-key") as provider:
            server.api_key = "right-key"
            assert (await provider.complete(req())).content == "echo: hello there"
            assert server.requests[-1].headers["authorization"] == "Bearer right-key"


async def test_timeout(server: OllamaServer, autojump_clock: trio.abc.Clock) -> None:
    server.inject(Fault(latency=30.0))
    async with OllamaProvider(server.url, timeout=2.0) as provider:
        with pytest.raises(ProviderError) as err:
            await provider.complete(req())
    assert err.value.kind is ErrorKind.TIMEOUT and err.value.retryable


async def test_stream_first_byte_delay_times_out(
    server: OllamaServer, autojump_clock: trio.abc.Clock
) -> None:
    server.inject(Fault(first_byte_delay=30.0))
    async with OllamaProvider(server.url, timeout=2.0) as provider:
        with pytest.raises(ProviderError) as err:
            await collect(provider, req())
    assert err.value.kind is ErrorKind.TIMEOUT


async def test_cut_stream_is_network_error_after_partial_output(
    provider: OllamaProvider, server: OllamaServer
) -> None:
    server.inject(Fault(cut_after=2))
    got: list[str] = []
    with pytest.raises(ProviderError) as err:
        async with aclosing(provider.stream(req())) as stream:
            async for event in stream:
                assert isinstance(event, StreamDelta)
                got.append(event.text)
    assert err.value.kind is ErrorKind.NETWORK and err.value.retryable
    assert got == ["echo", ": he"]


async def test_cut_body_is_network_error(provider: OllamaProvider, server: OllamaServer) -> None:
    server.inject(Fault(cut_after=0, path="/api/chat"))
    with pytest.raises(ProviderError) as err:
        await provider.complete(req())
    assert err.value.kind is ErrorKind.NETWORK


@pytest.mark.parametrize("streamed", [False, True])
async def test_malformed_json_is_protocol(
    provider: OllamaProvider, server: OllamaServer, streamed: bool
) -> None:
    server.inject(Fault(malformed=True))
    with pytest.raises(ProviderError) as err:
        if streamed:
            await collect(provider, req())
        else:
            await provider.complete(req())
    assert err.value.kind is ErrorKind.PROTOCOL and err.value.retryable


async def test_stream_without_done_line_is_protocol(provider: OllamaProvider, server: OllamaServer) -> None:
    line = {
        "model": "llama3.2",
        "created_at": "x",
        "message": {"role": "assistant", "content": "hi"},
        "done": False,
    }
    server.inject(Fault(reply=StreamReply([ndjson(line)], headers={"content-type": "application/x-ndjson"})))
    with pytest.raises(ProviderError) as err:
        await collect(provider, req())
    assert err.value.kind is ErrorKind.PROTOCOL and "done" in err.value.message


async def test_in_band_stream_error(provider: OllamaProvider, server: OllamaServer) -> None:
    lines = [
        ndjson({"model": "m", "message": {"role": "assistant", "content": "a"}, "done": False}),
        ndjson({"error": "an error was encountered while running the model: unexpected EOF"}),
    ]
    server.inject(Fault(reply=StreamReply(lines)))
    with pytest.raises(ProviderError) as err:
        await collect(provider, req())
    assert err.value.kind is ErrorKind.UPSTREAM_5XX and "unexpected EOF" in err.value.message
    assert err.value.status is None


async def test_rate_limit_headers(provider: OllamaProvider, server: OllamaServer) -> None:
    body = {
        "model": "llama3.2",
        "created_at": "x",
        "message": {"role": "assistant", "content": "ok"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 1,
    }
    headers = {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "1m30s",
        "x-ratelimit-remaining-tokens": "5000",
    }
    server.inject(Fault(reply=Reply.json(body, headers=headers)))
    done = await provider.complete(req())
    assert done.rate_limit is not None
    assert (done.rate_limit.limit_requests, done.rate_limit.remaining_requests) == (100, 99)
    assert done.rate_limit.reset_requests == 90.0 and done.rate_limit.remaining_tokens == 5000


# --- model management ------------------------------------------------------------------------------


async def test_list_show_and_features(provider: OllamaProvider) -> None:
    names = [m.name for m in await provider.list_models()]
    assert names == ["llama3.2:latest", "llava:latest", "gemma:2b"]
    # Before show(): the family table.
    assert provider.features().context_window == 131072 and provider.features().tools
    assert provider.features("llava").vision and not provider.features("llava").tools
    assert provider.features("unknown-model").context_window == 4096
    details = await provider.show("gemma:2b")
    assert details.context_window == 8192 and details.capabilities == ("completion",)
    assert details.family == "gemma" and details.parameter_size == "3B"
    features = provider.features("gemma:2b")
    assert (
        features.context_window == 8192 and not features.tools and not features.vision and features.json_mode
    )
    listed = {m.name: m for m in await provider.list_models()}
    assert listed["gemma:2b"].context_window == 8192 and listed["gemma:2b"].size == 1_678_456_656


async def test_num_ctx_caps_the_window(server: OllamaServer) -> None:
    async with OllamaProvider(server.url, num_ctx=2048) as provider:
        await provider.show()
        assert provider.features().context_window == 2048


async def test_show_missing_model(provider: OllamaProvider) -> None:
    with pytest.raises(ProviderError) as err:
        await provider.show("nope")
    assert err.value.kind is ErrorKind.NOT_FOUND


async def test_pull_progress(provider: OllamaProvider, server: OllamaServer) -> None:
    progress = [p async for p in provider.pull("tinyllama")]
    statuses = [p["status"] for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    downloads = [p for p in progress if "total" in p]
    assert [p["completed"] for p in downloads] == sorted(p["completed"] for p in downloads)
    assert downloads[-1]["completed"] == downloads[-1]["total"]
    assert sent(server, "/api/pull") == {"model": "tinyllama", "stream": True}
    assert "tinyllama:latest" in [m.name for m in await provider.list_models()]


async def test_pull_malformed_and_truncated(provider: OllamaProvider, server: OllamaServer) -> None:
    server.inject(Fault(malformed=True, path="/api/pull"))
    with pytest.raises(ProviderError) as err:
        _ = [p async for p in provider.pull("tinyllama")]
    assert err.value.kind is ErrorKind.PROTOCOL
    server.inject(Fault(reply=StreamReply([ndjson({"status": "pulling manifest"})]), path="/api/pull"))
    with pytest.raises(ProviderError) as err:
        _ = [p async for p in provider.pull("tinyllama")]
    assert err.value.kind is ErrorKind.PROTOCOL and "success" in err.value.message


async def test_load_unload_and_expiry(
    provider: OllamaProvider, server: OllamaServer, autojump_clock: trio.abc.Clock
) -> None:
    assert await provider.running_models() == []
    await provider.load("llama3.2", keep_alive="5m")
    assert sent(server, "/api/generate") == {"model": "llama3.2", "stream": False, "keep_alive": "5m"}
    running = await provider.running_models()
    assert [m.name for m in running] == ["llama3.2:latest"]
    assert running[0].loaded and running[0].size_vram == running[0].size and running[0].expires_at
    await provider.load("llava", keep_alive=-1)  # forever
    await provider.unload("llama3.2")
    assert sent(server, "/api/generate")["keep_alive"] == 0
    assert [m.name for m in await provider.running_models()] == ["llava:latest"]
    await provider.complete(req())  # a chat loads its model for the default 5 minutes
    assert server.loaded_models() == ["llama3.2:latest", "llava:latest"]
    await trio.sleep(301)
    assert [m.name for m in await provider.running_models()] == ["llava:latest"]


async def test_health_and_version(provider: OllamaProvider) -> None:
    assert await provider.version() == "0.9.0"
    probe = await provider.health()
    assert probe.ok and probe.detail == {"version": "0.9.0"} and probe.latency >= 0


async def test_health_unreachable_never_raises() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OllamaProvider(f"http://127.0.0.1:{port}") as provider:
        probe = await provider.health()
    assert not probe.ok and probe.detail["kind"] == "network"


async def test_estimate_tokens_is_heuristic(provider: OllamaProvider) -> None:
    messages = [Message.system("be nice"), Message.user("count these words please")]
    count = await provider.estimate_tokens(messages)
    assert count.tokens == heuristic_token_count(messages) and not count.exact


# --- edge cases with a mock transport -------------------------------------------------------------


def mock_provider(handler: Any) -> OllamaProvider:
    return OllamaProvider("http://ollama.test", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        ({"model": "m", "done": True}, "no message"),
        ({"model": "m", "message": {"content": 5}, "done": True}, "not a string"),
        (
            {"model": "m", "message": {"content": "", "tool_calls": [{"function": {}}]}, "done": True},
            "function name",
        ),
        ([1, 2], "no message"),
    ],
)
async def test_malformed_reply_shapes_are_protocol(reply: Any, fragment: str) -> None:
    async with mock_provider(lambda request: httpx.Response(200, json=reply)) as provider:
        with pytest.raises(ProviderError) as err:
            await provider.complete(req())
    assert err.value.kind is ErrorKind.PROTOCOL and fragment in err.value.message


async def test_upstream_tool_call_id_and_odd_done_reason_are_kept() -> None:
    reply = {
        "model": "m",
        "message": {
            "content": "",
            "tool_calls": [{"id": "abc", "function": {"name": "f", "arguments": {"a": 1}}}],
        },
        "done": True,
        "done_reason": "load",
    }
    async with mock_provider(lambda request: httpx.Response(200, json=reply)) as provider:
        done = await provider.complete(req())
    assert done.tool_calls == (ToolCall("abc", "f", '{"a": 1}'),)
    assert done.finish_reason is FinishReason.OTHER and done.raw_finish_reason == "load"


async def test_non_json_error_body() -> None:
    async with mock_provider(
        lambda request: httpx.Response(502, text="<html>bad gateway</html>")
    ) as provider:
        with pytest.raises(ProviderError) as err:
            await provider.complete(req())
    assert err.value.kind is ErrorKind.UPSTREAM_5XX and "bad gateway" in err.value.message


async def test_invalid_tool_arguments_in_history_are_rejected() -> None:
    history = Message.assistant(tool_calls=(ToolCall("c1", "f", "not json"),))
    async with mock_provider(lambda request: httpx.Response(500)) as provider:
        with pytest.raises(ProviderError) as err:
            await provider.complete(req(Message.user("x"), history))
    assert err.value.kind is ErrorKind.INVALID_REQUEST


def test_canonical_names() -> None:
    assert ollama_canonical_model_name("llama3.2") == "llama3.2:latest"
    assert ollama_canonical_model_name("llama3.2:1b") == "llama3.2:1b"
    registry_model = "registry.local:5000/ns/model"
    assert ollama_canonical_model_name(registry_model) == registry_model + ":latest"


async def test_trailing_garbage_after_done_does_not_spoil_the_answer(
    provider: OllamaProvider, server: OllamaServer
) -> None:
    done = {"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": True, "eval_count": 1}
    server.inject(Fault(reply=StreamReply([ndjson(done), b"{garbage\n"])))
    events = await collect(provider, req())
    assert [type(e) for e in events] == [StreamDelta, StreamEnd]
    assert isinstance(events[-1], StreamEnd) and events[-1].completion.content == "hi"
