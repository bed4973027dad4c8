"""TGIProvider and the loopback TGI server over real HTTP: Messages API, native endpoints, errors."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import FinishReason, ImagePart, Message, RequestOptions, ToolCall, ToolSpec
from duckagents.providers import (
    Provider,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    TGIProvider,
    heuristic_token_count,
)
from duckagents.signals import ProviderRequest
from duckagents.testing import Fault, Reply, ScriptedReply, StreamReply, TGIServer, open_tgi_server

KEY = "hf_abcdefghijklmnopqrstuvwxyz012345"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER = ToolSpec("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})


def req(*messages: Message, **options: Any) -> ProviderRequest:
    return ProviderRequest(
        "r1", messages or (Message.user("hello there"),), options=RequestOptions(**options)
    )


async def collect(events: AsyncGenerator[StreamEvent, None]) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    async with aclosing(events) as stream:
        async for event in stream:
            out.append(event)
    return out


def sent(server: TGIServer, path: str) -> dict[str, Any]:
    return next(r for r in reversed(server.requests) if r.path == path).json()  # type: ignore[no-any-return]


def count(server: TGIServer, path: str) -> int:
    return sum(r.path == path for r in server.requests)


@pytest.fixture
async def server() -> AsyncIterator[TGIServer]:
    async with open_tgi_server() as srv:
        yield srv


@pytest.fixture
async def provider(server: TGIServer) -> AsyncIterator[TGIProvider]:
    async with TGIProvider(server.url) as p:
        yield p


# --- Messages API ---------------------------------------------------------------------------------


async def test_complete(provider: TGIProvider, server: TGIServer) -> None:
    assert isinstance(provider, Provider)
    done = await provider.complete(
        req(
            Message.of("developer", "be brief"),
            Message.user("hello there"),
            max_tokens=50,
            temperature=0.5,
            stop=("END",),
        )
    )
    assert done.content == "echo: hello there" and done.model == "HuggingFaceH4/zephyr-7b-beta"
    assert done.finish_reason is FinishReason.STOP and done.raw_finish_reason == "stop"
    assert done.usage.prompt_tokens == 4 and done.usage.completion_tokens == 6
    body = sent(server, "/v1/chat/completions")
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert (body["max_tokens"], body["temperature"], body["stop"]) == (50, 0.5, ["END"])
    assert "stream" not in body and body["model"] == "tgi"


async def test_json_mode_is_a_grammar(provider: TGIProvider, server: TGIServer) -> None:
    await provider.complete(req(response_format="json_object"))
    assert sent(server, "/v1/chat/completions")["response_format"] == {
        "type": "json",
        "value": {"type": "object"},
    }
    await provider.complete(req(response_format="text"))
    assert "response_format" not in sent(server, "/v1/chat/completions")


async def test_stream_text(provider: TGIProvider, server: TGIServer) -> None:
    *deltas, end = await collect(provider.stream(req()))
    assert isinstance(end, StreamEnd)
    assert (
        "".join(d.text for d in deltas if isinstance(d, StreamDelta))
        == end.completion.content
        == "echo: hello there"
    )
    assert end.completion.usage.prompt_tokens == 2 and end.completion.usage.completion_tokens == 6
    body = sent(server, "/v1/chat/completions")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_calls(provider: TGIProvider, server: TGIServer, streamed: bool) -> None:
    server.script.push(ScriptedReply(tool_calls=(ToolCall("x", "get_weather", '{"city": "Paris"}'),)))
    request = req(tools=(WEATHER,), tool_choice="get_weather")
    if streamed:
        events = await collect(provider.stream(request))
        fragments = [e.tool_call for e in events if isinstance(e, StreamDelta) and e.tool_call]
        assert len(fragments) == 5 and fragments[0].name == "get_weather" and fragments[1].name is None
        end = events[-1]
        assert isinstance(end, StreamEnd)
        done = end.completion
    else:
        done = await provider.complete(request)
    assert done.tool_calls == (ToolCall("0", "get_weather", '{"city": "Paris"}'),)
    assert done.finish_reason is FinishReason.TOOL_CALLS and done.raw_finish_reason == "stop"
    body = sent(server, "/v1/chat/completions")
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


async def test_tgi2_object_arguments_and_eos_token_reason() -> None:
    reply = {
        "id": "",
        "created": 1,
        "model": "m",
        "system_fingerprint": "2.0",
        "usage": None,
        "choices": [
            {
                "index": 0,
                "finish_reason": "eos_token",
                "message": {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "0", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
                    ],
                },
            }
        ],
    }
    async with TGIProvider(
        "http://tgi.test", transport=httpx.MockTransport(lambda r: httpx.Response(200, json=reply))
    ) as p:
        done = await p.complete(req())
    assert done.tool_calls == (ToolCall("0", "f", '{"a": 1}'),)
    assert done.finish_reason is FinishReason.TOOL_CALLS and done.raw_finish_reason == "eos_token"


async def test_vision_input(server: TGIServer) -> None:
    server.pipeline_tag = "image-text-to-text"
    async with TGIProvider(server.url) as provider:
        assert not provider.features().vision  # nothing known before /info
        await provider.info()
        assert provider.features().vision
        done = await provider.complete(
            req(Message.user("describe", ImagePart(media_type="image/png", data=PNG)))
        )
    assert done.content == "echo: describe"
    content = sent(server, "/v1/chat/completions")["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    args=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=12), max_size=4),
    chunk=st.integers(1, 7),
)
async def test_streamed_tool_arguments_reassemble(args: dict[str, Any], chunk: int) -> None:
    arguments = json.dumps(args)
    async with open_tgi_server() as server, TGIProvider(server.url) as provider:
        server.script.push(ScriptedReply(tool_calls=(ToolCall("x", "f", arguments),), chunk_size=chunk))
        events = await collect(provider.stream(req()))
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.completion.tool_calls[0].arguments == arguments
    assert (
        "".join(e.tool_call.arguments for e in events if isinstance(e, StreamDelta) and e.tool_call)
        == arguments
    )


# --- native endpoints -------------------------------------------------------------------------------


async def test_generate(provider: TGIProvider, server: TGIServer) -> None:
    done = await provider.generate("once upon a time", {"max_new_tokens": 20, "temperature": 0.7})
    assert done.content == "echo: once upon a time" and done.raw_finish_reason == "eos_token"
    assert done.finish_reason is FinishReason.STOP
    assert done.usage.prompt_tokens == 4 and done.usage.completion_tokens == 7
    assert sent(server, "/generate") == {
        "inputs": "once upon a time",
        "parameters": {"max_new_tokens": 20, "temperature": 0.7, "details": True},
    }
    server.script.push(ScriptedReply(text="abc", finish_reason=FinishReason.LENGTH))
    cut = await provider.generate("x", {"max_new_tokens": 1})
    assert cut.finish_reason is FinishReason.LENGTH and cut.raw_finish_reason == "length"


async def test_generate_stream(provider: TGIProvider, server: TGIServer) -> None:
    *deltas, end = await collect(provider.generate_stream("hi you"))
    assert isinstance(end, StreamEnd)
    texts = [d.text for d in deltas if isinstance(d, StreamDelta)]
    assert texts == ["echo", ": hi", " you"]  # the special </s> token is not text
    assert end.completion.content == "echo: hi you" and end.completion.raw_finish_reason == "eos_token"
    assert end.completion.usage.prompt_tokens == 2 and end.completion.usage.completion_tokens == 4
    assert sent(server, "/generate_stream")["parameters"] == {"details": True}


async def test_info_is_cached_and_drives_features(provider: TGIProvider, server: TGIServer) -> None:
    assert provider.features().context_window == 4096  # TGI defaults before /info
    info = await provider.info()
    assert info.model_id == "HuggingFaceH4/zephyr-7b-beta" and info.max_total_tokens == 2048
    assert info.max_input_tokens == 1024 and info.max_concurrent_requests == 128
    await provider.info()
    assert count(server, "/info") == 1
    await provider.info(refresh=True)
    assert count(server, "/info") == 2
    features = provider.features()
    assert features.context_window == 2048 and features.max_output_tokens == 2047
    assert features.tools and features.json_mode and not features.vision
    assert [(m.name, m.context_window, m.loaded) for m in await provider.list_models()] == [
        ("HuggingFaceH4/zephyr-7b-beta", 2048, True)
    ]


async def test_health(provider: TGIProvider, server: TGIServer) -> None:
    assert (await provider.health()).ok
    server.healthy = False
    probe = await provider.health()
    assert not probe.ok and probe.detail["kind"] == "overloaded" and "unhealthy" in probe.detail["error"]


async def test_health_unreachable_never_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with TGIProvider(f"http://127.0.0.1:{port}") as provider:
        probe = await provider.health()
    assert not probe.ok and probe.detail["kind"] == "network"


async def test_exact_token_count(provider: TGIProvider, server: TGIServer) -> None:
    messages = [Message.system("be nice"), Message.user("count these four words")]
    counted = await provider.estimate_tokens(messages)
    assert counted.exact and counted.tokens == 8  # "system: be nice" + "user: count these four words"
    assert sent(server, "/tokenize") == {"inputs": "system: be nice\nuser: count these four words"}


async def test_token_count_without_tokenizer_is_heuristic() -> None:
    async with open_tgi_server(tokenizer=False) as server, TGIProvider(server.url) as provider:
        messages = [Message.user("count these words")]
        counted = await provider.estimate_tokens(messages)
        with pytest.raises(ProviderError) as err:
            await provider.tokenize("x")
    assert not counted.exact and counted.tokens == heuristic_token_count(messages)
    assert err.value.kind is ErrorKind.NOT_FOUND


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "retryable"),
    [
        (Fault(status=429, message="Model is overloaded"), ErrorKind.OVERLOADED, True),
        (
            Fault(status=429, message="Rate limit reached", error_type="rate_limit"),
            ErrorKind.RATE_LIMITED,
            True,
        ),
        (
            Fault(status=422, message="Input validation error: `top_p` must be > 0.0 and < 1.0"),
            ErrorKind.INVALID_REQUEST,
            False,
        ),
        (
            Fault(status=424, message="Request failed during generation: Server error: CUDA OOM"),
            ErrorKind.UPSTREAM_4XX,
            False,
        ),
        (Fault(status=500, message="Incomplete generation"), ErrorKind.UPSTREAM_5XX, True),
        (Fault(status=503, message="unhealthy", error_type="healthcheck"), ErrorKind.OVERLOADED, True),
        (Fault(status=401, message="Unauthorized", error_type="authentication"), ErrorKind.AUTH, False),
    ],
)
@pytest.mark.parametrize("endpoint", ["complete", "stream", "generate", "generate_stream"])
async def test_error_statuses(
    provider: TGIProvider, server: TGIServer, fault: Fault, kind: ErrorKind, retryable: bool, endpoint: str
) -> None:
    server.inject(fault)
    with pytest.raises(ProviderError) as err:
        await call(provider, endpoint)
    assert err.value.kind is kind and err.value.retryable is retryable and err.value.status == fault.status
    assert fault.message in err.value.message and err.value.provider == "tgi"
    if fault.status == 429:
        assert err.value.retry_after == 1.0


async def call(provider: TGIProvider, endpoint: str) -> Any:
    if endpoint == "complete":
        return await provider.complete(req())
    if endpoint == "stream":
        return await collect(provider.stream(req()))
    if endpoint == "generate":
        return await provider.generate("hi")
    return await collect(provider.generate_stream("hi"))


async def test_real_validation_context_length(provider: TGIProvider) -> None:
    with pytest.raises(ProviderError) as err:
        await provider.complete(req(max_tokens=5000))
    assert err.value.kind is ErrorKind.CONTEXT_LENGTH and err.value.status == 422
    assert "`inputs` tokens + `max_new_tokens` must be <= 2048" in err.value.message
    with pytest.raises(ProviderError) as long_input:
        await provider.generate("word " * 1500)
    assert long_input.value.kind is ErrorKind.CONTEXT_LENGTH
    with pytest.raises(ProviderError) as temp:
        await provider.generate("hi", {"temperature": 0})
    assert temp.value.kind is ErrorKind.INVALID_REQUEST and "strictly positive" in temp.value.message


async def test_in_band_stream_error(provider: TGIProvider, server: TGIServer) -> None:
    events = [
        b'data:{"index":1,"token":{"id":1,"text":"a","logprob":0,"special":false},"generated_text":null}\n\n',
        b'data:{"error":"Request failed during generation: Server error: OOM","error_type":"generation"}\n\n',
    ]
    server.inject(Fault(reply=StreamReply(events)))
    with pytest.raises(ProviderError) as err:
        await collect(provider.generate_stream("hi"))
    assert err.value.kind is ErrorKind.UPSTREAM_4XX and not err.value.retryable and "OOM" in err.value.message


async def test_request_id_and_rate_limit_headers(provider: TGIProvider, server: TGIServer) -> None:
    server.inject(Fault(status=500, message="boom", headers={"x-request-id": "req-tgi-7"}))
    with pytest.raises(ProviderError) as err:
        await provider.complete(req())
    assert "req-tgi-7" in err.value.message
    body = {
        "generated_text": "ok",
        "details": {"finish_reason": "length", "generated_tokens": 1, "prefill": [], "tokens": []},
    }
    headers = {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "3",
        "x-prompt-tokens": "9",
    }
    server.inject(Fault(reply=Reply.json(body, headers=headers)))
    done = await provider.generate("hi")
    assert done.rate_limit is not None and (
        done.rate_limit.limit_requests,
        done.rate_limit.remaining_requests,
    ) == (10, 3)
    assert done.usage.prompt_tokens == 9 and done.finish_reason is FinishReason.LENGTH


async def test_auth_and_key_never_leaks() -> None:
    async with open_tgi_server(api_key="right") as server:
        async with TGIProvider(server.url, api_key=KEY) as provider:
            with pytest.raises(ProviderError) as err:
                await provider.complete(req())
            assert err.value.kind is ErrorKind.AUTH and err.value.status == 401
            server.api_key = None
            server.inject(Fault(status=422, message=f"token {KEY} is not valid"))
            with pytest.raises(ProviderError) as echoed:
                await provider.generate("hi")
            for text in (
                str(err.value),
                repr(err.value),
                str(echoed.value),
                repr(echoed.value),
                repr(provider),
            ):
                assert KEY not in text
        async with TGIProvider(server.url, api_key="right") as provider:
            server.api_key = "right"
            assert (await provider.generate("hi")).content == "echo: hi"
            assert server.requests[-1].headers["authorization"] == "Bearer right"


async def test_timeout(server: TGIServer, autojump_clock: trio.abc.Clock) -> None:
    server.inject(Fault(latency=30.0), Fault(first_byte_delay=30.0))
    async with TGIProvider(server.url, timeout=2.0) as provider:
        for endpoint in ("complete", "stream"):
            with pytest.raises(ProviderError) as err:
                await call(provider, endpoint)
            assert err.value.kind is ErrorKind.TIMEOUT


@pytest.mark.parametrize("endpoint", ["stream", "generate_stream"])
async def test_cut_stream_is_network(provider: TGIProvider, server: TGIServer, endpoint: str) -> None:
    server.inject(Fault(cut_after=2))
    with pytest.raises(ProviderError) as err:
        await call(provider, endpoint)
    assert err.value.kind is ErrorKind.NETWORK and err.value.retryable


@pytest.mark.parametrize("endpoint", ["complete", "stream", "generate", "generate_stream"])
async def test_malformed_is_protocol(provider: TGIProvider, server: TGIServer, endpoint: str) -> None:
    server.inject(Fault(malformed=True))
    with pytest.raises(ProviderError) as err:
        await call(provider, endpoint)
    assert err.value.kind is ErrorKind.PROTOCOL


async def test_info_malformed_is_protocol(provider: TGIProvider, server: TGIServer) -> None:
    server.inject(Fault(reply=Reply.json({"model_id": "m"})))
    with pytest.raises(ProviderError) as err:
        await provider.info()
    assert err.value.kind is ErrorKind.PROTOCOL


@pytest.mark.parametrize("endpoint", ["stream", "generate_stream"])
async def test_stream_without_terminal_event_is_protocol(
    provider: TGIProvider, server: TGIServer, endpoint: str
) -> None:
    chat = b'data:{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    gen = (
        b'data:{"index":1,"token":{"id":1,"text":"hi","logprob":0,"special":false},"generated_text":null}\n\n'
    )
    server.inject(Fault(reply=StreamReply([chat if endpoint == "stream" else gen])))
    with pytest.raises(ProviderError) as err:
        await call(provider, endpoint)
    assert err.value.kind is ErrorKind.PROTOCOL


# --- the wire itself: shapes against TGI's OpenAPI document and the official OpenAI client -------------

_SPEC_PATHS = [
    Path(__file__).resolve().parents[3] / "shared/reference/tgi-openapi.json",
    Path("/work/shared/reference/tgi-openapi.json"),
]


def _schemas() -> dict[str, Any]:
    for path in _SPEC_PATHS:
        if path.exists():
            return json.loads(path.read_text())["components"]["schemas"]  # type: ignore[no-any-return]
    pytest.skip("TGI OpenAPI reference not available")


def _has_required(obj: Any, schema: str, schemas: dict[str, Any]) -> None:
    missing = set(schemas[schema].get("required", ())) - set(obj)
    assert not missing, f"{schema} misses {missing}"


async def test_wire_shapes_match_openapi(server: TGIServer) -> None:
    schemas = _schemas()
    async with httpx.AsyncClient(base_url=server.url) as client:
        info = (await client.get("/info")).json()
        _has_required(info, "Info", schemas)
        assert (await client.get("/health")).status_code == 200
        tokens = (await client.post("/tokenize", json={"inputs": "hello big world"})).json()
        for token in tokens:
            _has_required(token, "SimpleToken", schemas)
        assert [(t["text"], t["start"], t["stop"]) for t in tokens] == [
            ("hello", 0, 5),
            ("big", 6, 9),
            ("world", 10, 15),
        ]
        generated = (
            await client.post("/generate", json={"inputs": "hi", "parameters": {"details": True}})
        ).json()
        _has_required(generated, "GenerateResponse", schemas)
        _has_required(generated["details"], "Details", schemas)
        async with client.stream("POST", "/generate_stream", json={"inputs": "hi"}) as response:
            assert response.headers["content-type"] == "text/event-stream"
            events = [
                json.loads(line[5:]) async for line in response.aiter_lines() if line.startswith("data:")
            ]
        for event in events:
            _has_required(event, "StreamResponse", schemas)
            _has_required(event["token"], "Token", schemas)
        _has_required(events[-1]["details"], "StreamDetails", schemas)
        chat = (
            await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        ).json()
        _has_required(chat, "ChatCompletion", schemas)
        _has_required(chat["choices"][0], "ChatCompletionComplete", schemas)
        body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line[5:] async for line in response.aiter_lines() if line.startswith("data:")]
        assert lines[-1] == "[DONE]"
        for line in lines[:-1]:
            _has_required(json.loads(line), "ChatCompletionChunk", schemas)


async def test_error_shapes(server: TGIServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        too_long = await client.post(
            "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 4096}}
        )
        assert too_long.status_code == 422
        assert too_long.json() == {
            "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
            "2048. Given: 1 `inputs` tokens and 4096 `max_new_tokens`",
            "error_type": "validation",
        }
        missing = await client.post("/generate", json={"parameters": {}})
        assert missing.status_code == 422 and "missing field `inputs`" in missing.text
        assert missing.headers["content-type"].startswith("text/plain")
        server.inject(Fault(status=429, message="Model is overloaded"))
        busy = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
        )
        assert busy.status_code == 429 and busy.json() == {
            "error": "Model is overloaded",
            "error_type": "overloaded",
        }
        assert busy.headers["retry-after"] == "1"


async def test_official_openai_client_parses_messages_api(server: TGIServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    try:
        reply = await client.chat.completions.create(
            model="tgi", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "echo: hi" and reply.usage.total_tokens == 4
        server.script.push(ScriptedReply(tool_calls=(ToolCall("x", "f", '{"a": 1}'),)))
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="tgi",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        assert calls[0].function.name == "f" and "".join(c.function.arguments for c in calls) == '{"a": 1}'
        assert chunks[-1].usage is not None and chunks[-1].choices == []
    finally:
        await client.close()
