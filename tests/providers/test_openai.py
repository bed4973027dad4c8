"""OpenAIProvider against the loopback OpenAI server over real HTTP (plus MockTransport edge cases)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from duckagents.errors import ErrorKind, ProviderError, Secret, StreamProtocolError
from duckagents.messages import FinishReason, ImagePart, Message, RequestOptions, ToolCall, ToolSpec, Usage
from duckagents.providers import (
    Completion,
    OpenAIProvider,
    Provider,
    StreamDelta,
    StreamEnd,
    heuristic_token_count,
)
from duckagents.providers._openai_models import UNKNOWN_MODEL_FEATURES, is_reasoning_model, model_family
from duckagents.signals import ProviderRequest
from duckagents.testing import (
    Fault,
    OpenAIRateLimits,
    OpenAIServer,
    ScriptedReply,
    StreamReply,
    open_openai_server,
    sse,
)

KEY = "sk-test-SECRETabcdefghij0123456789"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
WEATHER = ToolSpec(
    "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
)


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with open_openai_server(api_key=KEY) as srv:
        yield srv


@pytest.fixture
async def provider(server: OpenAIServer) -> AsyncIterator[OpenAIProvider]:
    async with OpenAIProvider(server.base_url, api_key=KEY) as prov:
        yield prov


def req(*messages: Message, model: str | None = None, **options: Any) -> ProviderRequest:
    return ProviderRequest(
        "r1", messages or (Message.user("hello there"),), model=model, options=RequestOptions(**options)
    )


async def run_stream(
    provider: OpenAIProvider, request: ProviderRequest
) -> tuple[list[StreamDelta], Completion]:
    items: list[StreamDelta | StreamEnd] = []
    async with contextlib.aclosing(provider.stream(request)) as events:
        async for item in events:
            items.append(item)
    assert isinstance(items[-1], StreamEnd) and not any(isinstance(i, StreamEnd) for i in items[:-1])
    deltas = [i for i in items[:-1] if isinstance(i, StreamDelta)]
    return deltas, items[-1].completion


def last_body(server: OpenAIServer) -> dict[str, Any]:
    body: dict[str, Any] = server.requests[-1].json()
    return body


def assert_no_secret(err: BaseException) -> None:
    for text in (str(err), repr(err), getattr(err, "message", "")):
        assert KEY not in text and "SECRETabcdef" not in text


# --- success paths ---------------------------------------------------------------------------------


async def test_complete_sends_the_wire_shape_and_parses_reply(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    msgs = (Message.system("be brief"), Message.of("developer", "use metric"), Message.user("hello there"))
    done = await provider.complete(req(*msgs, temperature=0.3, max_tokens=50, stop=("END",)))
    assert done.content == "echo: hello there"
    assert done.finish_reason is FinishReason.STOP and done.raw_finish_reason == "stop"
    assert done.usage == Usage(prompt_tokens=6, completion_tokens=3)  # server: one token per word
    assert done.model == "gpt-4o-mini"
    request = server.requests[-1]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = request.json()
    assert [m["role"] for m in body["messages"]] == ["system", "developer", "user"]
    assert body["messages"][2]["content"] == "hello there"
    assert body["temperature"] == 0.3 and body["max_tokens"] == 50 and body["stop"] == ["END"]
    assert "stream" not in body and "max_completion_tokens" not in body


async def test_stream_text_with_usage(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.script.push(
        ScriptedReply(text="one two three four", chunk_size=3, prompt_tokens=11, completion_tokens=4)
    )
    deltas, done = await run_stream(provider, req())
    assert [d.text for d in deltas] == ["one", " tw", "o t", "hre", "e f", "our"]
    assert done.content == "one two three four" and done.usage == Usage(11, 4)
    assert done.finish_reason is FinishReason.STOP and done.rate_limit is not None
    body = last_body(server)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_option(server: OpenAIServer) -> None:
    async with OpenAIProvider(server.base_url, api_key=KEY, stream_usage=False) as prov:
        deltas, done = await run_stream(prov, req())
    assert "".join(d.text for d in deltas) == "echo: hello there"
    assert done.usage == Usage() and "stream_options" not in last_body(server)


async def test_tool_calls_complete_then_tool_result_round_trip(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    call = ToolCall("call_abc", "get_weather", '{"city": "Oslo"}')
    server.script.push(ScriptedReply(tool_calls=(call,)))
    done = await provider.complete(req(tools=(WEATHER,), tool_choice="get_weather"))
    assert done.tool_calls == (call,) and done.content == ""
    assert done.finish_reason is FinishReason.TOOL_CALLS and done.raw_finish_reason == "tool_calls"
    body = last_body(server)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": WEATHER.parameters,
        },
    }
    # The follow-up turn is accepted by the server's pairing rules (tool result answers the call).
    follow = (
        Message.user("weather?"),
        Message.assistant(tool_calls=(call,)),
        Message.tool_result("call_abc", "12C"),
    )
    again = await provider.complete(req(*follow, tools=(WEATHER,)))
    assert again.content == "echo: weather?"
    sent = last_body(server)["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    }
    assert sent[2] == {"role": "tool", "content": "12C", "tool_call_id": "call_abc"}


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
async def test_tool_choice_modes_are_strings(
    provider: OpenAIProvider, server: OpenAIServer, choice: str
) -> None:
    await provider.complete(req(tools=(WEATHER,), tool_choice=choice))
    assert last_body(server)["tool_choice"] == choice


async def test_stream_tool_calls_are_assembled_by_index(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    calls = (ToolCall("call_1", "get_weather", '{"city": "Paris"}'), ToolCall("call_2", "get_weather", "{}"))
    server.script.push(ScriptedReply(text="checking", tool_calls=calls, chunk_size=5))
    deltas, done = await run_stream(provider, req(tools=(WEATHER,)))
    fragments = [d.tool_call for d in deltas if d.tool_call is not None]
    assert {f.index for f in fragments} == {0, 1} and len(fragments) > 3
    assert [f.id for f in fragments if f.id] == ["call_1", "call_2"]
    joined = "".join(f.arguments for f in fragments if f.index == 0)
    assert json.loads(joined) == {"city": "Paris"}
    assert done.tool_calls == calls and done.content == "checking"
    assert done.finish_reason is FinishReason.TOOL_CALLS


async def test_vision_parts_are_image_url_parts(provider: OpenAIProvider, server: OpenAIServer) -> None:
    message = Message.user(
        "what is this?",
        ImagePart(media_type="image/png", data=PNG),
        ImagePart(url="https://example.com/duck.jpg"),
    )
    done = await provider.complete(req(message, model="gpt-4o"))
    assert done.content == "echo: what is this?"
    parts = last_body(server)["messages"][0]["content"]
    assert parts == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/duck.jpg"}},
    ]
    bad = Message.user("and this?", ImagePart(media_type="image/tiff", data=PNG))
    with pytest.raises(ProviderError) as info:
        await provider.complete(req(bad))
    assert info.value.kind is ErrorKind.INVALID_REQUEST and "code=invalid_image_format" in info.value.message


async def test_json_mode(provider: OpenAIProvider, server: OpenAIServer) -> None:
    done = await provider.complete(req(Message.user("reply in json please"), response_format="json_object"))
    assert json.loads(done.content) == {"echo": "reply in json please"}
    assert last_body(server)["response_format"] == {"type": "json_object"}
    with pytest.raises(ProviderError) as info:  # the API demands the word "json" in the messages
        await provider.complete(req(Message.user("hi"), response_format="json_object"))
    assert info.value.kind is ErrorKind.INVALID_REQUEST and "json" in info.value.message


async def test_reasoning_models_get_max_completion_tokens_and_no_sampling(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    await provider.complete(req(model="o3-mini", max_tokens=40, temperature=0.2, top_p=0.5))
    body = last_body(server)
    assert body["max_completion_tokens"] == 40
    assert not {"max_tokens", "temperature", "top_p"} & body.keys()
    await provider.complete(req(model="gpt-4o", max_tokens=40, temperature=0.2))
    assert last_body(server)["max_tokens"] == 40 and last_body(server)["temperature"] == 0.2


async def test_server_rejects_max_tokens_for_a_reasoning_model_we_do_not_know() -> None:
    # The provider's table does not know "o9", so it sends max_tokens; the server (like the API) refuses.
    async with open_openai_server(models=None) as srv, OpenAIProvider(srv.base_url) as prov:
        with pytest.raises(ProviderError) as info:
            await prov.complete(req(model="o9-preview", max_tokens=10))
    assert info.value.kind is ErrorKind.INVALID_REQUEST and info.value.status == 400
    assert (
        "max_completion_tokens" in info.value.message and "code=unsupported_parameter" in info.value.message
    )


async def test_finish_length_and_refusal(provider: OpenAIProvider, server: OpenAIServer) -> None:
    done = await provider.complete(req(Message.user("a b c d e f"), max_tokens=3))
    assert done.finish_reason is FinishReason.LENGTH and done.content == "echo: a b"
    server.script.push(ScriptedReply(text="I can't help with that.", finish_reason=FinishReason.REFUSAL))
    refused = await provider.complete(req())
    assert refused.finish_reason is FinishReason.REFUSAL and refused.content == "I can't help with that."
    assert refused.raw_finish_reason == "stop"
    server.script.push(ScriptedReply(text="No.", finish_reason=FinishReason.REFUSAL))
    deltas, streamed = await run_stream(provider, req())
    assert "".join(d.text for d in deltas) == "No." and streamed.finish_reason is FinishReason.REFUSAL


# --- headers ---------------------------------------------------------------------------------------


async def test_rate_limit_headers_are_parsed() -> None:
    limits = OpenAIRateLimits(
        limit_requests=500, limit_tokens=30_000, reset_requests="120ms", reset_tokens="4m0s"
    )
    async with open_openai_server(rate_limits=limits) as srv, OpenAIProvider(srv.base_url) as prov:
        first = await prov.complete(req())
        srv.inject(Fault(headers={"x-ratelimit-reset-tokens": "1h2m3.5s", "retry-after-ms": "1500"}))
        second = await prov.complete(req())
    info = first.rate_limit
    assert info is not None
    assert (info.limit_requests, info.remaining_requests, info.reset_requests) == (500, 499, 0.12)
    assert (info.limit_tokens, info.reset_tokens, info.retry_after) == (30_000, 240.0, None)
    assert info.remaining_tokens == 30_000
    assert second.rate_limit is not None and second.rate_limit.remaining_requests == 498
    assert second.rate_limit.remaining_tokens == 30_000 - first.usage.total_tokens
    # An hour's reset is clamped to the cap on upstream waits (max_retry_after, 300 s by default).
    assert (second.rate_limit.reset_tokens, second.rate_limit.retry_after) == (300.0, 1.5)


# --- errors ----------------------------------------------------------------------------------------

ERROR_CASES = [
    (Fault(status=429), ErrorKind.RATE_LIMITED, True, 1.0),
    (Fault(status=429, headers={"retry-after-ms": "250"}), ErrorKind.RATE_LIMITED, True, 0.25),
    (Fault(status=429, error_type="insufficient_quota"), ErrorKind.QUOTA_EXCEEDED, False, None),
    (Fault(status=401), ErrorKind.AUTH, False, None),
    (Fault(status=400), ErrorKind.INVALID_REQUEST, False, None),
    (Fault(status=422), ErrorKind.INVALID_REQUEST, False, None),
    (Fault(status=400, error_type="context_length_exceeded"), ErrorKind.CONTEXT_LENGTH, False, None),
    (Fault(status=404), ErrorKind.NOT_FOUND, False, None),
    (Fault(status=500), ErrorKind.UPSTREAM_5XX, True, None),
    (Fault(status=502), ErrorKind.UPSTREAM_5XX, True, None),
    (Fault(status=503), ErrorKind.OVERLOADED, True, None),
    (Fault(status=529), ErrorKind.OVERLOADED, True, None),
]


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("fault", "kind", "retryable", "retry_after"), ERROR_CASES)
async def test_error_statuses_map_to_kinds(
    provider: OpenAIProvider,
    server: OpenAIServer,
    streaming: bool,
    fault: Fault,
    kind: ErrorKind,
    retryable: bool,
    retry_after: float | None,
) -> None:
    server.inject(fault)
    with pytest.raises(ProviderError) as info:
        if streaming:
            await run_stream(provider, req())
        else:
            await provider.complete(req())
    err = info.value
    assert (err.kind, err.retryable, err.retry_after, err.status) == (
        kind,
        retryable,
        retry_after,
        fault.status,
    )
    assert err.provider == "openai" and err.model == "gpt-4o-mini"
    assert "request id req_" in err.message
    assert_no_secret(err)


async def test_real_refusals_from_the_server() -> None:
    async with open_openai_server(api_key=KEY, context_window=20) as srv:
        async with OpenAIProvider(srv.base_url, api_key="sk-wrong-key-000000000000000") as bad:
            with pytest.raises(ProviderError) as auth:
                await bad.complete(req())
        async with OpenAIProvider(srv.base_url, api_key=KEY) as prov:
            with pytest.raises(ProviderError) as missing:
                await prov.complete(req(model="gpt-9"))
            with pytest.raises(ProviderError) as too_long:
                await prov.complete(req(Message.user("word " * 30)))
            with pytest.raises(ProviderError) as unpaired:
                await prov.complete(req(Message.tool_result("call_x", "orphan")))
    assert auth.value.kind is ErrorKind.AUTH and "sk-wrong-key" not in str(auth.value)
    assert missing.value.kind is ErrorKind.NOT_FOUND and missing.value.status == 404
    assert (
        too_long.value.kind is ErrorKind.CONTEXT_LENGTH
        and "maximum context length is 20" in too_long.value.message
    )
    assert unpaired.value.kind is ErrorKind.INVALID_REQUEST


async def test_timeout_from_latency(autojump_clock: trio.abc.Clock, server: OpenAIServer) -> None:
    async with OpenAIProvider(server.base_url, api_key=KEY, timeout=2.0) as prov:
        server.inject(Fault(latency=60))
        with pytest.raises(ProviderError) as slow_head:
            await prov.complete(req())
        server.inject(Fault(first_byte_delay=60))
        with pytest.raises(ProviderError) as slow_body:
            await run_stream(prov, req())
    assert slow_head.value.kind is ErrorKind.TIMEOUT and slow_head.value.retryable
    assert slow_body.value.kind is ErrorKind.TIMEOUT


async def test_slow_but_in_time_stream_succeeds(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_openai_server(stream_interval=0.5) as srv,
        OpenAIProvider(srv.base_url, timeout=2.0) as prov,
    ):
        srv.inject(Fault(latency=1.5, first_byte_delay=1.5))
        deltas, done = await run_stream(prov, req())
    assert "".join(d.text for d in deltas) == done.content == "echo: hello there"


async def test_cut_stream_is_a_network_error_after_partial_output(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    server.inject(Fault(cut_after=3))
    received: list[str] = []
    with pytest.raises(ProviderError) as info:
        async with contextlib.aclosing(provider.stream(req())) as events:
            async for item in events:
                assert isinstance(item, StreamDelta)
                received.append(item.text)
    assert info.value.kind is ErrorKind.NETWORK and info.value.retryable
    assert received == ["echo", ": he"]  # role chunk + two text chunks made it before the cut
    server.inject(Fault(cut_after=0))
    with pytest.raises(ProviderError) as body_cut:
        await provider.complete(req())
    assert body_cut.value.kind is ErrorKind.NETWORK


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_malformed_json_is_protocol_error(
    provider: OpenAIProvider, server: OpenAIServer, streaming: bool
) -> None:
    server.inject(Fault(malformed=True))
    with pytest.raises(StreamProtocolError) as info:
        if streaming:
            await run_stream(provider, req())
        else:
            await provider.complete(req())
    assert info.value.kind is ErrorKind.PROTOCOL and info.value.status == 200
    assert "request id req_" in info.value.message


async def test_stream_without_done_and_mid_stream_error(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "hi"}}],
    }
    server.inject(Fault(reply=StreamReply([sse(None, chunk)])))
    with pytest.raises(StreamProtocolError, match=r"\[DONE\]"):
        await run_stream(provider, req())
    error = {
        "error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}
    }
    server.inject(Fault(reply=StreamReply([sse(None, chunk), sse(None, error)])))
    with pytest.raises(ProviderError) as info:
        await run_stream(provider, req())
    assert info.value.kind is ErrorKind.UPSTREAM_5XX and "server had an error" in info.value.message


async def test_api_key_never_leaks(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.inject(
        Fault(status=401, message=f"Incorrect API key provided: {KEY}."),
        Fault(status=500, message=f"upstream said Bearer {KEY} and {KEY}"),
    )
    for _ in range(2):
        with pytest.raises(ProviderError) as info:
            await provider.complete(req())
        assert_no_secret(info.value)
        assert "***" in info.value.message
    assert KEY not in repr(provider) and provider.secrets == (Secret(KEY),)
    assert KEY not in repr(provider.secrets) and KEY not in repr(provider._client.headers)
    closed = OpenAIProvider("http://127.0.0.1:1/v1", api_key=KEY)
    async with closed:
        with pytest.raises(ProviderError) as net:
            await closed.complete(req())
    assert net.value.kind is ErrorKind.NETWORK
    assert_no_secret(net.value)


# --- models, health, features ----------------------------------------------------------------------


async def test_models_and_health(provider: OpenAIProvider, server: OpenAIServer) -> None:
    models = await provider.list_models()
    by_name = {m.name: m for m in models}
    assert "gpt-4o" in by_name and by_name["gpt-4o"].context_window == 128_000
    assert server.requests[-1].path == "/v1/models"
    probe = await provider.health()
    assert probe.ok and probe.latency >= 0
    server.inject(Fault(malformed=True))
    with pytest.raises(StreamProtocolError):
        await provider.list_models()
    server.inject(Fault(status=503))
    assert not (await provider.health()).ok
    async with OpenAIProvider(server.base_url, api_key="sk-nope-0000000000000000") as wrong:
        refused = await wrong.health()
    assert not refused.ok and refused.detail["kind"] == "auth" and refused.detail["status"] == "401"
    async with OpenAIProvider("http://127.0.0.1:1/v1", api_key=KEY) as down:
        unreachable = await down.health()
    assert not unreachable.ok and unreachable.detail["kind"] == "network"


def test_model_family_table() -> None:
    assert model_family("gpt-4o-2024-08-06").prefix == "gpt-4o"  # type: ignore[union-attr]
    assert model_family("gpt-4o-mini-2024-07-18").prefix == "gpt-4o-mini"  # type: ignore[union-attr]
    assert model_family("ft:gpt-4.1-mini:acme::abc123").prefix == "gpt-4.1"  # type: ignore[union-attr]
    assert model_family("openai/o3-mini").prefix == "o3-mini"  # type: ignore[union-attr]
    assert model_family("gpt-4ox") is None and model_family("llama-3-8b") is None
    assert is_reasoning_model("o1-2024-12-17") and is_reasoning_model("gpt-5-mini")
    assert not is_reasoning_model("gpt-4o") and not is_reasoning_model("mystery")
    prov = OpenAIProvider(model_features={"local-llava": UNKNOWN_MODEL_FEATURES.__class__(vision=True)})
    assert prov.features("gpt-4o").vision and prov.features("gpt-4o").context_window == 128_000
    assert not prov.features("o1-mini").tools and not prov.features("o1-mini").system_prompt
    assert not prov.features("gpt-4").supports("json_mode")
    assert prov.features("mystery-model") == UNKNOWN_MODEL_FEATURES
    assert prov.features("local-llava").vision
    assert prov.features().context_window == 128_000  # default model gpt-4o-mini


async def test_estimate_tokens_is_heuristic_and_provider_protocol() -> None:
    async with OpenAIProvider() as prov:
        messages = [Message.system("be nice"), Message.user("count these words please")]
        count = await prov.estimate_tokens(messages)
        assert count.tokens == heuristic_token_count(messages) and not count.exact
        assert isinstance(prov, Provider)


# --- odd upstreams (MockTransport) -----------------------------------------------------------------


def _mock(handler: Any) -> OpenAIProvider:
    return OpenAIProvider("https://compat.example/v1", api_key=KEY, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"choices": []}',
        b'{"choices": [{"message": "x"}]}',
        b'{"choices": [{"message": {"content": 5}}]}',
        b'{"choices": [{"message": {"tool_calls": [{"function": {}}]}}]}',
        b"[" * 50_000,
        b"\xff\xfe",
    ],
)
async def test_malformed_bodies_are_protocol_errors(body: bytes) -> None:
    async with _mock(lambda r: httpx.Response(200, content=body)) as prov:
        with pytest.raises(StreamProtocolError):
            await prov.complete(req())


async def test_gateway_html_and_try_again_hint() -> None:
    html = httpx.Response(502, text="<html><body>Bad gateway</body></html>")
    async with _mock(lambda r: html) as prov:
        with pytest.raises(ProviderError) as gateway:
            await prov.complete(req())
    assert gateway.value.kind is ErrorKind.UPSTREAM_5XX and "Bad gateway" in gateway.value.message
    limited = {
        "error": {
            "message": "Rate limit reached. Please try again in 1.5s. Visit ...",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    async with _mock(lambda r: httpx.Response(429, json=limited, headers={"x-request-id": "req_9"})) as prov:
        with pytest.raises(ProviderError) as info:
            await prov.complete(req())
    assert info.value.retry_after == 1.5 and "request id req_9" in info.value.message


async def test_compatible_server_stream_quirks() -> None:
    # A compatible server repeating id/name in every fragment, with no ids, and usage on the last choice.
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "}"}}]},
                }
            ]
        },
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "function_call"}],
            "usage": {"prompt_tokens": 2},
        },
    ]
    body = b"".join(sse(None, c) for c in chunks) + b"data: [DONE]\n\n"
    async with _mock(lambda r: httpx.Response(200, content=body)) as prov:
        deltas, done = await run_stream(prov, req())
    assert done.tool_calls == (ToolCall("call_0", "f", "{}"),) and done.content == ""
    assert done.finish_reason is FinishReason.TOOL_CALLS and done.usage == Usage(2, 0)
    assert len(deltas) == 2


# --- the streaming fast path keeps the one-event-at-a-time semantics --------------------------------


def _sse(*events: Any) -> bytes:
    return b"".join(sse(None, e) if not isinstance(e, bytes) else e for e in events)


def _text_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


class _ChunkStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


async def _items_until_error(prov: OpenAIProvider) -> tuple[list[str], ProviderError]:
    texts: list[str] = []
    with pytest.raises(ProviderError) as info:
        async with contextlib.aclosing(prov.stream(req())) as events:
            async for item in events:
                assert isinstance(item, StreamDelta)
                texts.append(item.text)
    return texts, info.value


@pytest.mark.parametrize(
    "bad",
    [
        b"data: {not json\n\n",
        # text first, then a malformed tool fragment in the same event: that event yields nothing
        _sse({"choices": [{"index": 0, "delta": {"content": "half", "tool_calls": [{"index": "zero"}]}}]}),
        _sse({"error": {"message": "overloaded mid-stream", "type": "server_error"}}),
    ],
)
async def test_events_before_a_bad_event_in_the_same_network_chunk_are_still_delivered(bad: bytes) -> None:
    # One network chunk holding good events, then a bad one: the good ones reach the caller first,
    # exactly as when each event arrives in its own chunk.
    body = _sse(_text_chunk("a"), _text_chunk("b")) + bad + _sse(_text_chunk("never")) + b"data: [DONE]\n\n"
    results = []
    for pieces in ([body], [bytes([b]) for b in body]):
        stream = _ChunkStream(pieces)
        async with _mock(lambda r, s=stream: httpx.Response(200, stream=s)) as prov:
            results.append(await _items_until_error(prov))
    (whole_texts, whole_err), (split_texts, split_err) = results
    assert whole_texts == split_texts == ["a", "b"]
    assert whole_err.kind is split_err.kind
    assert whole_err.kind in (ErrorKind.PROTOCOL, ErrorKind.UPSTREAM_5XX, ErrorKind.OVERLOADED)


async def test_gzip_encoded_stream_is_decoded() -> None:
    # The fast path reads raw bytes only when the body has no content-encoding; gzip is decoded.
    import gzip

    body = _sse(_text_chunk("hello "), _text_chunk("zip")) + b"data: [DONE]\n\n"
    packed = gzip.compress(body)
    stream = _ChunkStream([packed[:10], packed[10:]])
    headers = {"content-encoding": "gzip", "content-type": "text/event-stream"}
    async with _mock(lambda r: httpx.Response(200, stream=stream, headers=headers)) as prov:
        deltas, done = await run_stream(prov, req())
    assert [d.text for d in deltas] == ["hello ", "zip"] and done.content == "hello zip"


async def test_done_without_final_blank_line_and_crlf_endings() -> None:
    body = _sse(_text_chunk("x")).replace(b"\n", b"\r\n") + b"data: [DONE]"
    stream = _ChunkStream([body])
    async with _mock(lambda r: httpx.Response(200, stream=stream)) as prov:
        deltas, done = await run_stream(prov, req())
    assert [d.text for d in deltas] == ["x"] and done.content == "x"
