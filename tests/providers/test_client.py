"""What every HTTP provider gets from :mod:`duckagents.providers._client` and the shared ``_http`` helpers:
key handling, the context manager, health probes, the bounded drain after a stream's terminal item."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from duckagents.errors import ErrorKind, Secret
from duckagents.messages import Message
from duckagents.providers import AnthropicProvider, OllamaProvider, OpenAIProvider, StreamEnd, TGIProvider
from duckagents.providers._client import DRAIN_TIMEOUT, HTTPProvider
from duckagents.providers._http import decode_error_body, request_id_note, with_notes
from duckagents.signals import ProviderRequest

KEY = "sk-shared-client-SECRET-0123456789"

#: Each HTTP provider, and the header its key travels in.
PROVIDERS: list[tuple[Callable[..., HTTPProvider], str, str]] = [
    (OpenAIProvider, "authorization", f"Bearer {KEY}"),
    (AnthropicProvider, "x-api-key", KEY),
    (OllamaProvider, "authorization", f"Bearer {KEY}"),
    (TGIProvider, "authorization", f"Bearer {KEY}"),
]


def test_notes_and_request_ids() -> None:
    headers = httpx.Headers({"request-id": "req_1"})
    assert request_id_note(headers) == "request id req_1"
    assert request_id_note(headers, ("x-request-id",)) is None  # OpenAI reads only its own header
    both = httpx.Headers({"x-request-id": "a", "request-id": "b"})
    assert request_id_note(both) == "request id a"
    notes = [None, "", "code=x", request_id_note(headers)]
    assert with_notes("boom", notes) == "boom (code=x, request id req_1)"
    assert with_notes("boom", [None, ""]) == "boom"


def test_decode_error_body() -> None:
    assert decode_error_body(b'{"error": {"message": "m"}}') == {"error": {"message": "m"}}
    assert decode_error_body(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert decode_error_body(b"\xff\xfe not utf-8") == "\ufffd\ufffd not utf-8"
    assert decode_error_body(b"[" * 100_000) == "[" * 100_000  # too deep for json: kept as text


@pytest.mark.parametrize(("factory", "header", "value"), PROVIDERS)
async def test_key_is_sent_in_its_header_and_shown_nowhere(
    factory: Callable[..., HTTPProvider], header: str, value: str
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, json={"error": {"message": f"echoed {KEY}"}})

    provider = factory("http://upstream.test", api_key=KEY, transport=httpx.MockTransport(handler))
    async with provider as entered:
        assert entered is provider
        assert provider.secrets == (Secret(KEY),)
        assert KEY not in repr(provider) and KEY not in repr(provider.secrets)
        probe = await provider.health()
    assert provider._client.is_closed  # __aexit__ released the client
    assert seen and all(r.headers[header] == value for r in seen)
    assert not probe.ok and probe.detail["kind"] == ErrorKind.OVERLOADED.value
    assert KEY not in str(probe.detail) and "***" in probe.detail["error"]


@pytest.mark.parametrize(("factory", "header", "value"), PROVIDERS)
async def test_no_key_no_auth_header_and_no_secrets(
    factory: Callable[..., HTTPProvider], header: str, value: str
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectError("refused", request=request)

    async with factory("http://upstream.test", transport=httpx.MockTransport(handler)) as provider:
        assert provider.secrets == ()
        probe = await provider.health()
    assert seen and all(header not in r.headers for r in seen)
    assert not probe.ok and probe.detail["kind"] == ErrorKind.NETWORK.value and "status" not in probe.detail


async def test_probe_reports_the_status_only_where_asked() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "nope"}})

    async with OpenAIProvider("http://o.test", transport=httpx.MockTransport(refuse)) as openai:
        refused = await openai.health()
    async with OllamaProvider("http://l.test", transport=httpx.MockTransport(refuse)) as ollama:
        local = await ollama.health()
    assert refused.detail == {"kind": "auth", "error": "nope", "status": "401"}
    assert local.detail == {"kind": "auth", "error": "nope"}


async def test_drain_after_the_terminal_line_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    """An upstream that never ends the body after the done line: the stream still ends, after the drain
    timeout, with the completion."""

    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "message": {"content": "hi"}, "done": false}\n'
        yield b'{"model": "m", "message": {"content": ""}, "done": true, "done_reason": "stop"}\n'
        await trio.sleep_forever()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    request = ProviderRequest("r1", (Message.user("hello"),))
    events: list[Any] = []
    # fail_after: an unbounded drain would otherwise hang the test instead of failing it.
    with trio.fail_after(60):
        async with OllamaProvider("http://l.test", transport=httpx.MockTransport(handler)) as provider:
            start = trio.current_time()
            async with aclosing(provider.stream(request)) as stream:
                async for event in stream:
                    events.append(event)
            waited = trio.current_time() - start
    assert isinstance(events[-1], StreamEnd) and events[-1].completion.content == "hi"
    assert waited == pytest.approx(DRAIN_TIMEOUT)


def test_parse_rate_limit_scans_httpx_headers_once_and_still_parses_mixed_case() -> None:
    from duckagents.providers._http import parse_rate_limit

    assert parse_rate_limit(httpx.Headers({"content-type": "text/event-stream", "x-request-id": "r"})) is None
    info = parse_rate_limit(httpx.Headers({"X-RateLimit-Remaining-Requests": "7", "Retry-After": "2"}))
    assert info is not None and info.remaining_requests == 7 and info.retry_after == 2.0
    assert parse_rate_limit({"retry-after": "3"}) is not None  # a plain mapping takes the general path
