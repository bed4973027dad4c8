"""Wire fidelity (issue 15): where our providers disagreed with the published contracts, each over its
loopback wire server. Request shapes are validated, as the server recorded them, against the OpenAPI
documents in ``shared/reference/`` (:mod:`tests.providers.openapi`); so are the scripted replies the
parsers meet, to show they are replies the API may really send."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import Any

import httpx
import pytest

from duckagents.errors import RETRYABLE_KINDS, ErrorKind, ProviderError
from duckagents.messages import FinishReason, ImagePart, Message, RequestOptions, ToolCall, ToolSpec
from duckagents.providers import (
    AnthropicProvider,
    Completion,
    HTTPProvider,
    OllamaProvider,
    OpenAIProvider,
    StreamDelta,
    StreamEnd,
    TGIProvider,
)
from duckagents.providers._http import MAX_ERROR_TEXT, MAX_EXCERPT
from duckagents.signals import ProviderRequest
from duckagents.testing import (
    Fault,
    Reply,
    ScriptedReply,
    WireServer,
    open_anthropic_server,
    open_ollama_server,
    open_openai_server,
    open_tgi_server,
)

from .openapi import OPENAI, TGI, assert_valid, violations

WEATHER = ToolSpec(
    "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def req(*messages: Message, model: str | None = None, **options: Any) -> ProviderRequest:
    return ProviderRequest(
        "r-15", messages or (Message.user("hello there"),), model=model, options=RequestOptions(**options)
    )


async def run(
    provider: Any, request: ProviderRequest, streaming: bool
) -> tuple[list[StreamDelta], Completion]:
    """The completion (and the stream's deltas) of ``request`` through complete() or stream()."""
    if not streaming:
        return [], await provider.complete(request)
    items: list[StreamDelta | StreamEnd] = []
    async with aclosing(provider.stream(request)) as events:
        async for item in events:
            items.append(item)
    end = items[-1]
    assert isinstance(end, StreamEnd) and not any(isinstance(i, StreamEnd) for i in items[:-1])
    return [i for i in items[:-1] if isinstance(i, StreamDelta)], end.completion


def sent(server: WireServer, path: str) -> Any:
    """The body of the last request the server received on ``path``."""
    return next(r for r in reversed(server.requests) if r.path == path).json()


def joined_arguments(deltas: list[StreamDelta]) -> str:
    return "".join(d.tool_call.arguments for d in deltas if d.tool_call is not None)


# --- 1. TGI: an assistant turn with text and tool calls --------------------------------------------


CHECKING = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
TOOL_TURNS = (
    Message.of("developer", "answer briefly"),
    Message.user("weather in Paris?"),
    Message.assistant("Let me check.", tool_calls=(CHECKING,)),
    Message.tool_result("call_1", "sunny"),
)


@pytest.mark.parametrize("streaming", [False, True])
async def test_tgi_assistant_text_and_tool_calls_reach_the_model_both(streaming: bool) -> None:
    async with open_tgi_server() as server, TGIProvider(server.url) as provider:
        server.script.push(ScriptedReply(text="It is sunny."))
        _, done = await run(provider, req(*TOOL_TURNS, tools=(WEATHER,), max_tokens=20), streaming)
        body = sent(server, "/v1/chat/completions")
        understood = server.conversations[-1]
    assert done.content == "It is sunny."
    assert_valid(TGI, "ChatRequest", body)
    # The tool calls win the message; the text goes in an assistant turn of its own before them, so
    # TGI keeps both and the tool result answers a call the model saw.
    assert understood == [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "Let me check."},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    # TGI names a tool's JSON schema `arguments` (`parameters` is only an alias there).
    function = {"name": "get_weather", "description": "Weather for a city", "arguments": WEATHER.parameters}
    assert body["tools"] == [{"type": "function", "function": function}]


async def test_tgi_message_with_both_loses_its_calls_and_breaks_the_spec() -> None:
    # What we used to send: the loopback server reads it as TGI does, and the spec refuses it.
    both = {"role": "assistant", "content": "Let me check.",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"}}]}
    body = {"messages": [{"role": "user", "content": "weather?"}, both,
                         {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}]}
    assert any("valid under each of" in v for v in violations(TGI, "ChatRequest", body))
    async with open_tgi_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    assert [sorted(m) for m in server.conversations[-1]] == [
        ["content", "role"], ["content", "role"], ["content", "role", "tool_call_id"]
    ]


async def test_tgi_requests_match_the_spec() -> None:
    image = Message.user("what is this?", ImagePart(data=PNG, media_type="image/png"))
    async with open_tgi_server(model_id="llava-hf/llava-v1.6") as server, TGIProvider(server.url) as provider:
        for options in (
            {"response_format": "json_object", "temperature": 0.5, "top_p": 0.9, "stop": ("END",)},
            {"tools": (WEATHER,), "tool_choice": "get_weather"},
            {"tools": (WEATHER,), "tool_choice": "required", "max_tokens": 8},
        ):
            await provider.complete(req(Message.system("be brief"), image, **options))
            assert_valid(TGI, "ChatRequest", sent(server, "/v1/chat/completions"))
            await run(provider, req(*TOOL_TURNS, **options), streaming=True)
            assert_valid(TGI, "ChatRequest", sent(server, "/v1/chat/completions"))


# --- 2. Anthropic: temperature and top_p together -------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options", "sampling"),
    [
        # models that refuse both get temperature alone (the family table's rule)
        ("claude-sonnet-4-6", {"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2}),
        ("claude-opus-4-1", {"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2}),
        ("claude-haiku-4-5", {"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2}),
        ("claude-opus-5-5", {"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2}),
        # one of them is sent as it is
        ("claude-sonnet-4-6", {"top_p": 0.9}, {"top_p": 0.9}),
        ("claude-sonnet-4-6", {"temperature": 0.7}, {"temperature": 0.7}),
        # older models take both
        ("claude-3-7-sonnet-latest", {"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_anthropic_sends_one_sampling_parameter_to_models_that_refuse_both(
    model: str, options: dict[str, float], sampling: dict[str, float], streaming: bool
) -> None:
    async with open_anthropic_server() as server, AnthropicProvider(server.url) as provider:
        _, done = await run(provider, req(model=model, **options), streaming)
        body = sent(server, "/v1/messages")
    assert done.content == "echo: hello there"
    assert {key: body[key] for key in ("temperature", "top_p") if key in body} == sampling


async def test_anthropic_server_refuses_both_like_the_api() -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 5, "temperature": 0.2, "top_p": 0.9,
            "messages": [{"role": "user", "content": "hi"}]}
    async with open_anthropic_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        refused = await client.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
        older = await client.post(
            "/v1/messages", json={**body, "model": "claude-3-7-sonnet-latest"},
            headers={"anthropic-version": "2023-06-01"},
        )
    assert refused.status_code == 400 and "cannot both be specified" in refused.json()["error"]["message"]
    assert older.status_code == 200


# --- 3 and 4. OpenAI: custom tool calls and the legacy function_call ------------------------------


@asynccontextmanager
async def openai() -> AsyncIterator[tuple[Any, OpenAIProvider]]:
    async with open_openai_server() as server, OpenAIProvider(server.base_url, default_model="gpt-4o") as p:
        yield server, p


async def raw_reply(server: Any, reply: ScriptedReply, *, stream: bool = False) -> Any:
    """What the server answers to a plain request for ``reply``: the body, or the stream's chunks."""
    server.script.push(reply)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.post("/chat/completions", json=body)
    if not stream:
        return response.json()
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


SHELL = ToolCall("call_9", "shell", "ls -la | wc -l")  # a custom tool's input is free text, not JSON


@pytest.mark.parametrize("streaming", [False, True])
async def test_openai_custom_tool_call_is_parsed_with_its_raw_input(streaming: bool) -> None:
    reply = ScriptedReply(text="Running it.", tool_calls=(SHELL,), tool_call_style="custom")
    async with openai() as (server, provider):
        assert_valid(OPENAI, "CreateChatCompletionResponse", await raw_reply(server, reply))
        server.script.push(reply)
        deltas, done = await run(provider, req(tools=(WEATHER,)), streaming)
        assert_valid(OPENAI, "CreateChatCompletionRequest", sent(server, "/v1/chat/completions"))
        # The answer is kept whole (text and call), not failed as a retryable protocol error; sent back
        # in the next turn it goes out as a function call with that text.
        assert (done.content, done.tool_calls, done.finish_reason) == (
            "Running it.", (SHELL,), FinishReason.TOOL_CALLS
        )
        if streaming:
            assert joined_arguments(deltas) == SHELL.arguments
        follow_up = req(Message.user("hi"), Message.assistant(done.content, tool_calls=done.tool_calls),
                        Message.tool_result("call_9", "42"))
        await provider.complete(follow_up)
        assert_valid(OPENAI, "CreateChatCompletionRequest", sent(server, "/v1/chat/completions"))


@pytest.mark.parametrize("streaming", [False, True])
async def test_openai_legacy_function_call_is_read(streaming: bool) -> None:
    call = ToolCall("ignored", "get_weather", '{"city": "Oslo"}')
    reply = ScriptedReply(tool_calls=(call,), tool_call_style="function_call", chunk_size=5)
    async with openai() as (server, provider):
        assert_valid(OPENAI, "CreateChatCompletionResponse", await raw_reply(server, reply))
        for chunk in await raw_reply(server, reply, stream=True):
            assert_valid(OPENAI, "CreateChatCompletionStreamResponse", chunk)
        server.script.push(reply)
        deltas, done = await run(provider, req(), streaming)
    # The deprecated function_call has no id: it is the call at index 0.
    assert done.tool_calls == (ToolCall("call_0", "get_weather", '{"city": "Oslo"}'),)
    assert (done.finish_reason, done.raw_finish_reason) == (FinishReason.TOOL_CALLS, "function_call")
    if streaming:
        assert joined_arguments(deltas) == call.arguments
        assert [d.tool_call.name for d in deltas if d.tool_call and d.tool_call.name] == ["get_weather"]


async def test_openai_requests_match_the_spec() -> None:
    image = Message.user("and this?", ImagePart(data=PNG, media_type="image/png"))
    async with openai() as (server, provider):
        for model, options in (
            ("gpt-4o", {"response_format": "json_object", "temperature": 0.5, "top_p": 0.9, "stop": ("E",)}),
            ("gpt-4o", {"tools": (WEATHER,), "tool_choice": "get_weather", "max_tokens": 30}),
            ("o3-mini", {"tools": (WEATHER,), "tool_choice": "required", "max_tokens": 30, "temperature": 1}),
        ):
            messages = (Message.system("json please"), *TOOL_TURNS, image)
            for streaming in (False, True):
                await run(provider, req(*messages, model=model, **options), streaming)
                assert_valid(OPENAI, "CreateChatCompletionRequest", sent(server, "/v1/chat/completions"))


# --- 5. Anthropic 413 request_too_large -----------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
async def test_anthropic_request_too_large_is_invalid_request_not_context_length(streaming: bool) -> None:
    async with open_anthropic_server() as server, AnthropicProvider(server.url) as provider:
        server.inject(Fault(status=413, message="Request exceeds the maximum allowed number of bytes."))
        with pytest.raises(ProviderError) as info:
            await run(provider, req(), streaming)
    err = info.value
    # The request's size in bytes: dropping turns to fit a context window would not cure it, and no
    # other attempt would fare better.
    assert (err.kind, err.status, err.retryable) == (ErrorKind.INVALID_REQUEST, 413, False)
    assert err.kind not in RETRYABLE_KINDS and err.kind is not ErrorKind.CONTEXT_LENGTH
    assert "request_too_large" in err.message and "maximum allowed number of bytes" in err.message


async def test_payload_too_large_from_a_proxy_is_invalid_request() -> None:
    page = b"<html><head><title>413 Request Entity Too Large</title></head><body>nginx</body></html>"
    async with openai() as (server, provider):
        server.inject(Fault(reply=Reply(413, page, {"content-type": "text/html"})))
        with pytest.raises(ProviderError) as info:
            await provider.complete(req())
    assert (info.value.kind, info.value.retryable) == (ErrorKind.INVALID_REQUEST, False)
    assert "413 Request Entity Too Large" in info.value.message


# --- 6. Ollama: pulling a model the registry does not have ----------------------------------------


async def test_ollama_pull_of_a_missing_model_is_not_found_and_not_retried() -> None:
    async with open_ollama_server(registry=("qwen3:8b",)) as server, OllamaProvider(server.url) as provider:
        progress: list[dict[str, Any]] = []
        with pytest.raises(ProviderError) as info:
            async with aclosing(provider.pull("no-such-model")) as lines:
                async for line in lines:
                    progress.append(line)
        # The same refusal without streaming: Ollama answers 500.
        with pytest.raises(ProviderError) as whole:
            body = {"model": "no-such-model", "stream": False}
            await provider._json("POST", "/api/pull", "no-such-model", body)
        async with aclosing(provider.pull("qwen3:8b")) as lines:
            pulled = [line async for line in lines]
    assert progress == [{"status": "pulling manifest"}]  # the error came in band, after it
    for err, status in ((info.value, None), (whole.value, 500)):
        assert (err.kind, err.retryable, err.status) == (ErrorKind.NOT_FOUND, False, status)
        assert "file does not exist" in err.message
    assert pulled[-1] == {"status": "success"}


# --- 7. error text: problem+json and bodies of unknown shapes -------------------------------------


def _provider_at(kind: str) -> Callable[[], AbstractAsyncContextManager[tuple[Any, HTTPProvider]]]:
    opens: dict[str, tuple[Any, Callable[[Any], HTTPProvider]]] = {
        "openai": (open_openai_server, lambda s: OpenAIProvider(s.base_url, default_model="gpt-4o")),
        "anthropic": (open_anthropic_server, lambda s: AnthropicProvider(s.url)),
        "ollama": (open_ollama_server, lambda s: OllamaProvider(s.url)),
        "tgi": (open_tgi_server, lambda s: TGIProvider(s.url)),
    }
    open_server, make = opens[kind]

    @asynccontextmanager
    async def both() -> AsyncIterator[tuple[Any, HTTPProvider]]:
        async with open_server() as server, make(server) as provider:
            yield server, provider

    return both


PROBLEM = json.dumps({
    "type": "https://gateway.example/problems/upstream-unavailable",
    "title": "Upstream unavailable",
    "status": 503,
    "detail": "no healthy upstream for pool a",
    "instance": "/v1/chat/completions",
}).encode()
UNKNOWN_JSON = json.dumps({"oops": {"trace": ["frame " * 50] * 40, "code": 17}}).encode()
HTML = (
    b"<html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head><body>"
    + b"<p>The upstream went away.</p>" * 500 + b"</body></html>"
)
FASTAPI = json.dumps({"detail": [{"loc": ["body", "messages"], "msg": "Field required", "type": "missing"}]})


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama", "tgi"])
@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (503, PROBLEM, "application/problem+json", "Upstream unavailable: no healthy upstream for pool a"),
        (500, UNKNOWN_JSON, "application/json", 'unrecognised error body: {"oops":{"trace":["frame frame'),
        (502, HTML, "text/html", "502 Bad Gateway The upstream went away."),
        (422, FASTAPI.encode(), "application/json", "Field required"),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_error_text_of_other_shapes_is_kept_and_bounded(
    kind: str, status: int, body: bytes, content_type: str, expected: str, streaming: bool
) -> None:
    async with _provider_at(kind)() as (server, provider):
        server.inject(Fault(reply=Reply(status, body, {"content-type": content_type})))
        with pytest.raises(ProviderError) as info:
            await run(provider, req(), streaming)
    err = info.value
    assert expected in err.message and "upstream error" != err.message
    assert err.status == status
    assert len(err.message) <= MAX_ERROR_TEXT + 100  # the provider adds its notes (type, request id)
    if body in (UNKNOWN_JSON, HTML):
        assert len(err.message) <= MAX_EXCERPT + 100 and "…" in err.message


# --- TGI /info, leniently ---------------------------------------------------------------------------


async def test_tgi_info_accepts_what_real_versions_return() -> None:
    # A TGI 1.4 /info (max_input_length, batch fields) behind a proxy that writes numbers as strings.
    old = {
        "model_id": "bigcode/starcoder", "model_sha": None, "model_dtype": "torch.float16",
        "model_device_type": "cuda", "model_pipeline_tag": None, "max_concurrent_requests": "128",
        "max_best_of": 2, "max_stop_sequences": "4", "max_input_length": "1024", "max_total_tokens": 2048.0,
        "waiting_served_ratio": "1.2", "max_batch_total_tokens": None, "max_waiting_tokens": 20,
        "max_batch_size": None, "validation_workers": 2, "version": "1.4.5", "sha": {"unexpected": 1},
        "docker_label": None,
    }
    async with open_tgi_server() as server, TGIProvider(server.url) as provider:
        server.inject(Fault(path="/info", reply=Reply.json(old)))
        info = await provider.info()
        server.inject(Fault(path="/info", reply=Reply.json({**old, "max_total_tokens": "lots"})))
        with pytest.raises(ProviderError) as unusable:
            await provider.info(refresh=True)
    assert (info.model_id, info.max_input_tokens, info.max_total_tokens) == ("bigcode/starcoder", 1024, 2048)
    assert (info.max_concurrent_requests, info.max_stop_sequences, info.version) == (128, 4, "1.4.5")
    assert info.model_pipeline_tag is None and provider.features().context_window == 2048
    # Without a usable max_total_tokens nothing can be sized: that one is still a protocol error.
    assert unusable.value.kind is ErrorKind.PROTOCOL and "max_total_tokens" in unusable.value.message

