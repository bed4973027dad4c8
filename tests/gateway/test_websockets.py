"""The gateway with a client we did not write: the asyncio ``websockets`` package, in a worker thread."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import trio
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from duckagents.config import TokenConfig

from .support import fake_router, running_gateway

TOKEN = "third-party-client-token-42"


async def _scenario(url: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with ws_connect(url, additional_headers=headers, proxy=None, open_timeout=10) as ws:
        hello = json.loads(await ws.recv())

        async def call(message: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            await ws.send(json.dumps(message))
            others: list[dict[str, Any]] = []
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] in ("ack", "error") and frame["id"] == message["id"]:
                    return frame, others
                others.append(frame)

        async def until_terminal(msg_id: str) -> list[dict[str, Any]]:
            frames = []
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                frames.append(frame)
                event = frame.get("event", {})
                if frame.get("request") == msg_id and event.get("type") in (
                    "provider_response",
                    "provider_error",
                ):
                    return frames

        sub_ack, _ = await call(
            {"type": "subscribe", "id": "watch", "v": 1, "filter": {"types": ["provider_chunk"]}}
        )
        message = {"role": "user", "content": [{"type": "text", "text": "from asyncio"}]}
        req_ack, _ = await call({"type": "request", "id": "q1", "v": 1, "messages": [message], "timeout": 20})
        streamed = await until_terminal("q1")
        _, late = await call({"type": "ping", "id": "p"})  # whatever the subscription still had in flight
        streamed += late
        held_ack, _ = await call(
            {"type": "request", "id": "q2", "messages": [{"role": "user", "content": "hold"}]}
        )
        cancel_ack, before = await call({"type": "cancel", "id": "c", "request_id": held_ack["request_id"]})
        cancelled = before + await until_terminal("q2")
        bad, _ = await call({"type": "request", "id": "q3", "messages": "not a list"})
    return {
        "hello": hello,
        "sub_ack": sub_ack,
        "req_ack": req_ack,
        "streamed": streamed,
        "cancel_ack": cancel_ack,
        "cancelled": cancelled,
        "bad": bad,
    }


async def _rejected(url: str) -> int:
    try:
        async with ws_connect(url, additional_headers={"Authorization": "Bearer nope"}, proxy=None):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def _binary(url: str) -> int | None:
    async with ws_connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None) as ws:
        await ws.recv()
        await ws.send(b"\x00\x01binary")
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def test_websockets_client_subscribes_requests_and_cancels() -> None:
    tokens = (TokenConfig(env="TOKEN"),)
    async with (
        fake_router() as router,
        running_gateway(router, environ={"TOKEN": TOKEN}, tokens=tokens) as gw,
    ):
        with trio.fail_after(30):
            result = await trio.to_thread.run_sync(asyncio.run, _scenario(gw.url))
            status = await trio.to_thread.run_sync(asyncio.run, _rejected(gw.url))
            close_code = await trio.to_thread.run_sync(asyncio.run, _binary(gw.url))
    assert result["hello"]["v"] == 1
    assert result["sub_ack"] == {"type": "ack", "id": "watch", "subscription": "watch"}
    rid = result["req_ack"]["request_id"]
    streamed = result["streamed"]
    own = [f for f in streamed if f.get("request") == "q1"]
    watched = [f for f in streamed if f.get("subscription") == "watch"]
    assert "".join(f["event"]["data"]["delta"] for f in own[:-1]) == "echo: from asyncio"
    assert own[-1]["event"]["type"] == "provider_response" and own[-1]["event"]["subject"] == rid
    # The subscription saw the same chunk events (it filters on provider_chunk only).
    assert [f["event"] for f in watched] == [f["event"] for f in own[:-1]]
    assert result["cancel_ack"]["cancelled"] is True
    terminal = [f for f in result["cancelled"] if f.get("request") == "q2"][-1]
    assert terminal["event"]["data"]["kind"] == "cancelled"
    assert result["bad"]["code"] == "invalid_message" and "messages" in result["bad"]["message"]
    assert status == 401
    assert close_code == 1003
    assert len(router.cancelled) == 1
