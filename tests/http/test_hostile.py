"""Hostile input against the HTTP endpoint (the gateway's property test, at the other door): arbitrary
JSON of any type, depth and size in every field, lone surrogates, huge integers, NaN and Infinity, and
bytes that are not JSON at all. The server stays up, every response is valid JSON (no NaN, valid UTF-8)
and is either an OpenAI error object or a valid completion; nothing is logged as a crash."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.validation import ValidationLimits

from .support import chat_body, is_error_object, mock_config, running_door, sse_events, strict_json

TEXT = st.text(max_size=12) | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3)
NUMBERS = (
    st.integers()
    | st.integers(min_value=2**63 - 5, max_value=2**70)
    | st.floats()  # NaN and Infinity included: json.dumps writes them as bare tokens
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=16,
)
TOP_FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "n",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "response_format",
        "user",
        "seed",
        "logprobs",
        "functions",
        "x",
    ]
)
MESSAGE_FIELDS = st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id", "refusal", "z"])


def _dumps(value: Any) -> bytes:
    # ensure_ascii: lone surrogates go out as \ud800 escapes (valid JSON syntax, invalid Unicode)
    return json.dumps(value).encode("ascii")


def _with_field(field: str, value: Any) -> bytes:
    return _dumps({**chat_body("hostile"), field: value})


def _message_field(field: str, value: Any) -> bytes:
    message = {"role": "user", "content": "hi", field: value}
    return _dumps({"model": "mock-1", "messages": [message]})


def _deep(depth: int, opener: str) -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    inner = '{"a":' * depth + "1" + "}" * depth if opener == "{" else "[" * depth + "1" + closer * depth
    return ('{"model":"mock-1","messages":[{"role":"user","content":"x"}],"tools":' + inner + "}").encode()


BODIES = st.one_of(
    JSON.map(_dumps),
    st.builds(_with_field, TOP_FIELDS, JSON),
    st.builds(_message_field, MESSAGE_FIELDS, JSON),
    st.builds(_deep, st.integers(1, 5000), st.sampled_from("[{")),
    st.integers(4000, 6000).map(lambda n: ('{"model":"mock-1","max_tokens":' + "9" * n + "}").encode()),
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
ALLOWED = {200, 400, 404, 413}


def check_answer(status: int, content_type: str, body: bytes) -> None:
    assert status in ALLOWED, (status, body[:300])
    if content_type.startswith("text/event-stream"):
        assert status == 200
        events = sse_events(body.decode("utf-8"))
        assert events[-1] == "[DONE]"
        assert all(e["object"] == "chat.completion.chunk" for e in events[:-1]), events
        return
    payload = strict_json(body)
    if status == 200:
        assert (
            payload["object"] == "chat.completion" and payload["choices"][0]["message"]["role"] == "assistant"
        )
    else:
        assert is_error_object(payload), payload


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(bodies=st.lists(BODIES, min_size=1, max_size=10))
async def test_hostile_bodies_never_break_the_door(bodies: list[bytes]) -> None:
    errors = _ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        await _send_all(bodies)
    finally:
        logging.getLogger().removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]


class _ErrorLog(logging.Handler):
    """Keeps every record at ERROR or above (a crash anywhere in the server logs one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _send_all(bodies: list[bytes]) -> None:
    async with running_door(mock_config(validation=ValidationLimits(max_depth=32))) as (_, _, client):
        for body in bodies:
            answer = await client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            check_answer(answer.status_code, answer.headers.get("content-type", ""), answer.content)
        # Still up, and still serving a valid request end to end.
        assert (await client.get("/healthz")).status_code == 200
        fine = await client.post("/v1/chat/completions", json=chat_body("still alive"))
        assert fine.status_code == 200 and "still alive" in fine.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"mock-1","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"mock-1","messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
        b'{"model":"mock-1","messages":[{"role":"user","content":"hi"}],"temperature":1e999}',
        b'{"model":"mock-1","messages":[{"role":"user","content":"hi"}],"max_tokens":' + b"9" * 5000 + b"}",
        b'{"model":"mock-1","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function",'
        b'"function":{"name":"f","parameters":{"type":"object","default":'
        + b"[" * 400
        + b"]" * 400
        + b"}}}]}",
    ],
)
async def test_the_poison_requests_of_the_gateway_are_400s_here(body: bytes) -> None:
    async with running_door(mock_config()) as (_, _, client):
        answer = await client.post("/v1/chat/completions", content=body)
        assert answer.status_code == 400 and is_error_object(strict_json(answer.content))
        assert len(answer.content) < 2000  # the message never echoes the input back whole
        assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 200
