"""The gateway's part of a graceful stop, in front of the real tree: intake closes, the requests in flight
hand their terminals to their clients, then every client gets the close frame 1001 (never a dropped
connection). ``duckagents serve`` runs the same sequence on SIGTERM / SIGINT (tests/test_graceful_stop.py)."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from duckagents.providers import MockProvider

from .support import Client, connect, is_terminal, serving


async def ack(client: Client, msg_id: str) -> str:
    answer = await client.call(
        {"type": "request", "id": msg_id, "messages": [{"role": "user", "content": f"q {msg_id}"}]}
    )
    assert answer["type"] == "ack", answer
    request_id: str = answer["request_id"]
    return request_id


async def until_closed(client: Client) -> tuple[list[dict[str, object]], int | None]:
    """Every frame up to the close, and the close code."""
    frames = []
    try:
        while True:
            frames.append(await client.recv())
    except trio_websocket.ConnectionClosed as closed:
        return frames, closed.reason.code if closed.reason is not None else None


async def test_a_graceful_stop_delivers_the_answers_in_flight_then_closes_with_1001() -> None:
    async with serving(MockProvider(latency=1.0)) as (tree, gateway):
        async with connect(gateway) as client, connect(gateway) as watcher:
            assert (await watcher.call({"type": "subscribe", "id": "all"}))["type"] == "ack"
            await ack(client, "a")
            await ack(client, "b")
            gateway.close_intake()
            refused = await client.call(
                {"type": "request", "id": "late", "messages": [{"role": "user", "content": "hi"}]}
            )
            assert refused["type"] == "error" and refused["code"] == "unavailable"
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with connect(gateway):
                    pass
            assert info.value.status_code == 503
            assert await tree.drain(30.0) == 0  # both finish within the drain
            await gateway.aclose()
            frames, code = await until_closed(client)
            _, watcher_code = await until_closed(watcher)
        terminals = [f for f in [*client.backlog, *frames] if is_terminal(f)]
        assert sorted(f["request"] for f in terminals) == ["a", "b"]  # type: ignore[type-var]
        assert all(f["event"]["type"] == "provider_response" for f in terminals)  # type: ignore[index]
        assert code == watcher_code == 1001


async def test_a_stop_at_once_gives_what_is_in_flight_a_shutdown_terminal_then_1001() -> None:
    async with serving(MockProvider(latency=100.0)) as (tree, gateway):
        async with connect(gateway) as client:
            request_id = await ack(client, "slow")
            await trio.sleep(0.2)
            with trio.fail_after(2.0):  # at once: no wait for the answer, nor for long on the client
                await gateway.aclose(at_once=True)
            frames, code = await until_closed(client)
        [terminal] = [f for f in [*client.backlog, *frames] if is_terminal(f)]
        event = terminal["event"]
        assert event["type"] == "provider_error" and event["data"]["kind"] == "shutdown"  # type: ignore[index]
        assert event["source"] == "/gateway"  # type: ignore[index]
        assert code == 1001
        with trio.fail_after(5.0):  # and the request was cancelled at the router
            while request_id in tree.router.requests:  # noqa: ASYNC110
                await trio.sleep(0.01)
