"""The official ``anthropic`` client against our loopback server: proof it speaks the real wire format.

The client is sync/asyncio, so the Trio server runs in a background thread (``trio.run``) and the tests
drive the sync client from the test thread with ``max_retries=0``, so faults are seen as sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from duckagents.messages import ToolCall
from duckagents.testing import Fault, ScriptedReply, ThreadedServer
from duckagents.testing._anthropic import DEFAULT_MODELS, AnthropicServer

KEY = "sk-ant-api03-wireTESTkey-0123456789abcdef"
MODEL = "claude-sonnet-4-6"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


ThreadedAnthropic = ThreadedServer[AnthropicServer]


@pytest.fixture(scope="module")
def threaded() -> Iterator[ThreadedAnthropic]:
    with ThreadedServer(AnthropicServer(api_key=KEY)) as threaded:
        yield threaded


@pytest.fixture
def srv(threaded: ThreadedAnthropic) -> AnthropicServer:
    assert threaded.server is not None
    return threaded.server


@pytest.fixture
def client(threaded: ThreadedAnthropic) -> Iterator[anthropic.Anthropic]:
    assert threaded.server is not None
    with anthropic.Anthropic(api_key=KEY, base_url=threaded.server.url, max_retries=0, timeout=30) as client:
        yield client


def push(threaded: ThreadedAnthropic, *replies: ScriptedReply) -> None:
    assert threaded.server is not None
    threaded.call(threaded.server.script.push, *replies)


def inject(threaded: ThreadedAnthropic, *faults: Fault) -> None:
    assert threaded.server is not None
    threaded.call(threaded.server.inject, *faults)


def last_body(threaded: ThreadedAnthropic) -> Any:
    assert threaded.server is not None
    return threaded.call(lambda: threaded.server.requests[-1].json())


def test_create_text(client: anthropic.Anthropic, threaded: ThreadedAnthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=64, system="be brief", messages=[{"role": "user", "content": "hi there"}]
    )
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.id.startswith("msg_")
    assert [(b.type, b.text) for b in message.content] == [("text", "echo: hi there")]  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    assert last_body(threaded)["max_tokens"] == 64


def test_create_tool_use_and_refusal(client: anthropic.Anthropic, threaded: ThreadedAnthropic) -> None:
    push(
        threaded,
        ScriptedReply(text="checking", tool_calls=(ToolCall("toolu_01", "get_weather", '{"city": "Lima"}'),)),
        ScriptedReply(text="I can't help with that.", raw_finish_reason="refusal"),
    )
    message = client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": "weather in Lima?"}],
    )
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and text.text == "checking"
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("toolu_01", "get_weather", {"city": "Lima"})
    refusal = client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            {"role": "user", "content": "weather in Lima?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Lima"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "warm"}],
            },
        ],
    )
    assert refusal.stop_reason == "refusal"
    assert refusal.content[0].text == "I can't help with that."  # type: ignore[union-attr]


def test_stream_text_with_helper(client: anthropic.Anthropic, threaded: ThreadedAnthropic) -> None:
    push(threaded, ScriptedReply(text="streaming works over loopback", chunk_size=3))
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "go"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 10 and "".join(pieces) == "streaming works over loopback"
    assert final.content[0].text == "streaming works over loopback"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (1, 4)
    assert last_body(threaded)["stream"] is True


def test_stream_tool_use_with_helper(client: anthropic.Anthropic, threaded: ThreadedAnthropic) -> None:
    calls = (
        ToolCall("toolu_a", "get_weather", '{"city": "Reykjavik"}'),
        ToolCall("toolu_b", "get_weather", '{"city": "Nuuk"}'),
    )
    push(threaded, ScriptedReply(text="two lookups", tool_calls=calls, chunk_size=4))
    with client.messages.stream(
        model=MODEL,
        max_tokens=64,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "weather up north?"}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds.count("input_json") > 2 and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == [
        ("text", None),
        ("tool_use", {"city": "Reykjavik"}),
        ("tool_use", {"city": "Nuuk"}),
    ]


def test_vision_input(client: anthropic.Anthropic, threaded: ThreadedAnthropic) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    message = client.messages.create(
        model=MODEL,
        max_tokens=32,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "describe it"}]}],  # type: ignore[list-item]
    )
    assert message.content[0].text == "echo: describe it"  # type: ignore[union-attr]
    assert last_body(threaded)["messages"][0]["content"][0] == image


def test_count_tokens(client: anthropic.Anthropic) -> None:
    count = client.messages.count_tokens(
        model=MODEL,
        system="you are terse",
        messages=[{"role": "user", "content": "count these five words please"}],
    )
    assert count.input_tokens == 8


def test_models_list_and_retrieve(client: anthropic.Anthropic) -> None:
    ids = [model.id for model in client.models.list(limit=2)]  # auto-pagination over 2-item pages
    assert ids == list(DEFAULT_MODELS) and len(ids) > 2
    page = client.models.list(limit=3)
    assert page.has_more and (page.first_id, page.last_id) == (DEFAULT_MODELS[0], DEFAULT_MODELS[2])
    model = client.models.retrieve("claude-haiku-4-5")
    assert model.id == "claude-haiku-4-5" and model.type == "model" and model.display_name
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nope")


def test_overloaded_529(client: anthropic.Anthropic, threaded: ThreadedAnthropic) -> None:
    inject(threaded, Fault(status=529, message="Overloaded"))
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    err = info.value
    assert err.status_code == 529 and err.request_id and err.request_id.startswith("req_loopback")
    assert isinstance(err.body, dict)
    assert err.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    overloaded = getattr(anthropic, "OverloadedError", None)
    if overloaded is not None:  # newer clients have a dedicated class for 529
        assert isinstance(err, overloaded)


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (Fault(status=429, message="slow down"), anthropic.RateLimitError),
        (Fault(status=400, message="bad"), anthropic.BadRequestError),
        (Fault(status=403, message="no"), anthropic.PermissionDeniedError),
        (Fault(status=500, message="boom"), anthropic.InternalServerError),
    ],
)
def test_http_errors_raise_the_right_class(
    client: anthropic.Anthropic, threaded: ThreadedAnthropic, fault: Fault, error_class: type[Exception]
) -> None:
    inject(threaded, fault)
    with pytest.raises(error_class) as info:
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    err = info.value
    assert isinstance(err, anthropic.APIStatusError) and err.status_code == fault.status
    assert isinstance(err.body, dict) and err.body["error"]["message"] == fault.message
    if fault.status == 429:
        assert err.response.headers["retry-after"] == "5"
        assert err.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_wrong_key_is_authentication_error(threaded: ThreadedAnthropic) -> None:
    assert threaded.server is not None
    with anthropic.Anthropic(
        api_key="sk-ant-api03-wrong-000000", base_url=threaded.server.url, max_retries=0
    ) as bad:
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 401


def test_error_event_mid_stream(client: anthropic.Anthropic, threaded: ThreadedAnthropic) -> None:
    inject(threaded, Fault(error_type="overloaded_error", message="Overloaded", cut_after=4))
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        ) as s:
            for _ in s:
                pass
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}


def test_malformed_body_is_rejected_by_the_client(
    client: anthropic.Anthropic, threaded: ThreadedAnthropic
) -> None:
    inject(threaded, Fault(malformed=True))
    with pytest.raises((anthropic.APIResponseValidationError, ValueError)):
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
