"""The Anthropic provider against its loopback wire server over real sockets, plus wire-level edge cases."""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from duckagents.errors import ErrorKind, ProviderError, Secret
from duckagents.messages import FinishReason, ImagePart, Message, RequestOptions, ToolCall, ToolSpec
from duckagents.providers import Provider, StreamDelta, StreamEnd, heuristic_token_count
from duckagents.providers._anthropic import DEFAULT_MODEL, AnthropicProvider, features_for, image_problem
from duckagents.providers._anthropic_errors import make_error, parse_reset, rate_limit
from duckagents.providers._anthropic_wire import StreamAssembler, encode_messages
from duckagents.signals import ProviderRequest
from duckagents.testing import AnthropicServer, Fault, ScriptedReply, StreamReply, open_anthropic_server, sse

KEY = "sk-ant-api03-loopbackTESTkey-0123456789abcdef"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = ToolSpec(
    "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
)


@pytest.fixture
async def server() -> AsyncIterator[AnthropicServer]:
    async with open_anthropic_server(api_key=KEY) as srv:
        yield srv


@pytest.fixture
async def provider(server: AnthropicServer) -> AsyncIterator[AnthropicProvider]:
    async with AnthropicProvider(server.url, api_key=KEY) as prov:
        yield prov


def req(*messages: Message, model: str | None = None, **options: Any) -> ProviderRequest:
    return ProviderRequest(
        "r-1", messages or (Message.user("hello there"),), model=model, options=RequestOptions(**options)
    )


def sent(server: AnthropicServer) -> dict[str, Any]:
    body: dict[str, Any] = server.requests[-1].json()
    return body


async def collect(provider: AnthropicProvider, request: ProviderRequest) -> list[StreamDelta | StreamEnd]:
    async with aclosing(provider.stream(request)) as events:  # type: ignore[type-var]
        return [event async for event in events]


async def run_stream(provider: AnthropicProvider, request: ProviderRequest) -> Any:
    events = await collect(provider, request)
    assert sum(isinstance(e, StreamEnd) for e in events) == 1 and isinstance(events[-1], StreamEnd)
    return events[-1].completion  # type: ignore[union-attr]


def assert_no_key(err: ProviderError, *keys: str) -> None:
    for key in (KEY, *keys):
        assert key not in str(err) and key not in repr(err) and key not in err.message


# --- completions and encoding --------------------------------------------------------------------


async def test_complete_sends_the_real_wire_shape(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    completion = await provider.complete(req(Message.system("be brief"), Message.user("hi there")))
    request = server.requests[-1]
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "model": DEFAULT_MODEL,
        "max_tokens": 4096,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
    }
    assert completion.content == "echo: hi there"
    assert completion.model == DEFAULT_MODEL
    assert (completion.finish_reason, completion.raw_finish_reason) == (FinishReason.STOP, "end_turn")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 3)
    assert completion.tool_calls == ()


async def test_conversation_is_encoded_and_merged(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    call = ToolCall("toolu_1", "get_weather", '{"city": "Paris"}')
    messages = (
        Message.system("rule one"),
        Message.of("developer", "rule two"),
        Message.user("weather?"),
        Message.user("in Paris", ImagePart(url="https://example.com/a.png")),
        Message.assistant("checking", tool_calls=(call, ToolCall("toolu_2", "get_weather", ""))),
        Message.user("and hurry"),  # a user turn before the results: results must still come first
        Message.tool_result("toolu_1", "sunny"),
        Message.tool_result("toolu_2", "rainy"),
    )
    completion = await provider.complete(req(*messages))
    body = sent(server)
    assert body["system"] == "rule one\n\nrule two"
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "weather?"},
                {"type": "text", "text": "in Paris"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "rainy"},
                {"type": "text", "text": "and hurry"},
            ],
        },
    ]
    assert completion.content == "echo: sunny rainy and hurry"


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ("get_weather", {"type": "tool", "name": "get_weather"}),
    ],
)
async def test_options_are_mapped(
    server: AnthropicServer, provider: AnthropicProvider, choice: str, wire: dict[str, str]
) -> None:
    # A model that takes temperature and top_p together (newer ones take one: see test_wire_fidelity).
    await provider.complete(
        req(
            temperature=0.2, top_p=0.9, stop=("END",), max_tokens=77, tools=(WEATHER,), tool_choice=choice,
            model="claude-3-7-sonnet-latest",
        )
    )
    body = sent(server)
    assert body["max_tokens"] == 77 and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER.parameters}
    ]
    assert body["tool_choice"] == wire


async def test_default_max_tokens_is_capped_by_the_model(server: AnthropicServer) -> None:
    async with AnthropicProvider(server.url, api_key=KEY, default_max_tokens=100_000) as provider:
        await provider.complete(req(model="claude-3-5-haiku-latest"))
        assert sent(server)["max_tokens"] == 8192
        await provider.complete(req(model="claude-sonnet-4-5"))
        assert sent(server)["max_tokens"] == 64_000
        await provider.complete(req(model="claude-opus-4-1"))
        assert sent(server)["max_tokens"] == 32_000


async def test_complete_with_tool_calls_round_trips(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    calls = (ToolCall("toolu_a", "get_weather", '{"city": "Oslo"}'), ToolCall("toolu_b", "get_weather", "{}"))
    server.script.push(ScriptedReply(text="let me look", tool_calls=calls))
    completion = await provider.complete(req(Message.user("weather in Oslo?"), tools=(WEATHER,)))
    assert completion.content == "let me look"
    assert (completion.finish_reason, completion.raw_finish_reason) == (FinishReason.TOOL_CALLS, "tool_use")
    assert [(c.id, c.name, json.loads(c.arguments)) for c in completion.tool_calls] == [
        ("toolu_a", "get_weather", {"city": "Oslo"}),
        ("toolu_b", "get_weather", {}),
    ]
    follow_up = req(
        Message.user("weather in Oslo?"),
        Message.assistant(completion.content, tool_calls=completion.tool_calls),
        Message.tool_result("toolu_a", "cold"),
        Message.tool_result("toolu_b", "windy"),
        tools=(WEATHER,),
    )
    assert (await provider.complete(follow_up)).content == "echo: cold windy"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("refusal", FinishReason.REFUSAL),
        ("max_tokens", FinishReason.LENGTH),
        ("model_context_window_exceeded", FinishReason.LENGTH),
        ("stop_sequence", FinishReason.STOP),
        ("pause_turn", FinishReason.OTHER),
        ("something_new", FinishReason.OTHER),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_finish_reasons(
    server: AnthropicServer, provider: AnthropicProvider, raw: str, reason: FinishReason, streaming: bool
) -> None:
    server.script.push(ScriptedReply(text="I can't help with that.", raw_finish_reason=raw))
    request = req()
    completion = await (run_stream(provider, request) if streaming else provider.complete(request))
    assert (completion.finish_reason, completion.raw_finish_reason) == (reason, raw)
    assert completion.content == "I can't help with that."


async def test_json_mode_is_unsupported_and_nothing_is_sent(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.complete(req(response_format="json_object"))
    assert info.value.kind is ErrorKind.UNSUPPORTED and not info.value.retryable
    assert server.loopback.request_count == 0


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (req(Message(role="tool", content=(), tool_call_id=None)), "tool_call_id"),
        (req(Message(role="assistant", content=(ImagePart(url="http://x/y.png"),))), "cannot carry images"),
        (req(Message.assistant("x", tool_calls=(ToolCall("t", "f", "{not json"),))), "not JSON"),
        (req(Message.assistant("x", tool_calls=(ToolCall("t", "f", "[1]"),))), "JSON object"),
        (req(Message.system("only a system prompt")), "at least one"),
        (req(tools=(WEATHER,), tool_choice="nope"), "unknown tool"),
        (req(tool_choice="required"), "needs at least one tool"),
        (req(Message.user("x", ImagePart(media_type="image/bmp", data=PNG))), "image/bmp"),
        (req(Message.user("x", ImagePart(media_type="image/png", data="A" * 7_000_004))), "limit is 5242880"),
    ],
)
async def test_invalid_requests_are_refused_before_sending(
    server: AnthropicServer, provider: AnthropicProvider, request_: ProviderRequest, fragment: str
) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.complete(request_)
    assert info.value.kind is ErrorKind.INVALID_REQUEST and fragment in info.value.message
    assert info.value.request_id == "r-1"
    assert server.loopback.request_count == 0


# --- streaming -----------------------------------------------------------------------------------


async def test_stream_text(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.script.push(ScriptedReply(text="The quick brown fox jumps", chunk_size=5))
    events = await collect(provider, req(Message.system("sys"), Message.user("go now")))
    request = server.requests[-1]
    assert request.json()["stream"] is True and request.headers["accept"] == "text/event-stream"
    deltas = [e for e in events if isinstance(e, StreamDelta)]
    assert [d.text for d in deltas] == ["The q", "uick ", "brown", " fox ", "jumps"]
    end = events[-1]
    assert isinstance(end, StreamEnd) and events.count(end) == 1
    assert end.completion.content == "The quick brown fox jumps"
    assert end.completion.usage.prompt_tokens == 3 and end.completion.usage.completion_tokens == 5
    assert end.completion.finish_reason is FinishReason.STOP
    assert end.completion.rate_limit is not None and end.completion.rate_limit.limit_requests == 50


async def test_stream_tool_calls_are_fragmented_and_assembled(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    calls = (
        ToolCall("toolu_1", "get_weather", '{"city": "San Francisco", "unit": "celsius"}'),
        ToolCall("toolu_2", "lookup", '{"q": "trio"}'),
    )
    server.script.push(ScriptedReply(text="two calls", tool_calls=calls, chunk_size=3))
    events = await collect(provider, req(tools=(WEATHER, ToolSpec("lookup"))))
    fragments = [e.tool_call for e in events if isinstance(e, StreamDelta) and e.tool_call is not None]
    assert len(fragments) > 4  # really streamed in pieces
    by_index: dict[int, list[Any]] = {}
    for fragment in fragments:
        by_index.setdefault(fragment.index, []).append(fragment)
    assert sorted(by_index) == [0, 1]
    for index, call in enumerate(calls):
        first = by_index[index][0]
        assert (first.id, first.name) == (call.id, call.name)
        assert "".join(f.arguments for f in by_index[index]) == call.arguments
    completion = events[-1].completion  # type: ignore[union-attr]
    assert completion.tool_calls == calls and completion.content == "two calls"
    assert completion.finish_reason is FinishReason.TOOL_CALLS


async def test_stream_closed_early_leaves_the_provider_usable(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    server.script.push(ScriptedReply(text="a long answer that we stop reading", chunk_size=2))
    async with aclosing(provider.stream(req())) as events:  # type: ignore[type-var]
        async for event in events:
            assert isinstance(event, StreamDelta)
            break
    assert (await provider.complete(req(Message.user("again")))).content == "echo: again"


async def test_vision_input_over_loopback(server: AnthropicServer, provider: AnthropicProvider) -> None:
    image = ImagePart(media_type="image/png", data=PNG)
    completion = await run_stream(provider, req(Message.user("what is this?", image)))
    assert sent(server)["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    assert completion.content == "echo: what is this?"
    assert provider.features().vision
    assert provider.media_types == {"image/jpeg", "image/png", "image/gif", "image/webp"}
    assert provider.max_image_bytes == 5 * 1024 * 1024
    assert image_problem(image) is None
    assert "image/tiff" in (image_problem(ImagePart(media_type="image/tiff", data=PNG)) or "")


# --- errors --------------------------------------------------------------------------------------

ERROR_CASES = [
    (Fault(status=400), ErrorKind.INVALID_REQUEST, False),
    (
        Fault(status=400, message="prompt is too long: 210000 tokens > 200000 maximum"),
        ErrorKind.CONTEXT_LENGTH,
        False,
    ),
    (Fault(status=402), ErrorKind.QUOTA_EXCEEDED, False),
    (Fault(status=403), ErrorKind.AUTH, False),
    (Fault(status=404), ErrorKind.NOT_FOUND, False),
    (Fault(status=413), ErrorKind.INVALID_REQUEST, False),  # request_too_large: bytes, not tokens
    (Fault(status=500), ErrorKind.UPSTREAM_5XX, True),
    (Fault(status=503), ErrorKind.OVERLOADED, True),
    (Fault(status=529, message="Overloaded"), ErrorKind.OVERLOADED, True),
]


@pytest.mark.parametrize(("fault", "kind", "retryable"), ERROR_CASES)
@pytest.mark.parametrize("streaming", [False, True])
async def test_http_errors_map_to_kinds(
    server: AnthropicServer,
    provider: AnthropicProvider,
    fault: Fault,
    kind: ErrorKind,
    retryable: bool,
    streaming: bool,
) -> None:
    server.inject(fault)
    with pytest.raises(ProviderError) as info:
        await (run_stream(provider, req()) if streaming else provider.complete(req()))
    err = info.value
    assert (err.kind, err.status, err.retryable) == (kind, fault.status, retryable)
    assert (err.provider, err.model, err.request_id) == ("anthropic", DEFAULT_MODEL, "r-1")
    assert fault.message in err.message and "(request-id req_loopback" in err.message
    assert not err.partial
    assert_no_key(err)


async def test_rate_limited_carries_retry_after(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.inject(Fault(status=429), Fault(status=429, headers={"retry-after": "12"}))
    for expected in (5.0, 12.0):
        with pytest.raises(ProviderError) as info:
            await provider.complete(req())
        assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.retryable
        assert info.value.retry_after == expected and info.value.status == 429
        assert "rate_limit_error" in info.value.message


async def test_wrong_key_is_auth_and_no_key_leaks(server: AnthropicServer) -> None:
    wrong = "sk-ant-api03-WRONGwrongWRONG-0000000000"
    async with AnthropicProvider(server.url, api_key=Secret(wrong)) as provider:
        assert wrong not in repr(provider) and KEY not in repr(provider)
        with pytest.raises(ProviderError) as info:
            await provider.complete(req())
        assert (info.value.kind, info.value.status, info.value.retryable) == (ErrorKind.AUTH, 401, False)
        assert "invalid x-api-key" in info.value.message
        assert_no_key(info.value, wrong)
        # An upstream that echoes the key back still never gets it into our error.
        server.inject(Fault(status=401, message=f"key {wrong} is revoked", error_type="authentication_error"))
        with pytest.raises(ProviderError) as info:
            await run_stream(provider, req())
        assert "key *** is revoked" in info.value.message
        assert_no_key(info.value, wrong)
    async with AnthropicProvider(server.url) as keyless:
        with pytest.raises(ProviderError, match="x-api-key header is required"):
            await keyless.complete(req())


async def test_server_validates_like_the_api(server: AnthropicServer) -> None:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        base = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post("/v1/messages", json=base)
        assert response.status_code == 400
        body = response.json()
        assert body["type"] == "error" and body["request_id"] == response.headers["request-id"]
        assert body["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
        cases = [
            (
                {**base, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
                400,
                "messages.0.role",
            ),
            ({**base, "max_tokens": 5, "model": "gpt-4o"}, 404, "model: gpt-4o"),
            ({"max_tokens": 5, "messages": base["messages"]}, 400, "model: Field required"),
            ({**base, "max_tokens": 0}, 400, "max_tokens"),
        ]
        for payload, status, fragment in cases:
            response = await client.post("/v1/messages", json=payload)
            assert response.status_code == status and fragment in response.json()["error"]["message"]
        response = await client.post("/v1/messages", content=b"{nope")
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
        response = await client.get("/v1/nothing")
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    async with httpx.AsyncClient(base_url=server.url, headers={"x-api-key": KEY}) as client:
        response = await client.post("/v1/messages", json={**base, "max_tokens": 5})
        assert response.status_code == 400 and "anthropic-version" in response.json()["error"]["message"]


async def test_unknown_model_is_not_found(provider: AnthropicProvider) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.complete(req(model="claude-nonexistent"))
    assert (info.value.kind, info.value.status, info.value.model) == (
        ErrorKind.NOT_FOUND,
        404,
        "claude-nonexistent",
    )


async def test_prompt_too_long_is_context_length() -> None:
    async with open_anthropic_server(context_window=5) as server:
        async with AnthropicProvider(server.url) as provider:
            with pytest.raises(ProviderError) as info:
                await provider.complete(req(Message.user("one two three four five six seven")))
    assert (info.value.kind, info.value.status, info.value.retryable) == (
        ErrorKind.CONTEXT_LENGTH,
        400,
        False,
    )
    assert "prompt is too long: 7 tokens > 5 maximum" in info.value.message


@pytest.mark.parametrize("fault", [Fault(latency=30.0), Fault(first_byte_delay=30.0)])
@pytest.mark.parametrize("streaming", [False, True])
async def test_slow_upstream_times_out(
    autojump_clock: trio.testing.MockClock, fault: Fault, streaming: bool
) -> None:
    async with open_anthropic_server() as server, AnthropicProvider(server.url, timeout=1.0) as provider:
        server.inject(fault)
        with pytest.raises(ProviderError) as info:
            await (run_stream(provider, req()) if streaming else provider.complete(req()))
        assert info.value.kind is ErrorKind.TIMEOUT and info.value.retryable
        # The same provider works once the fault is spent.
        assert (await provider.complete(req())).content == "echo: hello there"


async def test_cut_stream_is_a_network_error(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.script.push(ScriptedReply(text="a fairly long streamed answer", chunk_size=4))
    server.inject(Fault(cut_after=5))
    received: list[str] = []
    with pytest.raises(ProviderError) as info:
        async with aclosing(provider.stream(req())) as events:  # type: ignore[type-var]
            async for event in events:
                received.append(event.text)  # type: ignore[union-attr]
    assert info.value.kind is ErrorKind.NETWORK and info.value.retryable
    assert received == ["a fa", "irly"] and info.value.partial


async def test_cut_body_is_a_network_error(server: AnthropicServer, provider: AnthropicProvider) -> None:
    server.inject(Fault(cut_after=0))
    with pytest.raises(ProviderError) as info:
        await provider.complete(req())
    assert info.value.kind is ErrorKind.NETWORK


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_json_is_a_protocol_error(
    server: AnthropicServer, provider: AnthropicProvider, streaming: bool
) -> None:
    server.inject(Fault(malformed=True))
    with pytest.raises(ProviderError) as info:
        await (run_stream(provider, req()) if streaming else provider.complete(req()))
    assert info.value.kind is ErrorKind.PROTOCOL and info.value.retryable
    assert "malformed response" in info.value.message


@pytest.mark.parametrize("streaming", [False, True])
async def test_broken_tool_arguments_are_a_protocol_error(
    server: AnthropicServer, provider: AnthropicProvider, streaming: bool
) -> None:
    server.script.push(ScriptedReply(tool_calls=(ToolCall("toolu_x", "get_weather", '{"city": '),)))
    with pytest.raises(ProviderError) as info:
        await (run_stream(provider, req()) if streaming else provider.complete(req()))
    assert info.value.kind is ErrorKind.PROTOCOL and "tool" in info.value.message


async def test_stream_without_message_stop_is_a_protocol_error(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    start = {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 1}}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}
    pieces = [
        sse("message_start", start),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        sse("content_block_delta", delta),
    ]
    server.inject(Fault(reply=StreamReply(pieces, headers={"content-type": "text/event-stream"})))
    events: list[Any] = []
    with pytest.raises(ProviderError) as info:
        async with aclosing(provider.stream(req())) as stream:  # type: ignore[type-var]
            async for event in stream:
                events.append(event)
    assert info.value.kind is ErrorKind.PROTOCOL and "message_stop" in info.value.message
    assert events == [StreamDelta(text="hi")] and info.value.partial


@pytest.mark.parametrize(
    ("fault", "kind", "partial"),
    [
        (Fault(error_type="overloaded_error", message="Overloaded", cut_after=4), ErrorKind.OVERLOADED, True),
        (Fault(status=529, message="Overloaded", cut_after=1), ErrorKind.OVERLOADED, False),
        (Fault(error_type="api_error", message="Internal server error"), ErrorKind.UPSTREAM_5XX, False),
        (Fault(status=429, message="slow down", cut_after=2), ErrorKind.RATE_LIMITED, False),
    ],
)
async def test_error_event_mid_stream(
    server: AnthropicServer, provider: AnthropicProvider, fault: Fault, kind: ErrorKind, partial: bool
) -> None:
    server.inject(fault)
    with pytest.raises(ProviderError) as info:
        await run_stream(provider, req())
    err = info.value
    assert (err.kind, err.status, err.partial, err.retryable) == (kind, None, partial, True)
    assert err.message.startswith("error event in stream:") and fault.message in err.message
    assert "(request-id req_loopback" in err.message


# --- headers, tokens, models, health -------------------------------------------------------------


async def test_rate_limit_headers_are_parsed(server: AnthropicServer, provider: AnthropicProvider) -> None:
    await provider.complete(req())
    info = (await provider.complete(req())).rate_limit
    assert info is not None
    assert (info.limit_requests, info.remaining_requests) == (50, 48)
    assert info.limit_tokens == 40_000 and info.remaining_tokens == 40_000 - server.tokens_used
    assert info.reset_requests is not None and 0 < info.reset_requests <= 60
    assert info.reset_tokens is not None and 0 < info.reset_tokens <= 60


def test_rate_limit_header_parsing_with_fixed_now() -> None:
    now = 1_750_000_000.0  # 2025-06-15T15:06:40Z
    headers = httpx.Headers(
        {
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-requests-reset": "2025-06-15T15:07:00Z",
            "anthropic-ratelimit-input-tokens-limit": "400000",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": "2025-06-15T17:06:42.5+02:00",
            "Retry-After": "17",
        }
    )
    info = rate_limit(headers, now)
    assert info is not None
    assert (info.limit_requests, info.remaining_requests, info.reset_requests) == (4000, 3999, 20.0)
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens) == (400_000, 0, 2.5)
    assert info.retry_after == 17.0
    assert rate_limit(httpx.Headers({"content-type": "application/json"}), now) is None
    assert parse_reset("not a date", now) is None and parse_reset("2025-06-15T15:00:00Z", now) == 0.0
    # A 429 without retry-after waits for the exhausted bucket to reset.
    err = make_error(429, headers, {}, provider="anthropic", model="m", secrets=(), now=now)
    assert err.retry_after == 17.0
    del headers["retry-after"]
    err = make_error(429, headers, {}, provider="anthropic", model="m", secrets=(), now=now)
    assert err.kind is ErrorKind.RATE_LIMITED and err.retry_after == 2.5


def test_error_decoding_edge_cases() -> None:
    now = 0.0
    html = make_error(
        provider="anthropic",
        status=502, body="<html>bad gateway</html>", headers={}, model=None, secrets=(), now=now
    )
    assert (html.kind, html.retryable) == (ErrorKind.UPSTREAM_5XX, True) and "bad gateway" in html.message
    empty = make_error(provider="anthropic", status=503, body="", headers={}, model=None, secrets=(), now=now)
    assert empty.kind is ErrorKind.OVERLOADED and "empty body" in empty.message
    vetoed = make_error(
        provider="anthropic",
        status=500,
        body={"error": {"type": "api_error", "message": "x"}},
        headers={"x-should-retry": "false"},
        model=None,
        secrets=(),
        now=now,
    )
    assert vetoed.kind is ErrorKind.UPSTREAM_5XX and not vetoed.retryable
    from_body = make_error(
        provider="anthropic",
        status=400,
        body={"error": {"type": "invalid_request_error", "message": "m"}, "request_id": "req_9"},
        headers={},
        model=None,
        secrets=(Secret("sekrit-value"),),
        now=now,
    )
    assert "(request-id req_9)" in from_body.message


async def test_count_tokens_is_exact_and_matches_usage(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    messages = (Message.system("you are terse"), Message.user("count these five words please"))
    count = await provider.estimate_tokens(messages)
    request = server.requests[-1]
    assert request.path == "/v1/messages/count_tokens" and request.headers["x-api-key"] == KEY
    assert request.json() == {
        "model": DEFAULT_MODEL,
        "system": "you are terse",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "count these five words please"}]}
        ],
    }
    assert count.exact and count.tokens == 8
    assert (await provider.complete(req(*messages))).usage.prompt_tokens == count.tokens


@pytest.mark.parametrize("fault", [Fault(status=500), Fault(malformed=True), Fault(status=404)])
async def test_count_tokens_falls_back_to_the_heuristic(
    server: AnthropicServer, provider: AnthropicProvider, fault: Fault
) -> None:
    messages = (Message.user("count these five words please"),)
    server.inject(attrs.evolve(fault, path="/v1/messages/count_tokens"))
    count = await provider.estimate_tokens(messages)
    assert not count.exact and count.tokens == heuristic_token_count(messages)
    assert server.requests[-1].path == "/v1/messages/count_tokens"


async def test_list_models_follows_pagination() -> None:
    names = tuple(f"claude-test-{i:04d}" for i in range(2100))
    async with open_anthropic_server(models=names) as server, AnthropicProvider(server.url) as provider:
        models = await provider.list_models()
        assert [m.name for m in models] == list(names)
        assert all(m.context_window == 200_000 for m in models)
        pages = [r for r in server.requests if r.path == "/v1/models"]
        assert [r.query for r in pages] == [
            "limit=1000",
            "limit=1000&after_id=claude-test-0999",
            "limit=1000&after_id=claude-test-1999",
        ]
        server.inject(Fault(malformed=True))
        with pytest.raises(ProviderError) as info:
            await provider.list_models()
        assert info.value.kind is ErrorKind.PROTOCOL


async def test_health(server: AnthropicServer, provider: AnthropicProvider) -> None:
    probe = await provider.health()
    assert probe.ok and probe.detail == {"status": "200"} and probe.latency >= 0
    assert (server.requests[-1].path, server.requests[-1].query) == ("/v1/models", "limit=1")
    server.inject(Fault(status=529))
    probe = await provider.health()
    assert not probe.ok and probe.detail["kind"] == "overloaded" and probe.detail["status"] == "529"
    async with AnthropicProvider(server.url, api_key="sk-ant-api03-not-the-right-key-000") as wrong:
        probe = await wrong.health()
        assert not probe.ok and probe.detail["kind"] == "auth"
        assert "not-the-right-key" not in str(probe)


async def test_health_of_unreachable_upstream_is_not_ok() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AnthropicProvider(f"http://127.0.0.1:{port}", api_key=KEY) as provider:
        probe = await provider.health()
        assert not probe.ok and probe.detail["kind"] == "network"
        with pytest.raises(ProviderError) as info:
            await provider.complete(req())
        assert info.value.kind is ErrorKind.NETWORK
        assert_no_key(info.value)


@pytest.mark.parametrize(
    ("model", "window", "max_output"),
    [
        ("claude-sonnet-5-5", 1_000_000, 128_000),
        ("claude-opus-5", 1_000_000, 128_000),
        ("claude-fable-5-1", 1_000_000, 128_000),
        ("claude-opus-4-6", 1_000_000, 128_000),
        ("claude-sonnet-4-6", 1_000_000, 128_000),
        ("claude-opus-4-5", 200_000, 64_000),
        ("claude-opus-4-1-20250805", 200_000, 32_000),
        ("claude-sonnet-4-5", 200_000, 64_000),
        ("claude-haiku-4-5", 200_000, 64_000),
        ("claude-3-7-sonnet-latest", 200_000, 64_000),
        ("claude-3-5-sonnet-20241022", 200_000, 8_192),
        ("claude-3-5-haiku-latest", 200_000, 8_192),
        ("claude-3-opus-20240229", 200_000, 4_096),
        ("claude-3-haiku-20240307", 200_000, 4_096),
        ("some-future-model", 200_000, 8_192),
    ],
)
def test_features_table(model: str, window: int, max_output: int) -> None:
    features = features_for(model)
    assert (features.context_window, features.max_output_tokens) == (window, max_output)
    assert features.supports("tools") and features.supports("vision") and not features.supports("json_mode")


async def test_provider_protocol_repr_and_secrets(server: AnthropicServer) -> None:
    async with AnthropicProvider(server.url, api_key=KEY, default_model="claude-haiku-4-5") as provider:
        assert isinstance(provider, Provider)
        assert provider.name == "anthropic" and provider.secrets == (Secret(KEY),)
        assert KEY not in repr(provider) and "claude-haiku-4-5" in repr(provider)
        assert provider.features().max_output_tokens == 64_000
    async with AnthropicProvider(server.url) as keyless:
        assert keyless.secrets == ()


# --- wire edge cases (httpx.MockTransport) -------------------------------------------------------


def sse_transport(*events: bytes, status: int = 200) -> httpx.MockTransport:
    body = b"".join(events)
    return httpx.MockTransport(
        lambda request: httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})
    )


START = sse(
    "message_start", {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3}}}
)
TEXT0 = sse(
    "content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
)
STOP = sse("message_stop", {"type": "message_stop"})


def delta(index: int, kind: str, **fields: Any) -> bytes:
    body = {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}
    return sse("content_block_delta", body)


@pytest.mark.parametrize(
    ("events", "fragment"),
    [
        ((TEXT0, STOP), "before message_start"),
        ((START, delta(3, "text_delta", text="x"), STOP), "never started"),
        ((START, TEXT0, delta(0, "input_json_delta", partial_json="{"), STOP), "for a text block"),
        ((START, START, STOP), "second message_start"),
        ((START, sse("content_block_delta", "[1, 2]"), STOP), "not an object"),
        (
            (
                START,
                sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "tool_use", "id": "t", "name": "f"},
                    },
                ),
                delta(0, "input_json_delta", partial_json='{"a": '),
                STOP,
            ),
            "not a JSON object",
        ),
    ],
)
async def test_malformed_streams(events: tuple[bytes, ...], fragment: str) -> None:
    async with AnthropicProvider("http://upstream.invalid", transport=sse_transport(*events)) as provider:
        with pytest.raises(ProviderError) as info:
            await run_stream(provider, req())
    assert info.value.kind is ErrorKind.PROTOCOL and fragment in info.value.message


async def test_stream_tolerates_pings_unknown_events_and_cumulative_usage() -> None:
    events = (
        sse(
            None,
            {
                "type": "message_start",
                "message": {
                    "model": "claude-x",
                    "usage": {"input_tokens": 2, "cache_read_input_tokens": 10, "output_tokens": 1},
                },
            },
        ),
        sse("ping", {"type": "ping"}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            },
        ),
        delta(0, "thinking_delta", thinking="hmm"),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "Hel"}},
        ),
        delta(1, "text_delta", text="lo"),
        sse("brand_new_event", {"type": "brand_new_event"}),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 9, "input_tokens": 20},
            },
        ),
        STOP,
    )
    async with AnthropicProvider("http://upstream.invalid", transport=sse_transport(*events)) as provider:
        items = await collect(provider, req())
    assert items[:-1] == [StreamDelta(text="Hel"), StreamDelta(text="lo")]
    completion = items[-1].completion  # type: ignore[union-attr]
    assert completion.model == "claude-x" and completion.content == "Hello"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (20, 9)


async def test_non_message_body_is_a_protocol_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"type": "error"}))
    async with AnthropicProvider("http://upstream.invalid", transport=transport) as provider:
        with pytest.raises(ProviderError) as info:
            await provider.complete(req())
    assert info.value.kind is ErrorKind.PROTOCOL and info.value.status == 200


# --- properties ----------------------------------------------------------------------------------

_words = st.text(alphabet="abc xyz", min_size=1, max_size=12)
_turn = st.one_of(
    st.builds(Message.user, _words),
    st.builds(Message.assistant, _words),
    st.builds(Message.system, _words),
    st.builds(Message.tool_result, st.sampled_from(["t1", "t2"]), _words),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_turn, min_size=1, max_size=12))
def test_encoded_turns_alternate_and_keep_all_text(messages: list[Message]) -> None:
    if all(m.role == "system" for m in messages):
        return
    system, turns = encode_messages(messages)
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(turns))
    assert system == ("\n\n".join(m.text for m in messages if m.role == "system") or None)
    for turn in turns:
        kinds = [block["type"] for block in turn["content"]]
        assert kinds == sorted(kinds, key=lambda k: k != "tool_result")  # tool results first
    texts = sorted(block.get("text") or block.get("content") for turn in turns for block in turn["content"])
    assert texts == sorted(m.text for m in messages if m.role != "system")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40), st.dictionaries(st.text(max_size=5), st.integers(), max_size=4), st.data())
def test_assembled_stream_equals_fragments(text: str, args: dict[str, int], data: st.DataObject) -> None:
    arguments = json.dumps(args)

    def cuts(s: str) -> list[str]:
        return _split(s, data.draw(st.lists(st.integers(0, len(s)))))

    assembler = StreamAssembler("m")
    out: list[StreamDelta] = []
    events = [
        ("message_start", {"message": {"usage": {"input_tokens": 1}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    events += [
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in cuts(text)
    ]
    events.append(
        ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "i", "name": "n"}})
    )
    events += [
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": p}})
        for p in cuts(arguments)
    ]
    events += [("message_delta", {"delta": {"stop_reason": "tool_use"}}), ("message_stop", {})]
    for name, body in events:
        out += assembler.feed_event(name, body)
    completion = assembler.completion(None)
    assert "".join(d.text for d in out) == completion.content == text
    assert "".join(d.tool_call.arguments for d in out if d.tool_call) == completion.tool_calls[0].arguments
    assert json.loads(completion.tool_calls[0].arguments) == args


def _split(text: str, points: list[int]) -> list[str]:
    bounds = [0, *sorted(set(points)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]
