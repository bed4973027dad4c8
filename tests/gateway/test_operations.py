"""The gateway's operator messages (status, control, reload) over real WebSockets against a real tree, the
admin scope, and the client functions, including why an unreachable gateway cannot be reached."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from duckagents.app import Tree, open_tree
from duckagents.config import TokenConfig
from duckagents.errors import ConfigError, ControlError, GatewayError
from duckagents.gateway import Gateway, control, fetch_status, reload
from duckagents.gateway import connect as gateway_connect
from duckagents.signals import ControlReply
from tests.gateway.support import connect, fake_router, running_gateway

ADMIN, READ, SUBMIT = "admin-token-5f3e9a", "read-token-77b1c2", "submit-token-0d4e8f"
ENV = {"OPS": ADMIN, "DASH": READ, "APP": SUBMIT}
TOKENS = (
    TokenConfig(env="OPS", scopes=("admin", "subscribe")),
    TokenConfig(env="DASH", scopes=("subscribe",)),
    TokenConfig(env="APP", scopes=("request",)),
)
CONFIG = '[[providers]]\nname = "a"\nkind = "mock"\n[[providers]]\nname = "b"\nkind = "mock"\npriority = 1\n'


@asynccontextmanager
async def served(
    tmp_path: Path, **gateway: object
) -> AsyncIterator[tuple[Tree, Gateway, list[ControlReply]]]:
    """A tree from a config file, its gateway with the tokens above, and the control replies it published."""
    path = tmp_path / "duck.toml"
    path.write_text(CONFIG)
    replies: list[ControlReply] = []
    async with open_tree(path) as tree, trio.open_nursery() as nursery:
        sub = tree.bus.subscribe(None, buffer=256)

        async def record() -> None:
            with sub:
                async for signal in sub:
                    if isinstance(signal.data, ControlReply):
                        replies.append(signal.data)

        nursery.start_soon(record)
        async with running_gateway(tree.router, environ=ENV, tokens=TOKENS, **gateway) as gw:
            yield tree, gw, replies
        nursery.cancel_scope.cancel()


async def test_status_is_the_routers_status_document(tmp_path: Path) -> None:
    async with served(tmp_path) as (tree, gw, _), connect(gw, token=READ) as client:
        await tree.router.complete("hi")
        ack = await client.call({"type": "status", "id": "s"})
        assert ack["type"] == "ack"
        assert ack["status"] == json.loads(json.dumps(tree.router.status_document()))
        data = ack["status"]["data"]
        rows = [(a["provider"], a["breaker_state"], a["metrics"]["total_requests"]) for a in data]
        assert rows == [
            ("a", "closed", 1), ("b", "closed", 0)
        ]
    async with served(tmp_path) as (_, gw, _), connect(gw, token=SUBMIT) as client:
        refused = await client.call({"type": "status", "id": "s"})
        assert (refused["type"], refused["code"]) == ("error", "forbidden")


async def test_controls_need_the_admin_scope_and_record_the_token_name(tmp_path: Path) -> None:
    async with served(tmp_path) as (tree, gw, replies):
        async with connect(gw, token=READ) as client:
            refused = await client.call({"type": "control", "id": 1, "action": "drain", "provider": "a"})
            assert refused["code"] == "forbidden" and "admin" in refused["message"]
            refused = await client.call({"type": "reload", "id": 2})
            assert refused["code"] == "forbidden"
        assert not tree.router.views["a"].draining
        async with connect(gw, token=ADMIN) as client:
            ack = await client.call(
                {"type": "control", "id": 3, "action": "breaker_force_open", "provider": "a"}
            )
            assert ack["type"] == "ack", ack
            fields = ("action", "provider", "ok", "breaker_state", "principal")
            assert {k: ack["reply"][k] for k in fields} == {
                "action": "breaker_force_open", "provider": "a", "ok": True, "breaker_state": "forced_open",
                "principal": "token:OPS",
            }
            assert (await tree.router.complete("hi")).provider == "b"
            bad = await client.call({"type": "control", "id": 4, "action": "drain", "provider": "zz"})
            assert bad["code"] == "control_failed" and "unknown provider 'zz'" in bad["message"]
            bad = await client.call({"type": "control", "id": 5, "action": "reload", "provider": "a"})
            assert bad["code"] == "invalid_message" and "$.action" in bad["message"]
            bad = await client.call({"type": "control", "id": 6, "action": "model_load", "provider": "a"})
            assert bad["code"] == "control_failed" and "no local models" in bad["message"]
    assert [(r.action.value, r.principal, r.ok) for r in replies] == [
        ("breaker_force_open", "token:OPS", True), ("model_load", "token:OPS", False)
    ]
    assert ADMIN not in repr(replies)


async def test_reload_op_and_an_invalid_config(tmp_path: Path) -> None:
    async with served(tmp_path) as (tree, gw, _), connect(gw, token=ADMIN) as client:
        (tmp_path / "duck.toml").write_text(CONFIG + '[[providers]]\nname = "c"\nkind = "mock"\n')
        ack = await client.call({"type": "reload", "id": "r"})
        assert ack["report"]["added"] == ["c"] and list(tree.router.views) == ["a", "b", "c"]
        (tmp_path / "duck.toml").write_text("[router]\nstrategy = 'fastest'\n")
        refused = await client.call({"type": "reload", "id": "r2"})
        assert refused["code"] == "invalid_config" and "strategy" in refused["message"]
        assert list(tree.router.views) == ["a", "b", "c"]


async def test_client_functions(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, gw, _):
        reply = await control(gw.url, "a", "breaker_disable", token=ADMIN)
        assert reply["breaker_state"] == "disabled"
        status = await fetch_status(gw.url, token=ADMIN)
        assert status["data"][0]["breaker_state"] == "disabled" and status["data"][0]["serving"]
        with pytest.raises(ControlError, match="unknown provider"):
            await control(gw.url, "nope", "drain", token=ADMIN)
        with pytest.raises(GatewayError, match="forbidden"):
            await control(gw.url, "a", "drain", token=READ)
        (tmp_path / "duck.toml").write_text("not toml [")
        with pytest.raises(ConfigError, match="invalid TOML"):
            await reload(gw.url, token=ADMIN)
        with pytest.raises(GatewayError, match=r"HTTP 401 \(missing or wrong token"):
            await fetch_status(gw.url, token="wrong")


async def test_a_router_without_controls_says_so() -> None:
    async with fake_router() as router, running_gateway(router) as gw, connect(gw) as client:
        refused = await client.call({"type": "status", "id": 1})
        assert refused["code"] == "unavailable"


async def test_unreachable_says_why() -> None:
    # Refused: a port that was just free.
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(GatewayError, match="connection refused"):
        async with gateway_connect(f"ws://127.0.0.1:{port}/"):
            pass
    # Timeout: something accepts TCP connections but never answers the WebSocket handshake.
    silent = trio.socket.socket()
    await silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    with pytest.raises(GatewayError, match="timed out"):
        async with gateway_connect(f"ws://127.0.0.1:{silent.getsockname()[1]}/", connect_timeout=0.5):
            pass
    silent.close()
    # DNS: a name that cannot resolve (.invalid is reserved for that, RFC 6761).
    with pytest.raises(GatewayError, match="DNS"):
        async with gateway_connect("ws://no-such-host.invalid:8765/"):
            pass
