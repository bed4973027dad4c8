"""Ollama's error replies (``{"error": "..."}``, with an HTTP status or in band in a 200 reply) as
:class:`ProviderError`, and its rate-limit headers.

Ollama has no error codes: the kind comes from the status, refined by the wording. Pure functions, no I/O.
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
    parse_rate_limit,
    parse_retry_after,
    request_id_note,
    with_notes,
)

_CONTEXT_LENGTH = re.compile(r"context (length|window)|exceeds (the )?maximum|too long", re.IGNORECASE)
# A model that is not there, locally or in the registry: "pull model manifest: file does not exist" (a
# pull of an unknown name, in band or as a 500), "model 'x' not found, try pulling it first".
_MISSING_MODEL = re.compile(
    r"file does not exist|manifest unknown|model [\"'][^\"']*[\"'] not found", re.IGNORECASE
)


def error_kind(status: int | None, message: str) -> ErrorKind:
    """The kind of an Ollama error: from ``status`` (None: in band), refined by the message.

    A missing model is ``not_found`` whatever the status (a pull reports it in band or as a 500): it is
    permanent, so it is not retried.
    """
    if _CONTEXT_LENGTH.search(message):
        return ErrorKind.CONTEXT_LENGTH
    if _MISSING_MODEL.search(message):
        return ErrorKind.NOT_FOUND
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
    """The :class:`ProviderError` of an Ollama error reply, or of an ``{"error": ...}`` object in a 200
    reply or stream (``status`` None); ``body`` is parsed JSON or text, ``request_id`` ours."""
    message = error_message_from_body(body)
    return ProviderError(
        error_kind(status, message),
        redact(with_notes(message, [request_id_note(headers)]), secrets),
        provider=provider,
        model=model,
        retry_after=parse_retry_after(headers.get("retry-after"), now),
        status=status,
        request_id=request_id,
        partial=partial,
    )


def rate_limit(headers: Mapping[str, str], now: float | None = None) -> RateLimitInfo | None:
    """The ``x-ratelimit-*`` headers a proxy in front of Ollama sends, or None."""
    return parse_rate_limit(headers, now)
