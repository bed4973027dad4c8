"""HTTP plumbing shared by every provider: client construction, error mapping, header parsing."""

from __future__ import annotations

import contextvars
import email.utils
import functools
import json
import math
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import certifi
import httpx

from ..errors import ErrorKind, ProviderError, Secret, redact
from ._base import RateLimitInfo

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


#: The longest wait an upstream's hint may impose by default (``[router] max_retry_after``).
DEFAULT_MAX_RETRY_AFTER = 300.0

#: The cap in force: the tree sets it from its configuration for every task it starts
#: (``duckagents.app.open_tree``), so each provider's parsing applies it without being told.
max_retry_after: contextvars.ContextVar[float] = contextvars.ContextVar(
    "max_retry_after", default=DEFAULT_MAX_RETRY_AFTER
)


def cap_wait(seconds: float | None, cap: float | None = None) -> float | None:
    """An upstream's wait hint made safe: None for NaN, infinite or negative, else at most ``cap``
    (default: the :data:`max_retry_after` in force). A hint of ~31 years must not block a provider."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, max_retry_after.get() if cap is None else cap)


def parse_retry_after(
    value: str | None, now: float | None = None, *, cap: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None; capped by
    :func:`cap_wait` (a date in the past is 0)."""
    if not value:
        return None
    value = value.strip()
    try:
        return cap_wait(float(value), cap)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return cap_wait(max(0.0, when.timestamp() - (time.time() if now is None else now)), cap)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None, *, cap: float | None = None) -> float | None:
    """Parse OpenAI-style reset durations such as ``6m0s``, ``1s``, ``20ms``, ``1h2m3.5s`` to seconds;
    capped by :func:`cap_wait`."""
    if not value:
        return None
    value = value.strip()
    try:
        return cap_wait(float(value), cap)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            return None
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = match.end()
    return cap_wait(total, cap) if pos == len(value) and pos > 0 else None


def parse_int(value: str | None) -> int | None:
    """An integer header value, or None when absent, malformed or beyond 18 digits (an upstream's count
    of requests or tokens; a longer one is garbage, and would overflow the float arithmetic it feeds)."""
    if value is None:
        return None
    value = value.strip()
    if len(value) > 19:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``retry-after-ms`` (OpenAI's precise form) or ``retry-after``, in seconds (``now``: wall clock,
    for an HTTP-date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            wait = cap_wait(float(millis) / 1000.0)
        except ValueError:
            wait = None
        if wait is not None:
            return wait
    return parse_retry_after(headers.get("retry-after"), now)


_RATE_LIMIT_PREFIXES = ("x-ratelimit-", "retry-after")


def parse_rate_limit(headers: Mapping[str, str], now: float | None = None) -> RateLimitInfo | None:
    """The ``x-ratelimit-*`` and retry headers (a case-insensitive mapping), or None when absent.

    OpenAI's header family; Ollama proxies and TGI deployments behind gateways send the same one.
    """
    if isinstance(headers, httpx.Headers) and not any(
        name.startswith(_RATE_LIMIT_PREFIXES) for name in headers.keys()
    ):
        return None  # the common case upstream of a proxy; one pass instead of seven lookups
    info = RateLimitInfo(
        limit_requests=parse_int(headers.get("x-ratelimit-limit-requests")),
        remaining_requests=parse_int(headers.get("x-ratelimit-remaining-requests")),
        reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=parse_int(headers.get("x-ratelimit-limit-tokens")),
        remaining_tokens=parse_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        retry_after=retry_after(headers, now),
    )
    return None if info == RateLimitInfo() else info


def kind_for_status(status: int) -> ErrorKind:
    """The default error kind of an HTTP status; providers refine it from the error body."""
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status == 408:
        return ErrorKind.TIMEOUT
    if status == 413:
        # Payload Too Large: the request's size in bytes (images, usually), which dropping turns to fit
        # the context window would not cure; the caller has to send less.
        return ErrorKind.INVALID_REQUEST
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (503, 529):
        return ErrorKind.OVERLOADED
    if 400 <= status < 500:
        return ErrorKind.INVALID_REQUEST if status in (400, 422) else ErrorKind.UPSTREAM_4XX
    return ErrorKind.UPSTREAM_5XX


#: The longest error text kept from an upstream body: a provider's own message, or an excerpt of a body
#: in a shape we do not know (a gateway's HTML page, a proxy's JSON), so an error message stays bounded.
MAX_ERROR_TEXT = 500
#: How much of an unknown body is kept.
MAX_EXCERPT = 200

_HIDDEN_HTML = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def excerpt(text: str, limit: int = MAX_EXCERPT) -> str:
    """``text`` on one line (an HTML page reduced to its text), cut to ``limit`` characters with ``…``."""
    if "<" in text and ">" in text:
        text = _HTML_TAG.sub(" ", _HIDDEN_HTML.sub(" ", text))
    return _cut(_SPACES.sub(" ", text).strip(), limit)


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _problem_detail(detail: Any) -> str | None:
    """RFC 9457 ``detail``; FastAPI-style servers put a list of ``{"loc", "msg"}`` there instead."""
    if isinstance(detail, list):
        texts = [_text(item.get("msg")) for item in detail if isinstance(item, dict)]
        return "; ".join(t for t in texts if t) or None
    return _text(detail)


def _known_message(body: dict[str, Any], depth: int = 0) -> str | None:
    """The message of the error shapes providers and the proxies in front of them use, or None."""
    if depth > 3:
        return None
    err = body.get("error")
    if isinstance(err, dict):  # OpenAI, Anthropic, Azure, Google: {"error": {"message", ...}}
        nested = _text(err.get("message")) or _known_message(err, depth + 1)
        if nested:
            return nested
    if text := _text(err):  # TGI, Ollama: {"error": "..."}; OAuth adds error_description
        description = _text(body.get("error_description"))
        return f"{text}: {description}" if description else text
    # application/problem+json (RFC 9457): title and detail (type is a URI, status repeats the HTTP one)
    title, detail = _text(body.get("title")), _problem_detail(body.get("detail"))
    if title or detail:
        return f"{title}: {detail}" if title and detail and detail != title else (title or detail)
    for key in ("message", "Message", "msg", "error_message", "errorMessage"):
        if text := _text(body.get(key)):
            return text
    errors = body.get("errors")  # JSON:API and GraphQL gateways: {"errors": [{"message" | "detail"}]}
    if isinstance(errors, list):
        texts = [
            t for item in errors[:3]
            if (t := _text(item) or (_known_message(item, depth + 1) if isinstance(item, dict) else None))
        ]
        if texts:
            return "; ".join(texts)
    fault = body.get("fault")  # API gateways (Apigee): {"fault": {"faultstring"}}
    if isinstance(fault, dict) and (text := _text(fault.get("faultstring"))):
        return text
    return None


def error_message_from_body(body: Any) -> str:
    """A human message from an error reply's body (parsed JSON, or text), bounded in length.

    The usual shapes are read (``{"error": {"message"}}``, ``{"error": "..."}``, RFC 9457
    ``application/problem+json`` ``title``/``detail``, ``{"message"}``, ``{"errors": [...]}``...); any other
    body, JSON or text (an HTML gateway page), is kept as an excerpt of :data:`MAX_EXCERPT` characters.
    """
    if isinstance(body, dict):
        known = _known_message(body)
        if known:
            return _cut(known, MAX_ERROR_TEXT)
    if isinstance(body, list) and body and isinstance(body[0], dict):  # some servers wrap it in a list
        known = _known_message(body[0])
        if known:
            return _cut(known, MAX_ERROR_TEXT)
    if isinstance(body, dict | list) and body:
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
        return f"unrecognised error body: {excerpt(raw)}"
    if isinstance(body, str) and body.strip():
        return excerpt(body)
    return "upstream error"


def decode_error_body(raw: bytes) -> Any:
    """An error reply's body: parsed JSON when it is JSON, else the text (an HTML gateway page...)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def request_id_note(
    headers: Mapping[str, str], names: Iterable[str] = ("x-request-id", "request-id")
) -> str | None:
    """``request id <id>`` from the first of the ``names`` headers present, for error messages."""
    request_id = next((headers[name] for name in names if headers.get(name)), None)
    return f"request id {request_id}" if request_id else None


def with_notes(message: str, notes: Iterable[str | None]) -> str:
    """``message (note, note)`` for the non-empty notes, or ``message`` alone when there are none."""
    shown = [note for note in notes if note]
    return f"{message} ({', '.join(shown)})" if shown else message


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
