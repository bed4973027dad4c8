"""The loopback OpenAI server speaks the real wire format: the official ``openai`` client parses every reply.

The official client is asyncio/anyio based, so the Trio server runs in its own thread (``trio.run``) and
the tests use the synchronous ``openai.OpenAI`` client from the test thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from duckagents.messages import ToolCall
from duckagents.testing import Fault, OpenAIServer, ScriptedReply, ThreadedServer

KEY = "sk-test-wire0123456789abcdef"


ThreadedOpenAI = ThreadedServer[OpenAIServer]


@pytest.fixture
def wire() -> Iterator[ThreadedOpenAI]:
    with ThreadedServer(OpenAIServer(api_key=KEY)) as ts:
        yield ts


@pytest.fixture
def client(wire: ThreadedOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=wire.server.base_url, api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_official_client_non_streaming(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "system", "content": "hi"}, {"role": "user", "content": "ping me"}]
    )
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")
    assert done.choices[0].message.content == "echo: ping me"
    assert done.choices[0].finish_reason == "stop" and done.choices[0].message.role == "assistant"
    assert done.usage is not None and done.usage.total_tokens == done.usage.prompt_tokens + 3
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}]
    )
    assert (
        raw.headers["x-request-id"].startswith("req_") and int(raw.headers["x-ratelimit-limit-requests"]) > 0
    )
    assert raw.parse().choices[0].message.content == "echo: x"


def test_official_client_streaming_with_usage(client: openai.OpenAI, wire: ThreadedOpenAI) -> None:
    wire.call(wire.server.script.push, ScriptedReply(text="streamed words here", chunk_size=4))
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "go"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed words here"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_official_client_tool_calls(client: openai.OpenAI, wire: ThreadedOpenAI) -> None:
    call = ToolCall("call_w1", "get_weather", '{"city": "Lima"}')
    wire.call(wire.server.script.push, ScriptedReply(tool_calls=(call,)), ScriptedReply(tool_calls=(call,)))
    done = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    message = done.choices[0].message
    assert done.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls is not None and message.tool_calls[0].id == "call_w1"
    assert message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Lima"}  # type: ignore[union-attr]
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True
    )
    arguments, names, ids = "", [], []
    for chunk in stream:
        for frag in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert frag.index == 0
            ids += [frag.id] if frag.id else []
            names += [frag.function.name] if frag.function and frag.function.name else []
            arguments += frag.function.arguments or "" if frag.function else ""
    assert (ids, names, json.loads(arguments)) == (["call_w1"], ["get_weather"], {"city": "Lima"})


def test_official_client_parses_custom_and_legacy_function_calls(
    client: openai.OpenAI, wire: ThreadedOpenAI
) -> None:
    shell = ToolCall("call_c1", "shell", "ls | wc -l")
    legacy = ToolCall("unused", "get_weather", '{"city": "Lima"}')
    wire.call(
        wire.server.script.push,
        ScriptedReply(text="Running it.", tool_calls=(shell,), tool_call_style="custom"),
        ScriptedReply(tool_calls=(legacy,), tool_call_style="function_call"),
        ScriptedReply(tool_calls=(legacy,), tool_call_style="function_call"),
    )
    messages: list[Any] = [{"role": "user", "content": "go"}]
    custom = client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message
    assert custom.content == "Running it." and custom.tool_calls is not None
    assert custom.tool_calls[0].type == "custom" and custom.tool_calls[0].id == "call_c1"
    assert (custom.tool_calls[0].custom.name, custom.tool_calls[0].custom.input) == ("shell", "ls | wc -l")  # type: ignore[union-attr]
    old = client.chat.completions.create(model="gpt-4o", messages=messages).choices[0]
    assert old.finish_reason == "function_call" and old.message.tool_calls is None
    assert old.message.function_call is not None and old.message.function_call.name == "get_weather"
    assert json.loads(old.message.function_call.arguments) == {"city": "Lima"}
    streamed = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
    pieces = [
        c.choices[0].delta.function_call for c in streamed if c.choices and c.choices[0].delta.function_call
    ]
    assert pieces[0].name == "get_weather"
    assert json.loads("".join(p.arguments or "" for p in pieces)) == {"city": "Lima"}


def test_official_client_json_mode(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "answer in JSON"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(done.choices[0].message.content or "") == {"echo": "answer in JSON"}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "no keyword"}],
            response_format={"type": "json_object"},
        )
    assert info.value.status_code == 400 and info.value.param == "messages"


def test_official_client_errors(client: openai.OpenAI, wire: ThreadedOpenAI) -> None:
    wire.call(wire.server.inject, Fault(status=429))
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert limited.value.status_code == 429 and limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.request_id is not None and limited.value.request_id.startswith("req_")
    wire.call(wire.server.inject, Fault(status=429, error_type="insufficient_quota"))
    with pytest.raises(openai.RateLimitError) as quota:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert quota.value.code == "insufficient_quota" and quota.value.type == "insufficient_quota"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with openai.OpenAI(base_url=wire.server.base_url, api_key="sk-bad-00000000", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as auth:
            bad.models.list()
    assert auth.value.code == "invalid_api_key" and "sk-bad-00000000" not in str(auth.value)
    wire.call(wire.server.inject, Fault(status=503))
    with pytest.raises(openai.InternalServerError) as busy:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert busy.value.status_code == 503


def test_official_client_retries_after_429_honouring_retry_after_ms(wire: ThreadedOpenAI) -> None:
    wire.call(wire.server.inject, Fault(status=429, headers={"retry-after-ms": "5"}))
    with openai.OpenAI(base_url=wire.server.base_url, api_key=KEY, max_retries=1) as retrying:
        done = retrying.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "again"}]
        )
    assert done.choices[0].message.content == "echo: again"


def test_an_enforced_limit_answers_the_apis_429_beyond_it() -> None:
    with ThreadedServer(OpenAIServer(api_key=KEY, enforce=(2, 3600.0))) as wire:
        with openai.OpenAI(base_url=wire.server.base_url, api_key=KEY, max_retries=0, timeout=30) as c:
            for _ in range(2):
                c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.RateLimitError) as info:
                c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "rate_limit_exceeded" and int(info.value.response.headers["retry-after"]) >= 1
    assert wire.server.refused == 1 and len(wire.server.served_at) == 2


def test_official_client_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o" in ids and all(isinstance(i, str) for i in ids)
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_official_client_sees_malformed_stream(client: openai.OpenAI, wire: ThreadedOpenAI) -> None:
    wire.call(wire.server.inject, Fault(malformed=True))
    with pytest.raises(json.JSONDecodeError):
        list(
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )


# --- the server's validation, over raw HTTP --------------------------------------------------------

BAD_REQUESTS = [
    ({"model": "gpt-4o"}, 400, "messages", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, None, None),
    ({"model": "gpt-4o", "messages": []}, 400, "messages", "empty_array"),
    (
        {"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages[0].role",
        "invalid_value",
    ),
    (
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                }
            ],
        },
        400,
        "messages[0]",
        "invalid_value",
    ),
    (
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "user", "content": "x"},
            ],
        },
        400,
        "messages.[0].role",
        None,
    ),
    (
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"},
        400,
        "tool_choice",
        None,
    ),
    (
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "bad name!"}}],
        },
        400,
        "tools[0].function.name",
        "invalid_value",
    ),
    (
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "x"}],
            "stream_options": {"include_usage": True},
        },
        400,
        "stream_options",
        None,
    ),
    (
        {"model": "o3-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 0.2},
        400,
        "temperature",
        "unsupported_value",
    ),
    ({"model": "gpt-4o", "messages": "hi"}, 400, "messages", "invalid_type"),
    (
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "response_format": 5},
        400,
        None,
        None,
    ),
]


@pytest.mark.parametrize(("body", "status", "param", "code"), BAD_REQUESTS)
def test_server_validates_like_the_api(
    wire: ThreadedOpenAI, body: dict[str, Any], status: int, param: str | None, code: str | None
) -> None:
    reply = httpx.post(
        wire.server.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )
    assert reply.status_code == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code) and error["message"]


def test_server_auth_and_routing(wire: ThreadedOpenAI) -> None:
    url = wire.server.base_url
    missing = httpx.get(url + "/models")
    assert missing.status_code == 401 and "didn't provide an API key" in missing.json()["error"]["message"]
    not_json = httpx.post(
        url + "/chat/completions", content=b"{nope", headers={"authorization": f"Bearer {KEY}"}
    )
    assert not_json.status_code == 400 and "parse the JSON body" in not_json.json()["error"]["message"]
    lost = httpx.post(url + "/chat/completion", json={}, headers={"authorization": f"Bearer {KEY}"})
    assert (
        lost.status_code == 404
        and lost.json()["error"]["message"] == "Invalid URL (POST /v1/chat/completion)"
    )
