"""TGI's error replies as ProviderErrors: ``{"error": str, "error_type": str}``, or OpenAI's shape from a
proxy in front of it; and its rate-limit headers.

Used for HTTP error replies and for the error events TGI sends in-band once a stream has started.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ErrorKind, ProviderError, Secret, redact
from . import _openai_errors as openai_errors
from ._base import RateLimitInfo
from ._http import (
    error_message_from_body,
    kind_for_status,
    parse_rate_limit,
    request_id_note,
    retry_after,
    with_notes,
)

# TGI's validation messages for inputs that do not fit: "`inputs` tokens + `max_new_tokens` must be <= N"
# and "`inputs` must have less than N tokens".
_TOO_LONG = re.compile(r"`inputs` tokens \+ `max_new_tokens` must be|`inputs` must have less than|too long")


def _shard_failure(status: int | None, error_type: str | None) -> bool:
    """A 424 ``generation`` error: a failure inside the model shards (CUDA error, OOM on a given input).
    The same request tends to fail the same way, so it is not retried."""
    return status == 424 or error_type == "generation"


def error_kind(status: int | None, error_type: str | None, message: str) -> ErrorKind:
    """The kind of a TGI error (shard failures are UPSTREAM_4XX, see :func:`make_error`)."""
    if status == 422 or error_type == "validation":
        return ErrorKind.CONTEXT_LENGTH if _TOO_LONG.search(message) else ErrorKind.INVALID_REQUEST
    if _shard_failure(status, error_type):
        return ErrorKind.UPSTREAM_4XX
    if error_type == "overloaded":  # TGI's 429: max_concurrent_requests reached
        return ErrorKind.OVERLOADED
    if error_type == "incomplete_generation":
        return ErrorKind.UPSTREAM_5XX
    return kind_for_status(status) if status is not None else ErrorKind.UPSTREAM_5XX


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
    """The ProviderError of a TGI error reply or in-band error event (``status`` None); ``body`` is parsed
    JSON or text, ``request_id`` ours."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # an OpenAI-shaped proxy error
        return openai_errors.make_error(
            status, headers, body, provider=provider, model=model, secrets=secrets, now=now,
            request_id=request_id, partial=partial,
        )
    message = error_message_from_body(body).strip() or "upstream error"
    error_type = body.get("error_type") if isinstance(body, dict) else None
    error_type = error_type if isinstance(error_type, str) else None
    text = with_notes(message, [error_type and f"error_type={error_type}", request_id_note(headers)])
    return ProviderError(
        error_kind(status, error_type, message),
        redact(text, secrets),
        provider=provider,
        model=model,
        retryable=False if _shard_failure(status, error_type) else None,
        retry_after=retry_after(headers, now),
        status=status,
        request_id=request_id,
        partial=partial,
    )


def rate_limit(headers: Mapping[str, str], now: float | None = None) -> RateLimitInfo | None:
    """The ``x-ratelimit-*`` headers a gateway in front of TGI sends, or None."""
    return parse_rate_limit(headers, now)
