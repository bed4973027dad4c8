"""Bad input over real sockets: garbage frames, binary, huge frames, floods. The gateway keeps serving."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.gateway import ErrorCode

from .support import Client, connect, fake_router, running_gateway

FINAL = "zz-final-ping"
SERVER_FRAMES = {"ack", "error", "signal", "dropped"}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["id", "v", "filter", "messages", "options", "timeout", "request_id", "subscription"]
)
TYPED = st.builds(
    lambda kind, extra: {**extra, "type": kind},
    st.sampled_from(["subscribe", "unsubscribe", "request", "cancel", "ping", "hello", ""]),
    st.dictionaries(FIELDS, JSON, max_size=4),
)
TEXT_FRAMES = st.one_of(st.text(max_size=80), JSON.map(json.dumps), TYPED.map(json.dumps))


async def answers_then_final(client: Client, sent: int) -> list[dict[str, Any]]:
    await client.send({"type": "ping", "id": FINAL})
    frames = await client.recv_until(lambda f: f.get("id") == FINAL and f["type"] == "ack")
    assert {f["type"] for f in frames} <= SERVER_FRAMES
    answers = [f for f in frames if f["type"] in ("ack", "error")]
    assert len(answers) == sent + 1  # every message answered exactly once
    for frame in answers:
        if frame["type"] == "error":
            assert ErrorCode(frame["code"]) and frame["message"]
    return frames


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(TEXT_FRAMES, max_size=12), binary=st.binary(max_size=64) | st.none())
async def test_garbage_frames_never_break_the_gateway(frames: list[str], binary: bytes | None) -> None:
    with trio.fail_after(20):
        async with fake_router() as router, running_gateway(router) as gateway:
            async with connect(gateway) as client:
                for text in frames:
                    await client.send(text)
                await answers_then_final(client, len(frames))
                # The same connection still serves a valid request end to end.
                result = await client.request("zz-q", "still alive")
                assert result[-1]["event"]["data"]["content"] == "echo: still alive"
            if binary is not None:
                async with connect(gateway) as client:
                    for text in frames:
                        await client.send(text)
                    await client.ws.send_message(binary)
                    with pytest.raises(trio_websocket.ConnectionClosed) as info:
                        while True:  # the answers to the text frames come first, then the close
                            await client.recv()
                    assert info.value.reason is not None and info.value.reason.code == 1003
                async with connect(gateway) as client:  # a fresh connection works
                    result = await client.request("q", "after binary")
                    assert result[-1]["event"]["type"] == "provider_response"


async def test_binary_frame_closes_with_1003_after_pending_answers() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        await client.send("nonsense")
        await client.ws.send_message(b"\x89PNG")
        error = await client.recv()
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await client.recv()
    assert error["code"] == "invalid_json"
    assert info.value.reason is not None and info.value.reason.code == 1003
    assert "binary" in (info.value.reason.reason or "")


async def test_frame_over_the_size_limit_closes_with_1009_and_others_carry_on() -> None:
    async with fake_router() as router, running_gateway(router, max_frame_bytes=2000) as gateway:
        async with connect(gateway) as bystander, connect(gateway) as client:
            await client.send({"type": "ping", "id": "x" * 100, "pad": "y" * 5000})
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await client.recv()
            assert info.value.reason is not None and info.value.reason.code == 1009
            assert (await bystander.call({"type": "ping", "id": 1}))["type"] == "ack"
        async with connect(gateway) as fresh:
            assert (await fresh.call({"type": "ping", "id": 2}))["type"] == "ack"


async def test_a_flood_gets_rate_limited_errors_then_a_1008_close() -> None:
    # Refill of one message per 1000 s: the budget is the burst, whatever the machine's speed.
    limits: dict[str, Any] = {"max_messages_per_second": 0.001, "message_burst": 5}
    async with fake_router() as router, running_gateway(router, **limits) as gateway:
        async with connect(gateway) as bystander, connect(gateway) as client:
            for i in range(12):
                await client.send({"type": "ping", "id": i})
            frames = []
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                while True:
                    frames.append(await client.recv())
            assert (await bystander.call({"type": "ping", "id": "b"}))["type"] == "ack"
    assert [f["type"] for f in frames] == ["ack"] * 5 + ["error"] * 5
    assert all(f["code"] == "rate_limited" and f["retry_after"] > 0 for f in frames[5:])
    assert [f["id"] for f in frames] == list(range(10))
    assert info.value.reason is not None and info.value.reason.code == 1008
