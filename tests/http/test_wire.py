"""The OpenAI wire format of the door, without a server: parsing requests into our types, and rendering
answers that the official SDK's own models validate."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from duckagents.errors import ErrorKind, ProviderError
from duckagents.http._errors import ApiError, from_provider_error
from duckagents.http._json import BodyError, dumps, param_of
from duckagents.http._wire import ChunkWriter, completion_object, parse_chat_request
from duckagents.messages import FinishReason, ImagePart, TextPart, ToolCall, ToolSpec, Usage
from duckagents.signals import ProviderChunk, ProviderResponse, ToolCallDelta

from .support import sse_events


def test_a_full_request_maps_to_our_types() -> None:
    request = parse_chat_request(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,aGVsbG8=", "detail": "low"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://example.com/duck.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": 0.5,
            "top_p": 1,
            "stop": "END",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {"type": "json_object"},
            "n": 1,
            "user": "someone",
            "seed": 7,
            "logprobs": False,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert request.model == "gpt-4o" and request.stream and request.include_usage
    developer, user, assistant, tool = request.messages
    assert developer.role == "developer" and developer.text == "Be brief."
    assert user.content[0] == TextPart("look")
    assert user.images == (
        ImagePart(media_type="image/png", data="aGVsbG8="),
        ImagePart(url="https://example.com/duck.png"),
    )
    assert assistant.tool_calls == (ToolCall("c1", "f", '{"a":1}'),) and assistant.content == ()
    assert tool.tool_call_id == "c1" and tool.text == "42"
    assert request.options == {
        "max_tokens": 20,
        "temperature": 0.5,
        "top_p": 1.0,
        "stop": ("END",),
        "tools": (ToolSpec("f", "", {"type": "object"}),),
        "tool_choice": "f",
        "response_format": "json_object",
    }


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "n": 3}, "n", "n = 1"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs", "not supported"),
        ({"messages": [{"role": "user", "content": "x"}], "functions": [{}]}, "functions", "use tools"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role", "function"),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].type",
            "not supported in system",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}
                ]
            },
            "messages[0].content[0].image_url.url",
            "http(s) URL",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
            "base64",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "string"),
        ({"messages": [{"role": "assistant"}]}, "messages[0].content", "content or tool_calls"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "required"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "messages[0].tool_calls",
            "unrecognized",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "bad name"}}],
            },
            "tools[0].function.name",
            "1 to 64",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]},
            "stop",
            "at most 4",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
            "tool_choice",
            "needs tools",
        ),
        ({"messages": "hi"}, "messages", "non-empty array"),
        ({}, "messages", "required"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": True}, "temperature", "number"),
        (
            {"messages": [{"role": "user", "content": "x"}], "x" * 500: 1},
            '"' + "x" * 36 + "...",
            "unrecognized",
        ),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(BodyError) as info:
        parse_chat_request(body)
    assert info.value.param == param and words in info.value.message, (info.value.param, info.value.message)


def test_validation_paths_become_openai_params() -> None:
    assert param_of("$") is None and param_of("$.model") == "model"
    assert param_of("$.messages[0].content") == "messages[0].content" and param_of("$[0]") == "[0]"


def test_dumps_replaces_lone_surrogates_and_refuses_nan() -> None:
    assert dumps({"a": "\ud800é"}) == '{"a":"\ufffdé"}'.encode()
    assert dumps({"a": "é"}) == '{"a":"é"}'.encode()
    with pytest.raises(ValueError):
        dumps({"a": float("nan")})


RESPONSE = ProviderResponse(
    request_id="r1",
    provider="gpt",
    model="gpt-4o-2024-08-06",
    content="hello",
    usage=Usage(prompt_tokens=3, completion_tokens=2),
)


def test_completion_objects_validate_as_the_sdks_models() -> None:
    plain = ChatCompletion.model_validate(completion_object(RESPONSE, created=1))
    assert plain.id == "chatcmpl-r1" and plain.model == "gpt-4o-2024-08-06"
    assert plain.choices[0].message.content == "hello" and plain.usage and plain.usage.total_tokens == 5
    calls = attrs.evolve(
        RESPONSE, content="", tool_calls=(ToolCall("c1", "f", "{}"),), finish_reason=FinishReason.TOOL_CALLS
    )
    with_tools = ChatCompletion.model_validate(completion_object(calls))
    assert (
        with_tools.choices[0].message.content is None and with_tools.choices[0].finish_reason == "tool_calls"
    )
    refusal = attrs.evolve(RESPONSE, content="I can't", finish_reason=FinishReason.REFUSAL)
    refused = ChatCompletion.model_validate(completion_object(refusal))
    assert refused.choices[0].message.refusal == "I can't" and refused.choices[0].finish_reason == "stop"


def test_chunk_events_validate_as_the_sdks_models() -> None:
    writer = ChunkWriter("r1", "gpt-4o", include_usage=True, created=1)
    body = b"".join(
        [
            writer.delta(ProviderChunk("r1", "gpt", 0, "hel")),
            writer.delta(ProviderChunk("r1", "gpt", 1, "lo")),
            writer.delta(ProviderChunk("r1", "gpt", 2, tool_call=ToolCallDelta(0, "c1", "f", '{"a"'))),
            writer.delta(ProviderChunk("r1", "gpt", 3, tool_call=ToolCallDelta(0, arguments=":1}"))),
            writer.finish(RESPONSE),
        ]
    ).decode()
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == "hel"
    assert chunks[2].choices[0].delta.tool_calls and chunks[2].choices[0].delta.tool_calls[0].id == "c1"
    assert chunks[3].choices[0].delta.tool_calls and chunks[3].choices[0].delta.tool_calls[0].id is None
    assert chunks[4].choices[0].finish_reason == "stop" and chunks[4].model == "gpt-4o-2024-08-06"
    assert chunks[5].choices == [] and chunks[5].usage and chunks[5].usage.completion_tokens == 2
    assert all(c.usage is None for c in chunks[:5])
    empty = ChunkWriter("r2", "m", include_usage=False, created=1).finish(attrs.evolve(RESPONSE, content=""))
    first, finish, done = sse_events(empty.decode())
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""} and done == "[DONE]"
    assert "usage" not in finish


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        (ErrorKind.RATE_LIMITED, 429, "rate_limit_exceeded"),
        (ErrorKind.QUOTA_EXCEEDED, 429, "insufficient_quota"),
        (ErrorKind.CONTEXT_LENGTH, 400, "context_length_exceeded"),
        (ErrorKind.INVALID_REQUEST, 400, "invalid_request"),
        (ErrorKind.NOT_FOUND, 404, "model_not_found"),
        (ErrorKind.TIMEOUT, 504, "timeout"),
        (ErrorKind.UPSTREAM_5XX, 502, "upstream_5xx"),
        (ErrorKind.CIRCUIT_OPEN, 503, "circuit_open"),
        (ErrorKind.OVERLOADED, 503, "overloaded"),
        (ErrorKind.AGENT_CRASHED, 500, "agent_crashed"),
        (ErrorKind.AUTH, 502, "auth"),
        (ErrorKind.NO_PROVIDER, 400, "no_provider"),
    ],
)
def test_every_error_kind_has_its_status(kind: ErrorKind, status: int, code: str) -> None:
    error = from_provider_error(ProviderError(kind, "boom", retry_after=2.5))
    assert (error.status, error.kind, error.code) == (status, kind.value, code)
    assert error.body() == {
        "error": {"message": error.message, "type": kind.value, "param": None, "code": code}
    }
    assert error.headers["retry-after"] == "3" and error.headers["retry-after-ms"] == "2500"


def test_unknown_model_and_absurd_retry_after() -> None:
    error = from_provider_error(ProviderError(ErrorKind.NO_PROVIDER, "x"), unknown_model="gpt-9")
    assert error.status == 404 and error.code == "model_not_found" and error.param == "model"
    assert ApiError(429, "rate_limited", "x", retry_after=1e12).headers["retry-after"] == "86400"
    assert ApiError(429, "rate_limited", "x", retry_after=float("nan")).headers["retry-after"] == "1"
    assert len(ApiError(400, "invalid_request", "y" * 10_000).message) == 1000
