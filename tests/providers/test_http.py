"""Header parsing and status mapping shared by every provider."""

import email.utils

import pytest

from duckagents.errors import ErrorKind, ProviderError, Secret, redact
from duckagents.providers._http import (
    DEFAULT_MAX_RETRY_AFTER,
    MAX_ERROR_TEXT,
    MAX_EXCERPT,
    error_message_from_body,
    kind_for_status,
    max_retry_after,
    parse_duration,
    parse_int,
    parse_retry_after,
    retry_after,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("", None),
     ("soon", None), ("5x", None)],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text, cap=86400) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("999999999", 300.0), ("inf", None), ("-inf", None), ("nan", None), ("-5", None), ("1e999", None),
     ("300.5", 300.0), ("12", 12.0), ("Fri, 31 Dec 9999 23:59:59 GMT", 300.0)],
)
def test_upstream_waits_are_capped_and_garbage_is_ignored(value: str, expected: float | None) -> None:
    assert parse_retry_after(value) == expected
    if not value.startswith("Fri"):
        assert parse_duration(value) == expected
    headers = {"retry-after-ms": "9" * 400, "retry-after": value}  # a garbage precise form falls back
    assert retry_after(headers) == expected


async def test_the_cap_in_force_is_scoped_to_a_context() -> None:
    token = max_retry_after.set(10.0)
    try:
        assert parse_retry_after("999999999") == 10.0
        assert parse_duration("6m0s") == 10.0
        assert parse_retry_after("999", cap=60.0) == 60.0
    finally:
        max_retry_after.reset(token)
    assert parse_retry_after("999999999") == DEFAULT_MAX_RETRY_AFTER


def test_absurd_integer_headers_are_ignored() -> None:
    assert parse_int("9" * 5000) is None and parse_int("12") == 12 and parse_int("x") is None


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("garbage") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, ErrorKind.INVALID_REQUEST), (401, ErrorKind.AUTH), (404, ErrorKind.NOT_FOUND),
     (413, ErrorKind.INVALID_REQUEST), (429, ErrorKind.RATE_LIMITED), (500, ErrorKind.UPSTREAM_5XX),
     (503, ErrorKind.OVERLOADED), (529, ErrorKind.OVERLOADED), (418, ErrorKind.UPSTREAM_4XX)],
)
def test_status_mapping(status: int, kind: ErrorKind) -> None:
    assert kind_for_status(status) is kind


def test_redaction_hides_known_and_key_shaped_secrets() -> None:
    key = Secret("my-very-private-key")
    text = "auth failed for my-very-private-key; echoed sk-abcdefghijklmnopqrstuv and Bearer abc.def.ghi123"
    cleaned = redact(text, [key])
    assert "my-very-private-key" not in cleaned
    assert "sk-abcdefghijklmnopqrstuv" not in cleaned and "abc.def.ghi123" not in cleaned
    error = ProviderError(ErrorKind.AUTH, cleaned, provider="openai")
    assert "private" not in repr(error) and "private" not in str(error)
    assert error.retryable is False
    assert ProviderError(ErrorKind.UPSTREAM_5XX, "x").retryable is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "m", "type": "t"}}, "m"),  # OpenAI, Anthropic
        ({"error": {"code": 404}}, 'unrecognised error body: {"error":{"code":404}}'),
        ({"error": "overloaded", "error_type": "overloaded"}, "overloaded"),  # TGI, Ollama
        ({"error": "invalid_token", "error_description": "expired"}, "invalid_token: expired"),  # OAuth
        ({"type": "about:blank", "title": "Not Found", "status": 404}, "Not Found"),  # RFC 9457
        ({"title": "Conflict", "detail": "Conflict"}, "Conflict"),
        ({"detail": "Not Found"}, "Not Found"),  # FastAPI
        ({"detail": [{"loc": ["body"], "msg": "a"}, {"msg": "b"}]}, "a; b"),
        ({"message": "Internal server error"}, "Internal server error"),  # AWS API Gateway
        ({"Message": "User is not authorized"}, "User is not authorized"),
        ({"errors": [{"message": "x"}, "y", {"detail": "z"}]}, "x; y; z"),  # JSON:API, GraphQL gateways
        ({"fault": {"faultstring": "Rate limit quota violation"}}, "Rate limit quota violation"),  # Apigee
        ([{"error": "wrapped in a list"}], "wrapped in a list"),
        ("  plain\n text  ", "plain text"),
        ("<html><head><title>T</title><script>x()</script></head><body><p>b</p></body></html>", "T b"),
        ("", "upstream error"),
        ({}, "upstream error"),
        (None, "upstream error"),
    ],
)
def test_error_message_shapes(body: object, message: str) -> None:
    assert error_message_from_body(body) == message


def test_error_messages_are_bounded() -> None:
    assert len(error_message_from_body({"error": {"message": "m" * 10_000}})) == MAX_ERROR_TEXT
    unknown = error_message_from_body({"data": ["x" * 50] * 100})
    assert unknown.startswith('unrecognised error body: {"data":["xxx') and unknown.endswith("…")
    assert len(unknown) <= len("unrecognised error body: ") + MAX_EXCERPT
    assert len(error_message_from_body("<p>" + "word " * 10_000 + "</p>")) == MAX_EXCERPT
    deep: dict[str, object] = {"error": {}}
    node = deep["error"]
    for _ in range(200):  # nested error objects are followed a few levels, never to the recursion limit
        node["error"] = {}  # type: ignore[index]
        node = node["error"]  # type: ignore[index]
    assert error_message_from_body(deep).startswith("unrecognised error body")
