"""End-to-end gateway tests over loopback with trio-websocket's client: subscribe, request, cancel, limits."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio_websocket

from duckagents.codec import signal_from_dict, signal_to_dict
from duckagents.config import GatewayConfig, TokenConfig
from duckagents.errors import ConfigError
from duckagents.gateway import PROTOCOL_VERSION, Gateway
from duckagents.signals import ProviderChunk, ProviderStatus, Signal, SupervisorEvent, make_signal

from .support import connect, eventually, fake_router, is_terminal, running_gateway


def chunk(rid: str, provider: str, index: int) -> Signal:
    return make_signal(ProviderChunk(rid, provider, index, f"d{index}"), "/test")


async def test_hello_announces_version_scopes_and_limits() -> None:
    async with fake_router() as router, running_gateway(router, max_in_flight=3) as gateway:
        async with connect(gateway) as client:
            hello = client.hello
    assert hello["v"] == PROTOCOL_VERSION
    assert hello["scopes"] == ["admin", "request", "subscribe"]
    assert hello["limits"]["max_in_flight"] == 3
    assert hello["limits"]["slow_consumer"] == "drop_oldest"
    assert "resume" not in hello and "fleet" not in hello  # an in-process gateway keeps no history
    assert gateway.url.startswith("ws://127.0.0.1:") and gateway.port > 0


async def test_subscribed_signals_arrive_as_codec_cloudevents_in_order() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        ack = await client.call({"type": "subscribe", "id": "s1", "v": 1})
        assert ack == {"type": "ack", "id": "s1", "subscription": "s1"}
        sent = [chunk("r1", "p", i) for i in range(20)]
        for signal in sent:
            await router.bus.publish(signal)
        frames = [await client.recv() for _ in sent]
    assert all(f["type"] == "signal" and f["subscription"] == "s1" for f in frames)
    assert [f["event"] for f in frames] == [signal_to_dict(s) for s in sent]
    assert [signal_from_dict(f["event"]) for f in frames] == sent


async def test_filters_deliver_only_matching_signals() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        await client.call({"type": "subscribe", "id": "chunks-of-a", "filter": {"providers": ["a"]}})
        await client.call({"type": "subscribe", "id": 7, "filter": {"types": ["provider_status"]}})
        await client.call(
            {"type": "subscribe", "id": "r9", "filter": {"request_ids": ["r9"], "types": ["provider_chunk"]}}
        )
        await router.bus.publish(chunk("r1", "a", 0))
        await router.bus.publish(chunk("r1", "b", 1))
        await router.bus.publish(make_signal(ProviderStatus("b", 1.0, "closed"), "/b"))
        await router.bus.publish(chunk("r9", "b", 2))
        await router.bus.publish(make_signal(SupervisorEvent("root", "a", "started"), "/sup"))
        ack = await client.call({"type": "ping", "id": "end"})
    assert ack["type"] == "ack"
    got = [(f["subscription"], f["event"]["type"], f["event"].get("provider")) for f in client.backlog]
    assert got == [
        ("chunks-of-a", "provider_chunk", "a"),
        (7, "provider_status", "b"),
        ("r9", "provider_chunk", "b"),
    ]


async def test_unsubscribe_stops_the_stream_after_its_ack() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        await client.call({"type": "subscribe", "id": "s"})
        await router.bus.publish(chunk("r", "p", 0))
        ack = await client.call({"type": "unsubscribe", "id": "u", "subscription": "s"})
        assert ack["type"] == "ack"
        await router.bus.publish(chunk("r", "p", 1))
        await client.call({"type": "ping", "id": "p"})
        again = await client.call({"type": "unsubscribe", "id": "u2", "subscription": "s"})
    assert [f["event"]["data"]["index"] for f in client.backlog] == [0]
    assert again["code"] == "unknown_subscription"


async def test_resuming_needs_a_fleet_gateway() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        refused = await client.call({"type": "subscribe", "id": "s", "since": "1700000000000-0"})
        bad = await client.call({"type": "subscribe", "id": "t", "since": "yesterday"})
        # The connection stays usable: a plain subscription works.
        ack = await client.call({"type": "subscribe", "id": "u"})
    assert refused["code"] == "unavailable" and "[fleet]" in refused["message"]
    assert bad["code"] == "invalid_message" and "$.since" in bad["message"]
    assert ack["type"] == "ack"


async def test_request_streams_chunks_then_exactly_one_terminal() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        await client.send(
            {
                "type": "request",
                "id": "q1",
                "messages": [{"role": "user", "content": "hello there"}],
                "timeout": 30,
            }
        )
        ack = await client.recv()
        frames = await client.recv_until(is_terminal)
        await client.call({"type": "ping", "id": "after"})
    assert ack["type"] == "ack" and ack["id"] == "q1" and ack["request_id"].startswith("gw-")
    assert all(f["request"] == "q1" and f["event"]["subject"] == ack["request_id"] for f in frames)
    chunks = [f["event"]["data"]["delta"] for f in frames[:-1]]
    assert "".join(chunks) == "echo: hello there"
    assert frames[-1]["event"]["type"] == "provider_response"
    assert frames[-1]["event"]["data"]["content"] == "echo: hello there"
    assert client.backlog == []  # nothing after the terminal
    (submitted,) = router.submitted
    assert submitted.options.stream is True and submitted.deadline is not None


async def test_cancel_ends_the_request_with_a_cancelled_terminal() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        ack = await client.call(
            {"type": "request", "id": "q", "messages": [{"role": "user", "content": "hold on"}]}
        )
        first = await client.recv()
        assert first["event"]["type"] == "provider_chunk"
        cancel = await client.call({"type": "cancel", "id": "c", "request_id": ack["request_id"]})
        (terminal,) = await client.recv_until(is_terminal)
        unknown = await client.call({"type": "cancel", "id": "c2", "request_id": ack["request_id"]})
    assert cancel == {"type": "ack", "id": "c", "request_id": ack["request_id"], "cancelled": True}
    assert terminal["event"]["type"] == "provider_error" and terminal["event"]["data"]["kind"] == "cancelled"
    assert router.cancelled == [ack["request_id"]]
    assert unknown["code"] == "unknown_request"


async def test_disconnecting_mid_request_cancels_it_at_the_router() -> None:
    async with fake_router() as router, running_gateway(router) as gateway:
        async with connect(gateway) as client:
            ack = await client.call(
                {"type": "request", "id": "q", "messages": [{"role": "user", "content": "hold"}]}
            )
            await client.recv()  # the first chunk: the request is in flight
        await eventually(lambda: router.cancelled == [ack["request_id"]])
        await eventually(lambda: gateway.stats().connections == 0)


async def test_router_refusal_becomes_the_requests_terminal_error() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        frames = await client.request("q", "please refuse")
    (terminal,) = frames
    assert terminal["event"]["type"] == "provider_error"
    assert terminal["event"]["data"]["kind"] == "no_provider"
    assert terminal["event"]["source"] == "/gateway"


async def test_per_connection_limits_give_error_frames() -> None:
    async with (
        fake_router() as router,
        running_gateway(router, max_subscriptions=2, max_in_flight=1) as gateway,
    ):
        async with connect(gateway) as client:
            assert (await client.call({"type": "subscribe", "id": "a"}))["type"] == "ack"
            dup = await client.call({"type": "subscribe", "id": "a"})
            assert (await client.call({"type": "subscribe", "id": "b"}))["type"] == "ack"
            third = await client.call({"type": "subscribe", "id": "c"})
            held = {"type": "request", "messages": [{"role": "user", "content": "hold"}]}
            assert (await client.call({**held, "id": "q1"}))["type"] == "ack"
            second = await client.call({**held, "id": "q2"})
    assert dup["code"] == "duplicate_id"
    assert third["code"] == "too_many_subscriptions" and "2" in third["message"]
    assert second["code"] == "too_many_requests"


async def test_connection_limit_rejects_the_handshake_with_503() -> None:
    async with fake_router() as router, running_gateway(router, max_connections=2) as gateway:
        async with connect(gateway), connect(gateway):
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with connect(gateway):
                    pass
        assert info.value.status_code == 503
        await eventually(lambda: gateway.stats().connections == 0)
        async with connect(gateway) as client:  # room again
            assert (await client.call({"type": "ping", "id": 1}))["type"] == "ack"
    assert gateway.stats().rejected == {503: 1}


async def test_graceful_shutdown_closes_clients_with_1001(nursery: trio.Nursery) -> None:
    async with fake_router() as router:
        async with running_gateway(router) as gateway:
            ws = await trio_websocket.connect_websocket_url(nursery, gateway.url)
            await ws.get_message()  # hello
        with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as info:
            await ws.get_message()
    assert info.value.reason is not None and info.value.reason.code == 1001


async def test_open_gateway_refuses_non_loopback_without_tokens() -> None:
    async with fake_router() as router:
        with pytest.raises(ConfigError, match="without tokens"):
            Gateway(router, GatewayConfig(host="0.0.0.0"), environ={})
        # With a token it may bind anywhere.
        config = attrs.evolve(GatewayConfig(host="0.0.0.0"), tokens=(TokenConfig(env="T"),))
        assert Gateway(router, config, environ={"T": "secret-value"}).host == "0.0.0.0"


async def test_a_router_that_never_answers_gets_a_timeout_terminal_from_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from duckagents.gateway import _flight as flight

    monkeypatch.setattr(flight, "DEADLINE_GRACE", 0.05)
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        # The fake router ignores deadlines: "hold" streams one chunk and then nothing, ever.
        frames = await client.request("q", "hold it", timeout=0.05)
    chunk_frame, terminal = frames
    assert chunk_frame["event"]["type"] == "provider_chunk"
    assert terminal["event"]["source"] == "/gateway" and terminal["event"]["data"]["kind"] == "timeout"
    assert router.cancelled == [terminal["event"]["subject"]]
