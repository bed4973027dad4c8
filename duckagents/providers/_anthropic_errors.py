"""Anthropic's error replies (``{"type": "error", "error": {"type", "message"}}``) and rate-limit headers.

Pure functions: ``now`` (wall-clock seconds) is passed in, since the API's reset times are timestamps.

``request_too_large`` (HTTP 413: the request is over the API's size limit in bytes, usually because of
its images) is ``invalid_request``, not ``context_length``: dropping turns to fit the context window
would not cure it, and retrying it anywhere fails the same way; the message keeps the API's reason.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ErrorKind, ProviderError, Secret, redact
from ._base import RateLimitInfo
from ._http import cap_wait, error_message_from_body, kind_for_status, parse_int, parse_retry_after

PROVIDER = "anthropic"

#: ``error.type`` of an error body -> our kind; more specific than the HTTP status.
ERROR_KINDS: dict[str, ErrorKind] = {
    "invalid_request_error": ErrorKind.INVALID_REQUEST,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "not_found_error": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.INVALID_REQUEST,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "billing_error": ErrorKind.QUOTA_EXCEEDED,
    "timeout_error": ErrorKind.TIMEOUT,
    "api_error": ErrorKind.UPSTREAM_5XX,
    "overloaded_error": ErrorKind.OVERLOADED,
}

# The API reports an oversized prompt as a plain invalid_request_error; only the wording tells.
_CONTEXT_OVERFLOW = re.compile(
    r"prompt is too long|context (?:window|length|limit)|exceeds? (?:the )?(?:model'?s? )?context",
    re.IGNORECASE,
)


def parse_reset(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (wall clock) until an RFC 3339 reset timestamp; None if absent/garbled; capped
    like every upstream wait hint (:func:`~duckagents.providers._http.cap_wait`)."""
    if not value:
        return None
    try:
        when = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return cap_wait(max(0.0, when.timestamp() - now))


def _family(headers: Mapping[str, str], name: str, now: float) -> tuple[int | None, int | None, float | None]:
    prefix = f"anthropic-ratelimit-{name}-"
    return (
        parse_int(headers.get(prefix + "limit")),
        parse_int(headers.get(prefix + "remaining")),
        parse_reset(headers.get(prefix + "reset"), now),
    )


def rate_limit(headers: Mapping[str, str], now: float) -> RateLimitInfo | None:
    """``anthropic-ratelimit-*`` and ``retry-after`` headers as :class:`RateLimitInfo` (None if none).

    ``tokens`` is the API's most restrictive token limit; when absent the input-token limit stands in,
    since input tokens are what a caller can estimate before sending.
    """
    requests = _family(headers, "requests", now)
    tokens = _family(headers, "tokens", now)
    if tokens == (None, None, None):
        tokens = _family(headers, "input-tokens", now)
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    if requests == (None, None, None) and tokens == (None, None, None) and retry_after is None:
        return None
    return RateLimitInfo(*requests, *tokens, retry_after=retry_after)  # type: ignore[arg-type]


def _exhausted_reset(info: RateLimitInfo | None) -> float | None:
    if info is None:
        return None
    resets = [
        reset
        for remaining, reset in (
            (info.remaining_requests, info.reset_requests),
            (info.remaining_tokens, info.reset_tokens),
        )
        if remaining == 0 and reset is not None
    ]
    return min(resets) if resets else None


def error_kind(status: int | None, error_type: str | None, message: str) -> ErrorKind:
    """Our kind for an API error: the body's ``error.type`` first, the HTTP status as fallback."""
    if error_type in (None, "invalid_request_error") and _CONTEXT_OVERFLOW.search(message):
        return ErrorKind.CONTEXT_LENGTH
    kind = ERROR_KINDS.get(error_type or "")
    if kind is None:
        kind = kind_for_status(status) if status is not None else ErrorKind.UPSTREAM_5XX
    return kind


def make_error(
    status: int | None,
    headers: Mapping[str, str],
    body: Any,
    *,
    provider: str,
    model: str | None,
    secrets: Iterable[Secret | str | None],
    now: float,
    request_id: str | None = None,
    partial: bool = False,
) -> ProviderError:
    """A redacted :class:`ProviderError` for an error response (or an in-stream ``error`` event,
    ``status`` None); ``body`` is parsed JSON or text, ``request_id`` ours."""
    error = body.get("error") if isinstance(body, dict) else None
    error_type = error.get("type") if isinstance(error, dict) and isinstance(error.get("type"), str) else None
    message = error_message_from_body(body) if body not in ("", None) else f"HTTP {status} with empty body"
    kind = error_kind(status, error_type, message)
    upstream_id = headers.get("request-id") or headers.get("x-request-id")
    if not upstream_id and isinstance(body, dict) and isinstance(body.get("request_id"), str):
        upstream_id = body["request_id"]
    text = f"{error_type}: {message}" if error_type else message
    if status is None:
        text = f"error event in stream: {text}"
    if upstream_id:
        text += f" (request-id {upstream_id})"
    info = rate_limit(headers, now)
    retry_after = info.retry_after if info is not None else None
    if retry_after is None and kind is ErrorKind.RATE_LIMITED:
        retry_after = _exhausted_reset(info)
    should_retry = headers.get("x-should-retry")
    return ProviderError(
        kind,
        redact(text, secrets),
        provider=provider,
        model=model,
        retryable={"true": True, "false": False}.get((should_retry or "").strip().lower()),
        retry_after=retry_after,
        status=status,
        request_id=request_id,
        partial=partial,
    )
