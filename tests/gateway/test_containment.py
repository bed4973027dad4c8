"""One bad message never takes the gateway down (issue 10), over real loopback sockets in front of the real
tree (router and mock agent): bad values answered with error frames that name the field, signals that
cannot be encoded failing alone, memory bounded in bytes, idle connections closed, floods disconnected."""

from __future__ import annotations

import gc
import json
import logging
import math
import tracemalloc
from typing import Any

import pytest
import trio
import trio_websocket

from duckagents.config import GatewayConfig
from duckagents.messages import Features, Message, RequestOptions, ToolSpec
from duckagents.providers import MockProvider
from duckagents.signals import ProviderRequest, make_signal

from .support import Client, connect, eventually, sees_request, serving, watcher


def deep(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def request_text(msg_id: Any, **fields: Any) -> str:
    message = {"type": "request", "id": msg_id, "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(message, allow_nan=True)


async def error_for(client: Client, text: str, msg_id: Any) -> dict[str, Any]:
    await client.send(text)
    frames = await client.recv_until(lambda f: f.get("type") == "error")
    assert frames[-1]["id"] == msg_id, frames[-1]
    return frames[-1]


# --- bad values in frames ----------------------------------------------------------------------------


async def test_deep_tool_parameters_with_a_watcher_attached_fail_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving() as (_, gateway), watcher(gateway) as watch, connect(gateway) as client:
        tools = [{"name": "t", "description": "", "parameters": deep(400)}]
        error = await error_for(client, request_text("deep", options={"tools": tools}), "deep")
        assert error["code"] == "invalid_request"
        assert error["path"].startswith("$.options.tools[0].parameters")
        assert "nested deeper than" in error["message"] and len(error["message"]) <= 300
        await sees_request(watch, "after", client)
        assert gateway.stats().unencodable == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"options": {"max_tokens": 10**5000}}, "$.options.max_tokens"),
        ({"options": {"temperature": math.nan}}, "$.options.temperature"),
        ({"options": {"top_p": math.inf}}, "$.options.top_p"),
        ({"timeout": -math.inf}, "$.timeout"),
        ({"messages": [{"role": "user", "content": "a\ud800"}]}, "$.messages[0].content"),
        ({"options": {"tools": [{"name": "t", "parameters": {"enum": [math.nan]}}]}}, "$.options.tools[0]"),
        ({"options": {"stop": ["\udfff"]}}, "$.options.stop[0]"),
    ],
)
async def test_bad_values_get_invalid_request_naming_the_field(
    fields: dict[str, Any], path: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setattr(sys, "get_int_max_str_digits", sys.get_int_max_str_digits)
    sys.set_int_max_str_digits(0)  # to write the 5,000-digit integer into the frame
    try:
        text = request_text("bad", **fields)
    finally:
        sys.set_int_max_str_digits(4300)
    async with serving() as (tree, gateway), watcher(gateway) as watch, connect(gateway) as client:
        error = await error_for(client, text, "bad")
        assert error["code"] == "invalid_request" and error["path"].startswith(path), error
        assert len(text) > 1000 or len(error["message"]) <= 300
        assert "9999999999" not in error["message"]
        await sees_request(watch, "after", client)  # the same connection carries on
        assert tree.router.in_flight == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_huge_integers_anywhere_in_a_frame_are_answered_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    huge = "9" * 5000
    frames = [
        ('{"type":"ping","id":' + huge + "}", None),
        ('{"type":"ping","id":"p","v":' + huge + "}", "p"),
        ('{"type":"subscribe","id":"s","filter":{"types":[' + huge + "]}}", "s"),
        ('{"type":"cancel","id":"c","request_id":' + huge + "}", "c"),
        ('{"type":"request","id":"r","messages":[],"options":{"max_tokens":' + huge + "}}", "r"),
        ("[" + huge + "]", None),
    ]
    async with serving() as (_, gateway), watcher(gateway) as watch, connect(gateway) as client:
        for text, msg_id in frames:
            error = await error_for(client, text, msg_id)
            assert error["code"] == "invalid_request" and "out of range" in error["message"]
        await sees_request(watch, "after", client)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_nan_and_infinity_never_reach_a_subscriber(caplog: pytest.LogCaptureFixture) -> None:
    async with serving() as (tree, gateway), watcher(gateway) as watch, connect(gateway) as client:
        for constant in ("NaN", "Infinity", "-Infinity", "1e999"):
            head = '{"type":"request","id":"n","messages":[{"role":"user","content":"x"}],"timeout":'
            text = head + constant + "}"
            assert (await error_for(client, text, "n"))["code"] == "invalid_request"
        # A Python publisher (no door in between) puts NaN and a 1,500-deep schema on the bus: the frames
        # are not sent, the fan-out carries on.
        tool = ToolSpec("t", "", {"x": math.nan})
        bad = ProviderRequest("py-nan", (Message.user("x"),), options=RequestOptions(tools=(tool,)))
        await tree.bus.publish(make_signal(bad, "/python"))
        deep_tool = ToolSpec("t", "", deep(1500))
        options = RequestOptions(tools=(deep_tool,))
        too_deep = ProviderRequest("py-deep", (Message.user("x"),), options=options)
        await tree.bus.publish(make_signal(too_deep, "/python"))
        await sees_request(watch, "after", client)  # strict_json checked every frame the watcher got
        assert gateway.stats().unencodable == 2
    dropped = [r for r in caplog.records if "cannot be encoded" in r.getMessage()]
    assert {r.getMessage().split("(")[1].split(":")[0] for r in dropped} == {"ValueError", "RecursionError"}


async def test_lone_surrogates_from_a_python_publisher_are_replaced_in_frames() -> None:
    async with serving() as (tree, gateway), watcher(gateway) as watch:
        broken = ProviderRequest("sur", (Message.user("a\ud800b\U0001f986"),))
        await tree.bus.publish(make_signal(broken, "/p"))
        [frame] = [f for f in await watch.recv_until(lambda f: f.get("type") == "signal")]
        assert frame["event"]["data"]["messages"][0]["content"][0]["text"] == "a\ufffdb\U0001f986"


# --- memory -----------------------------------------------------------------------------------------

PROMPT = 450 * 1024
PROMPTS = 250


@pytest.mark.slow
async def test_250_prompts_of_450_kb_with_a_watcher_stay_within_the_byte_budget() -> None:
    """The issue's run grew RSS from 38 to 799 MiB: the frame cache was bounded by entries only. Now the
    growth is bounded by the documented budgets (docs/limits.md) whatever the number of prompts."""
    config = GatewayConfig()
    budget = (
        config.frame_cache_bytes
        + 2 * 2 * config.send_buffer_bytes  # two connections, signal and control budgets each
        + MockProvider.recorded_bytes
        + 8 * 1024 * 1024  # slack: a few requests in flight, interpreter caches
    )
    unbounded = PROMPTS * PROMPT * 4  # what the old cache kept: the two request signals' events and frames
    assert budget < unbounded / 4
    # Short answers: the prompts are what the run kept (an echo would double the wire traffic).
    features = Features(context_window=10_000_000, tools=True, vision=True)
    mock = MockProvider(replies=["ok"] * (PROMPTS + 1), features=features)
    text = "x" * PROMPT
    tracemalloc.start()
    try:
        async with serving(mock) as (_, gateway), watcher(gateway) as watch, connect(gateway) as client:
            received = 0

            async def drain() -> None:  # the watcher reads everything, up to its barrier's ack
                nonlocal received
                while (await watch.recv()).get("id") != "barrier":
                    received += 1

            await client.request("warm-up", text)
            gc.collect()
            baseline = tracemalloc.get_traced_memory()[0]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                for index in range(PROMPTS):
                    await client.request(f"q{index}", text)
                await client.call({"type": "ping", "id": "barrier"})
                await watch.send({"type": "ping", "id": "barrier"})
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - baseline
            print(f"tracemalloc growth after {PROMPTS} prompts: {growth / 2**20:.1f} MiB")
            assert gateway.stats().cache_bytes <= config.frame_cache_bytes
            assert received > PROMPTS
    finally:
        tracemalloc.stop()
    assert growth < budget, f"grew {growth / 2**20:.1f} MiB, budget {budget / 2**20:.1f} MiB"


# --- connection hygiene ------------------------------------------------------------------------------


async def test_idle_connections_time_out_and_free_their_slots() -> None:
    # Real clock: the watcher must subscribe, the pinger ping five times and the fresh client ask before
    # the timeout, also on a starved machine (0.3 s was within reach of a stall).
    async with serving(idle_timeout=1.5, max_connections=3) as (_, gateway):
        async with watcher(gateway) as watch, connect(gateway) as idle, connect(gateway) as pinger:
            for _ in range(5):  # pings are not activity: a connection that only pings is idle
                await pinger.call({"type": "ping", "id": 1})
            for client in (idle, pinger):
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    while True:
                        await client.recv()
                assert info.value.reason is not None and info.value.reason.code == 1000
                assert "idle" in (info.value.reason.reason or "")
            await eventually(lambda: gateway.stats().connections == 1)
            async with connect(gateway) as fresh:  # the slots are free again
                await sees_request(watch, "fresh", fresh)
            assert (await watch.call({"type": "ping", "id": "w"}))["type"] == "ack"  # subscribed: not idle
        assert gateway.stats().idle_disconnects >= 2


async def test_a_request_in_flight_keeps_a_connection_busy() -> None:
    mock = MockProvider(chunk_delay=0.05, replies=["word " * 20])
    async with serving(mock, idle_timeout=0.3) as (_, gateway), connect(gateway) as client:
        frames = await client.request("slow", "go")  # 100 chunks 50 ms apart: longer than the timeout
        assert frames[-1]["event"]["type"] == "provider_response"


async def test_a_flooder_of_bad_messages_is_disconnected_with_1008() -> None:
    limits: dict[str, Any] = {
        "max_messages_per_second": 1000.0, "max_errors_per_second": 5.0, "error_burst": 10
    }
    async with serving(**limits) as (_, gateway), watcher(gateway) as watch, connect(gateway) as flooder:
        errors = 0
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            with trio.fail_after(10):
                while True:  # one bad message every 10 ms: far under the message rate limit
                    await flooder.send({"type": "ping", "id": errors, "junk": True})
                    frame = await flooder.recv()
                    assert frame["type"] == "error" and frame["code"] == "invalid_message"
                    errors += 1
                    await trio.sleep(0.01)
        assert info.value.reason is not None and info.value.reason.code == 1008
        assert "errors per second" in (info.value.reason.reason or "")
        assert 10 <= errors < 100
        assert gateway.stats().flood_disconnects == 1
        async with connect(gateway) as client:
            await sees_request(watch, "bystander", client)


async def test_an_occasional_error_is_no_flood() -> None:
    async with serving(max_errors_per_second=5.0, error_burst=3) as (_, gateway), connect(gateway) as client:
        for index in range(6):
            assert (await client.call({"type": "ping", "id": index, "junk": 1}))["type"] == "error"
            await trio.sleep(0.25)  # 4 per second: under the sustained rate
        assert (await client.call({"type": "ping", "id": "ok"}))["type"] == "ack"


async def test_a_message_that_trips_a_bug_gets_an_internal_error_and_one_log_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from duckagents.gateway import _connection

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug in parsing")

    monkeypatch.setattr(_connection, "parse_client_message", broken)
    async with serving(error_burst=100) as (_, gateway), connect(gateway) as client:
        for index in range(20):
            await client.send({"type": "ping", "id": index})
            frame = await client.recv()  # unparsed: the answer cannot name the message
            assert (frame["type"], frame["id"], frame["code"]) == ("error", None, "internal")
            assert "ZeroDivision" not in frame["message"]
        assert gateway.stats().faults == 20
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the traceback once, not 20 times
