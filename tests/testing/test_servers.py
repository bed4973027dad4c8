"""What the loopback wire servers share (:mod:`duckagents.testing._common`), over real sockets: routing by
method and path, bearer keys, injected 429s with each server's rate-limit headers, and the JSON-mode echo."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from duckagents.testing import (
    Fault,
    ReplyScript,
    ScriptedReply,
    WireServer,
    open_anthropic_server,
    open_ollama_server,
    open_openai_server,
    open_tgi_server,
)

Opener = Callable[..., AbstractAsyncContextManager[Any]]


async def send(server: WireServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as client:
        return await client.request(method, path, **kwargs)


@pytest.mark.parametrize(
    ("opener", "known_path", "wrong_method", "allowed"),
    [(open_ollama_server, "/api/chat", "GET", None), (open_tgi_server, "/generate", "GET", "GET, POST")],
)
async def test_wrong_method_is_405_and_unknown_path_404(
    opener: Opener, known_path: str, wrong_method: str, allowed: str | None
) -> None:
    async with opener() as server:
        wrong = await send(server, wrong_method, known_path)
        unknown = await send(server, "GET", "/no/such/path")
    assert wrong.status_code == 405 and wrong.headers.get("allow") == allowed
    assert unknown.status_code == 404
    assert [r.path for r in server.requests] == [known_path, "/no/such/path"]


@pytest.mark.parametrize("opener", [open_ollama_server, open_tgi_server])
async def test_bearer_key_is_required_when_set(opener: Opener) -> None:
    async with opener(api_key="k-123") as server:
        path = "/api/version" if opener is open_ollama_server else "/info"
        missing = await send(server, "GET", path)
        wrong = await send(server, "GET", path, headers={"authorization": "Bearer nope"})
        right = await send(server, "GET", path, headers={"authorization": "Bearer k-123"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)


@pytest.mark.parametrize(
    ("opener", "path", "limit"),
    [(open_ollama_server, "/api/version", "60"), (open_tgi_server, "/info", "128")],
)
async def test_injected_429_carries_rate_limit_headers_under_the_faults_own(
    opener: Opener, path: str, limit: str
) -> None:
    async with opener() as server:
        server.inject(Fault(status=429, headers={"retry-after": "9"}))
        limited = await send(server, "GET", path)
        server.inject(Fault(status=500))
        failed = await send(server, "GET", path)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "9"
    assert limited.headers["x-ratelimit-limit-requests"] == limit
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert failed.status_code == 500 and "x-ratelimit-limit-requests" not in failed.headers


async def test_older_names_of_the_loopback_server_still_work() -> None:
    async with open_ollama_server() as ollama, open_tgi_server() as tgi, open_openai_server() as openai:
        assert ollama.server is ollama.loopback and tgi.server is tgi.loopback
        assert openai.http is openai.loopback
        assert openai.base_url == openai.url + "/v1"
    async with open_anthropic_server() as anthropic:
        assert anthropic.url == anthropic.loopback.url


def test_json_mode_turns_only_the_echo_into_json() -> None:
    script = ReplyScript()
    assert json.loads(script.next("hi", json_mode=True).text) == {"echo": "hi"}
    assert script.next("hi").text == "echo: hi"
    script.push(ScriptedReply(text="not json, scripted"))
    assert script.next("hi", json_mode=True).text == "not json, scripted"


async def test_ollama_json_mode_echo_over_http() -> None:
    async with open_ollama_server() as server:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        reply = await send(server, "POST", "/api/chat", json={**body, "format": "json"})
    assert json.loads(reply.json()["message"]["content"]) == {"echo": "hi"}
