"""Gateway security: bearer tokens at the handshake (401), scopes (error frames), Origin (403), no leaks."""

from __future__ import annotations

import json
import logging

import pytest
import trio_websocket

from duckagents.config import GatewayConfig, TokenConfig
from duckagents.errors import ConfigError
from duckagents.gateway import _auth as auth
from duckagents.gateway._auth import Gatekeeper, bearer_token, origin_allowed

from .support import connect, fake_router, running_gateway

FULL = "full-token-0123456789abcdef"
READ = "read-token-fedcba9876543210"
ENV = {"GW_FULL": FULL, "GW_READ": READ}
TOKENS = (TokenConfig(env="GW_FULL"), TokenConfig(env="GW_READ", scopes=("subscribe",)))


async def rejected_status(gateway: object, **kwargs: object) -> tuple[int, bytes]:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with connect(gateway, **kwargs):  # type: ignore[arg-type]
            pass
    return info.value.status_code, info.value.body or b""


async def test_no_tokens_configured_means_open_with_every_scope() -> None:
    async with fake_router() as router, running_gateway(router) as gateway, connect(gateway) as client:
        assert client.hello["scopes"] == ["admin", "request", "subscribe"]
        frames = await client.request("q", "hi")
    assert frames[-1]["event"]["type"] == "provider_response"


async def test_missing_or_wrong_token_is_rejected_with_401_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="duckagents")
    async with fake_router() as router, running_gateway(router, environ=ENV, tokens=TOKENS) as gateway:
        assert await rejected_status(gateway) == (401, b"")
        assert await rejected_status(gateway, token="not-the-token") == (401, b"")
        assert await rejected_status(gateway, token=FULL[:-1]) == (401, b"")
        assert await rejected_status(gateway, query="?token=wrong-query-token") == (401, b"")
        async with connect(gateway, token=FULL) as client:
            assert client.hello["scopes"] == ["request", "subscribe"]
            frames = await client.request("q", "hi")
        async with connect(gateway, query=f"?token={READ}") as client:  # browsers cannot set headers
            assert client.hello["scopes"] == ["subscribe"]
        assert gateway.stats().rejected == {401: 4}
    assert frames[-1]["event"]["type"] == "provider_response"
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("duckagents"))
    assert "refused" in ours and "401" in ours
    for secret in (FULL, READ, "not-the-token", "wrong-query-token"):
        assert secret not in ours
        assert secret not in json.dumps(client.hello)


async def test_read_only_token_can_watch_but_not_submit() -> None:
    async with fake_router() as router, running_gateway(router, environ=ENV, tokens=TOKENS) as gateway:
        async with connect(gateway, token=READ) as client:
            sub = await client.call({"type": "subscribe", "id": "s"})
            refused = await client.call(
                {"type": "request", "id": "q", "messages": [{"role": "user", "content": "x"}]}
            )
            still = await client.call({"type": "ping", "id": "p"})
    assert sub["type"] == "ack"
    assert refused["type"] == "error" and refused["code"] == "forbidden" and "request" in refused["message"]
    assert still["type"] == "ack"
    assert router.submitted == []


async def test_request_only_token_cannot_subscribe() -> None:
    tokens = (TokenConfig(env="GW_FULL", scopes=("request",)),)
    async with fake_router() as router, running_gateway(router, environ=ENV, tokens=tokens) as gateway:
        async with connect(gateway, token=FULL) as client:
            refused = await client.call({"type": "subscribe", "id": "s"})
            frames = await client.request("q", "own stream is fine")
    assert refused["code"] == "forbidden"
    assert frames[-1]["event"]["data"]["content"] == "echo: own stream is fine"


async def test_disallowed_origin_is_rejected_with_403() -> None:
    origins = ("https://app.example",)
    async with fake_router() as router, running_gateway(router, allowed_origins=origins) as gateway:
        assert await rejected_status(gateway, origin="https://evil.example") == (403, b"")
        assert await rejected_status(gateway, origin="http://127.0.0.1:3000") == (403, b"")
        async with connect(gateway, origin="https://app.example") as client:
            assert client.hello["type"] == "hello"
        async with connect(gateway) as client:  # no Origin: not a browser
            assert client.hello["type"] == "hello"
        assert gateway.stats().rejected == {403: 2}


async def test_without_an_allow_list_only_loopback_pages_may_connect() -> None:
    async with fake_router() as router, running_gateway(router) as gateway:
        assert await rejected_status(gateway, origin="https://evil.example") == (403, b"")
        async with connect(gateway, origin="http://localhost:5173") as client:
            assert client.hello["type"] == "hello"


async def test_origin_is_checked_before_the_token() -> None:
    async with (
        fake_router() as router,
        running_gateway(
            router, environ=ENV, tokens=TOKENS, allowed_origins=("https://app.example",)
        ) as gateway,
    ):
        assert await rejected_status(gateway, origin="https://evil.example", token=FULL) == (403, b"")
        assert await rejected_status(gateway, origin="https://app.example", token="nope") == (401, b"")


def test_a_token_env_var_that_is_not_set_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="GW_MISSING") as info:
        Gatekeeper(GatewayConfig(tokens=(TokenConfig(env="GW_MISSING"),)), environ={})
    assert FULL not in str(info.value)


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keeper = Gatekeeper(GatewayConfig(tokens=TOKENS), environ=ENV)
    principal = keeper.authenticate(FULL)
    # No early exit on the first match: both tokens were compared.
    assert principal is not None and principal.name == "token:GW_FULL"
    assert sorted(calls) == sorted([FULL.encode(), READ.encode()])
    assert keeper.authenticate(None) is None
    assert "full-token" not in repr(keeper.secrets)


@pytest.mark.parametrize(
    ("headers", "target", "expected"),
    [
        ({"authorization": "Bearer abc"}, "/", "abc"),
        ({"authorization": "bearer   abc  "}, "/", "abc"),
        ({"authorization": "Basic abc"}, "/?token=q", None),  # a header that is not Bearer wins
        ({}, "/?token=q%2Bx&other=1", "q+x"),
        ({}, "/path", None),
    ],
)
def test_bearer_token_sources(headers: dict[str, str], target: str, expected: str | None) -> None:
    assert bearer_token(headers, target) == expected


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, (), True),
        ("http://localhost:8000", (), True),
        ("http://[::1]:8000", (), True),
        ("https://evil.example", (), False),
        ("null", (), False),
        ("https://app.example/", ("https://APP.example",), True),
        ("https://other.example", ("https://app.example",), False),
        ("https://anything", ("*",), True),
    ],
)
def test_origin_rules(origin: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, allowed) is ok
