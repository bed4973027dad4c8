"""OpenAI error replies (``{"error": {"message", "type", "param", "code"}}``) as :class:`ProviderError`.

Pure functions, no I/O; used by the OpenAI provider and by TGI for OpenAI-shaped proxy errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ErrorKind, ProviderError, Secret, redact
from ._http import (
    error_message_from_body,
    kind_for_status,
    parse_duration,
    request_id_note,
    retry_after,
    with_notes,
)

_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?(?:ms|s|m|h)(?:\d+(?:\.\d+)?(?:ms|s))*)")


def classify(status: int | None, code: str | None, err_type: str | None, message: str) -> ErrorKind:
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
) -> ProviderError:
    """The :class:`ProviderError` for an OpenAI error reply (``body`` parsed JSON, or text)."""
    code, err_type, param = _error_fields(body)
    message = error_message_from_body(body).strip() or "upstream error"
    kind = classify(status, code, err_type, message)
    wait = retry_after(headers)
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
    )


def stream_error(chunk: Any) -> Any | None:
    """The ``error`` object of a mid-stream error event (``data: {"error": {...}}``), else None."""
    if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
        return chunk
    return None
