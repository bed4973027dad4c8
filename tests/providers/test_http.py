"""Header parsing and status mapping shared by every provider."""

import email.utils

import pytest

from duckagents.errors import ErrorKind, ProviderError, Secret, redact
from duckagents.providers._http import kind_for_status, parse_duration, parse_retry_after


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("", None),
     ("soon", None), ("5x", None)],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


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
