"""HTTP plumbing shared by every provider: client construction, error mapping, header parsing."""

from __future__ import annotations

import email.utils
import functools
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import certifi
import httpx

from ..errors import ErrorKind, ProviderError, Secret, redact

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# Keep-alive pool sized for high fan-out agents; bounded like everything else.
DEFAULT_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process.

    Loading the CA bundle costs ~15 ms; building it once keeps agent restarts (which re-create their
    provider's client) in the sub-millisecond range.
    """
    return ssl.create_default_context(cafile=certifi.where())


def make_client(
    base_url: str,
    *,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: httpx.Timeout | float | None = None,
) -> httpx.AsyncClient:
    """An httpx client for one provider. ``transport`` swaps the network out in unit tests."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers or {},
        transport=transport,
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        limits=DEFAULT_LIMITS,
        verify=shared_ssl_context(),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Parse OpenAI-style reset durations such as ``6m0s``, ``1s``, ``20ms``, ``1h2m3.5s`` to seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            return None
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = match.end()
    return total if pos == len(value) and pos > 0 else None


def parse_int(value: str | None) -> int | None:
    """An integer header value, or None when absent or malformed."""
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def kind_for_status(status: int) -> ErrorKind:
    """The default error kind of an HTTP status; providers refine it from the error body."""
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status == 408:
        return ErrorKind.TIMEOUT
    if status == 413:
        return ErrorKind.CONTEXT_LENGTH
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (503, 529):
        return ErrorKind.OVERLOADED
    if 400 <= status < 500:
        return ErrorKind.INVALID_REQUEST if status in (400, 422) else ErrorKind.UPSTREAM_4XX
    return ErrorKind.UPSTREAM_5XX


def error_message_from_body(body: Any) -> str:
    """Pull a human message out of the usual JSON error shapes (``{"error": {"message"}}`` etc.)."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return str(body["message"])
    if isinstance(body, str):
        return body[:500]
    return "upstream error"


@contextmanager
def translate_transport_errors(
    provider: str, model: str | None, secrets: tuple[Secret, ...]
) -> Iterator[None]:
    """Turn httpx transport failures into :class:`ProviderError` (timeout / network), redacted."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderError(
            ErrorKind.TIMEOUT,
            redact(f"upstream timed out: {type(exc).__name__}", secrets),
            provider=provider,
            model=model,
        ) from None
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise ProviderError(
            ErrorKind.NETWORK,
            redact(f"network error talking to upstream: {type(exc).__name__}: {exc}", secrets),
            provider=provider,
            model=model,
        ) from None
