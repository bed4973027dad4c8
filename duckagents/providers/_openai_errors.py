"""OpenAI error replies (``{"error": {"message", "type", "param", "code"}}``) as :class:`ProviderError`,
and the ``x-ratelimit-*`` headers.

Pure functions, no I/O; used by the OpenAI provider and by TGI for OpenAI-shaped proxy errors. A body of
another shape (a gateway's HTML page, RFC 9457 problem+json...) is read by
:func:`~duckagents.providers._http.error_message_from_body`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ErrorKind, ProviderError, Secret, redact
from ._base import RateLimitInfo
from ._http import (
    error_message_from_body,
    kind_for_status,
    parse_duration,
    parse_rate_limit,
    request_id_note,
    retry_after,
    with_notes,
)

_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?(?:ms|s|m|h)(?:\d+(?:\.\d+)?(?:ms|s))*)")


def error_kind(status: int | None, code: str | None, err_type: str | None, message: str) -> ErrorKind:
    """The error kind of an OpenAI error: the ``code``/``type`` refine what the status says."""
    if code == "insufficient_quota" or err_type == "insufficient_quota":
        return ErrorKind.QUOTA_EXCEEDED
    if code == "rate_limit_exceeded":
        return ErrorKind.RATE_LIMITED
    # vLLM and other compatible servers send no code, only OpenAI's wording.
    if code == "context_length_exceeded" or "maximum context length" in message:
        return ErrorKind.CONTEXT_LENGTH
    if code == "model_not_found":
        return ErrorKind.NOT_FOUND
    if code == "invalid_api_key":
        return ErrorKind.AUTH
    if status is not None:
        return kind_for_status(status)
    return ErrorKind.INVALID_REQUEST if err_type == "invalid_request_error" else ErrorKind.UPSTREAM_5XX


def _error_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, None, None
    # Codes are usually strings but Cloudflare-fronted 5xx bodies carry an int.
    fields = (err.get("code"), err.get("type"), err.get("param"))
    return tuple(None if f is None else str(f) for f in fields)  # type: ignore[return-value]


def make_error(
    status: int | None,
    headers: Mapping[str, str],
    body: Any,
    *,
    provider: str,
    model: str | None,
    secrets: Iterable[Secret | str | None],
    now: float | None = None,
    request_id: str | None = None,
    partial: bool = False,
) -> ProviderError:
    """The :class:`ProviderError` for an OpenAI error reply, or an error object in a 200 reply or in a
    stream (``status`` None); ``body`` is parsed JSON or text, ``now`` the wall clock, ``request_id`` ours."""
    code, err_type, param = _error_fields(body)
    message = error_message_from_body(body).strip() or "upstream error"
    kind = error_kind(status, code, err_type, message)
    wait = retry_after(headers, now)
    if wait is None and kind is ErrorKind.RATE_LIMITED:
        match = _TRY_AGAIN.search(message)
        wait = parse_duration(match.group(1)) if match else None
    fields = [f"{name}={value}" for name, value in (("type", err_type), ("code", code), ("param", param))
              if value]
    text = with_notes(message, [*fields, request_id_note(headers, ("x-request-id",))])
    return ProviderError(
        kind,
        redact(text, secrets),
        provider=provider,
        model=model,
        retryable=False if kind is ErrorKind.QUOTA_EXCEEDED else None,
        retry_after=wait,
        status=status,
        request_id=request_id,
        partial=partial,
    )


def rate_limit(headers: Mapping[str, str], now: float | None = None) -> RateLimitInfo | None:
    """The ``x-ratelimit-*`` and ``retry-after`` headers of a reply, or None when it has none."""
    return parse_rate_limit(headers, now)
