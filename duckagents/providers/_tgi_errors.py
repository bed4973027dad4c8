"""TGI's error replies as ProviderErrors: ``{"error": str, "error_type": str}``, or OpenAI's shape.

Used for HTTP error replies and for the error events TGI sends in-band once a stream has started.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ErrorKind, ProviderError, Secret, redact
from . import _openai_errors as openai_errors
from ._http import error_message_from_body, kind_for_status, request_id_note, retry_after, with_notes

# TGI's validation messages for inputs that do not fit: "`inputs` tokens + `max_new_tokens` must be <= N"
# and "`inputs` must have less than N tokens".
_TOO_LONG = re.compile(r"`inputs` tokens \+ `max_new_tokens` must be|`inputs` must have less than|too long")


def error_kind(status: int | None, error_type: str | None, message: str) -> tuple[ErrorKind, bool | None]:
    """The kind (and a retryable override) of a TGI error.

    424 ``generation`` errors are failures inside the model shards (CUDA errors, OOM on a given input);
    the same request tends to fail the same way, so they are UPSTREAM_4XX and not retried.
    """
    if status == 422 or error_type == "validation":
        return (ErrorKind.CONTEXT_LENGTH if _TOO_LONG.search(message) else ErrorKind.INVALID_REQUEST), None
    if status == 424 or error_type == "generation":
        return ErrorKind.UPSTREAM_4XX, False
    if error_type == "overloaded":  # TGI's 429: max_concurrent_requests reached
        return ErrorKind.OVERLOADED, None
    if error_type == "incomplete_generation":
        return ErrorKind.UPSTREAM_5XX, None
    return (kind_for_status(status) if status is not None else ErrorKind.UPSTREAM_5XX), None


def make_error(
    status: int | None,
    headers: Mapping[str, str],
    body: Any,
    *,
    provider: str,
    model: str | None,
    secrets: Iterable[Secret | str | None],
) -> ProviderError:
    """The ProviderError of a TGI error reply or in-band error event (``body`` parsed JSON or text)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # an OpenAI-shaped proxy error
        return openai_errors.make_error(
            status, headers, body, provider=provider, model=model, secrets=secrets
        )
    message = error_message_from_body(body).strip() or "upstream error"
    error_type = body.get("error_type") if isinstance(body, dict) else None
    error_type = error_type if isinstance(error_type, str) else None
    kind, retryable = error_kind(status, error_type, message)
    text = with_notes(message, [error_type and f"error_type={error_type}", request_id_note(headers)])
    return ProviderError(
        kind,
        redact(text, secrets),
        provider=provider,
        model=model,
        retryable=retryable,
        retry_after=retry_after(headers),
        status=status,
    )
