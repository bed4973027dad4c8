"""Gateway protocol units: strict parsing, frames and their cache, the outbox's slow-consumer policies."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st

from duckagents.codec import dumps_signal
from duckagents.gateway._outbox import Outbox, SlowConsumer
from duckagents.gateway._protocol import (
    Cancel,
    Control,
    ErrorCode,
    Ping,
    ProtocolError,
    Reload,
    StatusQuery,
    Submit,
    Subscribe,
    Unsubscribe,
    parse_client_message,
    signal_prefix,
)
from duckagents.gateway._wire import Frame, FrameCache, encode_text_frame
from duckagents.signals import ControlAction, ProviderChunk, make_signal


def parse(obj: Any) -> Any:
    return parse_client_message(obj if isinstance(obj, str) else json.dumps(obj))


def test_valid_messages_parse_to_typed_values() -> None:
    sub = parse({"type": "subscribe", "id": "s", "v": 1, "filter": {"types": ["a", "b"], "providers": None}})
    assert sub == Subscribe("s", sub.filter)
    assert sub.filter.types == frozenset({"a", "b"}) and sub.filter.providers is None
    assert parse({"type": "unsubscribe", "id": 3, "subscription": "s"}) == Unsubscribe(3, "s")
    assert parse({"type": "cancel", "id": "c", "request_id": "gw-1"}) == Cancel("c", "gw-1")
    assert parse({"type": "ping", "id": "p"}) == Ping("p")
    req = parse(
        {
            "type": "request",
            "id": "q",
            "model": "m",
            "timeout": 5,
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi"}, {"type": "image", "url": "http://x/i.png"}],
                },
            ],
            "options": {"max_tokens": 10, "temperature": 0.5, "stop": ["\n"], "stream": False},
            "required_features": ["vision"],
        }
    )
    assert isinstance(req, Submit)
    assert [m.role for m in req.messages] == ["system", "user"] and req.messages[1].text == "hi"
    assert req.options.max_tokens == 10 and req.options.stop == ("\n",) and req.options.stream is False
    assert req.timeout == 5.0 and req.required_features == ("vision",)
    assert parse({"type": "request", "id": 1, "messages": [{"role": "user", "content": "x"}]}).options.stream


@pytest.mark.parametrize(
    ("message", "code", "fragment", "msg_id"),
    [
        ("{not json", ErrorCode.INVALID_JSON, "not valid JSON", None),
        ("[1, 2]", ErrorCode.INVALID_MESSAGE, "JSON object", None),
        ({"type": "ping"}, ErrorCode.INVALID_MESSAGE, "'id'", None),
        ({"type": "ping", "id": ""}, ErrorCode.INVALID_MESSAGE, "'id'", None),
        ({"type": "ping", "id": True}, ErrorCode.INVALID_MESSAGE, "'id'", None),
        ({"type": "ping", "id": "x" * 129}, ErrorCode.INVALID_MESSAGE, "128", None),
        ({"type": "ping", "id": 1, "v": 2}, ErrorCode.UNSUPPORTED_VERSION, "v1", 1),
        ({"type": "pong", "id": 1}, ErrorCode.UNKNOWN_TYPE, "'pong'", 1),
        ({"type": 5, "id": 1}, ErrorCode.UNKNOWN_TYPE, "5", 1),
        ({"type": "ping", "id": 1, "extra": 0}, ErrorCode.INVALID_MESSAGE, "'extra'", 1),
        (
            {"type": "subscribe", "id": 1, "filter": {"types": "provider_chunk"}},
            ErrorCode.INVALID_MESSAGE,
            "$.filter.types: must be an array",
            1,
        ),
        (
            {"type": "subscribe", "id": 1, "filter": {"types": [1]}},
            ErrorCode.INVALID_MESSAGE,
            "$.filter.types[0]",
            1,
        ),
        ({"type": "subscribe", "id": 1, "filter": {"kinds": []}}, ErrorCode.INVALID_MESSAGE, "'kinds'", 1),
        ({"type": "subscribe", "id": 1, "filter": []}, ErrorCode.INVALID_MESSAGE, "$.filter", 1),
        ({"type": "unsubscribe", "id": 1}, ErrorCode.INVALID_MESSAGE, "'subscription'", 1),
        ({"type": "cancel", "id": 1, "request_id": 7}, ErrorCode.INVALID_MESSAGE, "$.request_id", 1),
        ({"type": "request", "id": 1}, ErrorCode.INVALID_MESSAGE, "$.messages", 1),
        ({"type": "request", "id": 1, "messages": []}, ErrorCode.INVALID_MESSAGE, "non-empty", 1),
        (
            {"type": "request", "id": 1, "messages": [{"role": "robot", "content": "x"}]},
            ErrorCode.INVALID_MESSAGE,
            "$.messages[0].role",
            1,
        ),
        (
            {
                "type": "request",
                "id": 1,
                "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            },
            ErrorCode.INVALID_MESSAGE,
            "$.messages[0].content[0].text: must be a string",
            1,
        ),
        (
            {"type": "request", "id": 1, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            ErrorCode.INVALID_MESSAGE,
            "exactly one of data",
            1,
        ),
        (
            {
                "type": "request",
                "id": 1,
                "messages": [{"role": "user", "content": "x"}],
                "options": {"max_tokens": "9"},
            },
            ErrorCode.INVALID_MESSAGE,
            "$.options.max_tokens: must be an integer",
            1,
        ),
        (
            {
                "type": "request",
                "id": 1,
                "messages": [{"role": "user", "content": "x"}],
                "options": {"max_tokens": True},
            },
            ErrorCode.INVALID_MESSAGE,
            "got boolean",
            1,
        ),
        (
            {
                "type": "request",
                "id": 1,
                "messages": [{"role": "user", "content": "x"}],
                "options": {"temprature": 1},
            },
            ErrorCode.INVALID_MESSAGE,
            "'temprature'",
            1,
        ),
        (
            {"type": "request", "id": 1, "messages": [{"role": "user", "content": "x"}], "timeout": -1},
            ErrorCode.INVALID_MESSAGE,
            "$.timeout",
            1,
        ),
        (
            {"type": "request", "id": 1, "messages": [{"role": "user", "content": "x"}], "timeout": "5"},
            ErrorCode.INVALID_MESSAGE,
            "$.timeout",
            1,
        ),
        (
            {"type": "request", "id": 1, "messages": [{"role": "user", "content": "x"}], "model": 3},
            ErrorCode.INVALID_MESSAGE,
            "$.model",
            1,
        ),
    ],
)
def test_bad_messages_are_refused_with_a_code_and_a_precise_message(
    message: Any, code: ErrorCode, fragment: str, msg_id: Any
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(message)
    assert info.value.code is code
    assert fragment in info.value.message
    frame = json.loads(info.value.frame())
    assert frame == {"type": "error", "id": msg_id, "code": code.value, "message": info.value.message}


def test_operator_messages_parse_strictly() -> None:
    assert parse({"type": "status", "id": 1}) == StatusQuery(1)
    assert parse({"type": "reload", "id": "r", "v": 1}) == Reload("r")
    assert parse({"type": "control", "id": 2, "action": "drain", "provider": "a"}) == Control(
        2, ControlAction.DRAIN, "a"
    )
    pull = parse({"type": "control", "id": 3, "action": "model_pull", "provider": "gpu", "model": "m:1b"})
    assert pull == Control(3, ControlAction.MODEL_PULL, "gpu", "m:1b")
    for bad, where in [
        ({"action": "reload", "provider": "a"}, "$.action"),
        ({"action": "drain"}, "$.provider"),
        ({"action": "drain", "provider": ""}, "$.provider"),
        ({"action": "drain", "provider": "a", "model": 5}, "$.model"),
        ({"action": "drain", "provider": "a", "force": True}, "'force'"),
    ]:
        with pytest.raises(ProtocolError) as info:
            parse({"type": "control", "id": 9, **bad})
        assert info.value.code is ErrorCode.INVALID_MESSAGE and where in info.value.message
    with pytest.raises(ProtocolError, match="unknown field"):
        parse({"type": "reload", "id": 1, "config": "/etc/passwd"})  # a client never sends a config


def test_error_messages_never_echo_huge_input() -> None:
    with pytest.raises(ProtocolError) as info:
        parse({"type": "x" * 100_000, "id": 1})
    assert len(info.value.message) < 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["type", "id", "v", "filter", "messages", "options", "timeout", "request_id", "subscription", "model"]
)
ALMOST = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "request", "cancel", "ping", "nope"])},
    optional={"id": JSON, "v": JSON},
).flatmap(lambda base: st.dictionaries(FIELDS, JSON, max_size=4).map(lambda extra: {**extra, **base}))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), JSON.map(json.dumps), ALMOST.map(json.dumps)))
def test_any_text_parses_or_is_refused_with_a_protocol_error(text: str) -> None:
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        frame = json.loads(exc.frame())
        assert frame["type"] == "error" and ErrorCode(frame["code"])
    else:
        assert isinstance(message, Subscribe | Unsubscribe | Submit | Cancel | Ping)


def sig(index: int) -> Frame:
    return Frame(f"s{index}", droppable=True)


def texts(batch: list[Frame] | None) -> list[str] | None:
    return None if batch is None else [f.text for f in batch]


def test_signal_frames_wrap_the_shared_event_json_and_are_encoded_once() -> None:
    signal = make_signal(ProviderChunk("r", "p", 0, "hé"), "/t")
    cache = FrameCache(size=2)
    text = cache.event_json(signal)
    assert cache.event_json(signal) is text and text == dumps_signal(signal)
    prefix = signal_prefix(subscription="s")
    frame = cache.frame(signal, prefix)
    assert cache.frame(signal, prefix) is frame  # shared by every connection with this prefix
    assert cache.frame(signal, signal_prefix(request="q")) is not frame
    decoded = json.loads(frame.text)
    assert decoded["type"] == "signal" and decoded["subscription"] == "s" and "request" not in decoded
    assert decoded["event"] == json.loads(dumps_signal(signal))
    for i in range(3):  # bounded: the oldest entries are evicted
        cache.frame(make_signal(ProviderChunk("r", "p", i + 1), "/t"), prefix)
    assert cache.frame(signal, prefix) is not frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_pre_encoded_frames_are_byte_identical_to_wsprotos(size: int) -> None:
    from wsproto.frame_protocol import FrameProtocol

    text = "é" * (size // 2) + "x" * (size % 2)  # multi-byte UTF-8: lengths are in bytes
    server = FrameProtocol(client=False, extensions=[])
    assert encode_text_frame(text) == server.send_data(text, fin=True)


async def test_outbox_drops_the_oldest_signals_and_reports_how_many() -> None:
    box = Outbox(3, SlowConsumer.DROP_OLDEST)
    await box.push_control("ctl-1")
    for i in range(6):
        box.push_signal(sig(i))
    box.count_dropped(2)  # lost upstream, before reaching this outbox
    batch = texts(await box.take())
    assert batch is not None
    assert json.loads(batch[0]) == {"type": "dropped", "count": 5, "total": 5}
    assert batch[1:] == ["ctl-1", "s3", "s4", "s5"]
    assert box.dropped_total == 5 and len(box) == 0


async def test_outbox_disconnect_policy_trips_once_and_keeps_no_backlog() -> None:
    tripped: list[int] = []
    box = Outbox(2, SlowConsumer.DISCONNECT, on_overflow=lambda: tripped.append(1))
    for i in range(5):
        box.push_signal(sig(i))
    box.count_dropped(1)
    assert tripped == [1] and box.overflowed
    box.close()
    assert await box.take() is None


async def test_control_frames_wait_for_room_and_are_never_dropped() -> None:
    box = Outbox(1, SlowConsumer.DROP_OLDEST, control_capacity=2)
    await box.push_control("a")
    await box.push_control("b")
    done = trio.Event()

    async def third() -> None:
        await box.push_control("c")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # waits: the control budget is used up
        box.push_signal(sig(1))
        box.push_signal(sig(2))  # drops s1, never a control frame
        assert texts(await box.take()) == ['{"type":"dropped","count":1,"total":1}', "a", "b", "s2"]
    assert done.is_set() and texts(await box.take()) == ["c"]


async def test_the_writer_wakes_for_the_first_frame_after_a_quiet_spell() -> None:
    box = Outbox(8, SlowConsumer.DROP_OLDEST)
    got: list[list[str] | None] = []

    async def writer() -> None:
        got.append(texts(await box.take()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        box.push_signal(sig(1))
        box.push_signal(sig(2))
    assert got == [["s1", "s2"]]


async def test_outbox_close_with_flush_hands_out_what_is_queued_first() -> None:
    box = Outbox(4, SlowConsumer.DROP_OLDEST)
    await box.push_control("err")
    box.close(flush=True)
    box.push_signal(sig(9))  # refused after close
    assert texts(await box.take()) == ["err"]
    assert await box.take() is None


async def test_batched_writes_use_the_fast_path_with_this_trio_websocket() -> None:
    # If an upgrade renames the internals, send_batch silently falls back to one write per frame:
    # this test makes that visible.
    from duckagents.gateway import _wire as wire

    seen: list[bool] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        seen.append(wire._internals(ws) and wire._plain(ws._wsproto))
        await wire.send_batch(ws, [Frame("one", droppable=True), Frame("two" * 50_000, droppable=False)])
        await ws.get_message()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        async with trio_websocket.open_websocket("127.0.0.1", server.port, "/", use_ssl=False) as ws:
            got = [await ws.get_message(), await ws.get_message()]
            await ws.send_message("bye")
        nursery.cancel_scope.cancel()
    assert seen == [True]
    assert got == ["one", "two" * 50_000]


async def test_send_batch_falls_back_to_the_public_api() -> None:
    from duckagents.gateway._wire import send_batch

    class Minimal:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send_message(self, message: str) -> None:
            self.sent.append(message)

    ws = Minimal()
    await send_batch(ws, [Frame("a", droppable=True), Frame("b", droppable=False)])  # type: ignore[arg-type]
    assert ws.sent == ["a", "b"]
