"""OpenAI error objects with the matching HTTP status, for every way a request can fail.

The body is ``{"error": {"message", "type", "param", "code"}}`` like OpenAI's, so the official SDKs
raise the right exception class (they choose it by status). ``type`` is our
:class:`~duckagents.errors.ErrorKind` value; ``code`` is OpenAI's well-known code where one exists
(``model_not_found``, ``context_length_exceeded``, ``rate_limit_exceeded``, ``insufficient_quota``,
``invalid_api_key``), else the kind again. docs/deploy.md has the table.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ProviderError
from ._json import dumps

__all__ = ["KIND_STATUS", "ApiError", "error_body", "from_provider_error"]

#: HTTP status per error kind (by value, so kinds added later fall back to 500, not to a crash).
KIND_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "context_length": 400,
    "unsupported": 400,
    "upstream_4xx": 400,
    "no_provider": 400,
    "auth": 502,  # the upstream refused *our* credentials: a fault of this server, not of the client
    "not_found": 404,
    "rate_limited": 429,
    "quota_exceeded": 429,
    "budget_exceeded": 429,  # a spending budget of this server (docs/routing.md): like an exhausted quota
    "timeout": 504,
    "upstream_5xx": 502,
    "network": 502,
    "protocol": 502,
    "circuit_open": 503,
    "overloaded": 503,
    "shutdown": 503,
    "cancelled": 503,
    "agent_crashed": 500,
    "internal": 500,
}
_CODES: dict[str, str] = {
    "context_length": "context_length_exceeded",
    "rate_limited": "rate_limit_exceeded",
    "quota_exceeded": "insufficient_quota",
    "budget_exceeded": "insufficient_quota",
    "not_found": "model_not_found",
}
#: Longest retry-after announced (a day): an upstream's absurd hint is not passed on as is.
MAX_RETRY_AFTER = 86_400.0
MAX_MESSAGE = 1_000


class ApiError(Exception):
    """A failed HTTP request: its status, OpenAI error object and extra headers (``retry-after``)."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        self.code = code or kind
        self.param = param
        self.headers = dict(headers or {})
        if retry_after is not None and math.isfinite(retry_after):
            seconds = min(max(retry_after, 0.0), MAX_RETRY_AFTER)
            # retry-after is whole seconds (RFC 9110); the SDKs read the exact figure from retry-after-ms.
            self.headers["retry-after"] = str(math.ceil(seconds))
            self.headers["retry-after-ms"] = str(round(seconds * 1000))
        elif status == 429 or (status == 503 and kind == "overloaded"):
            self.headers.setdefault("retry-after", "1")

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return error_body(self.message, self.kind, self.code, self.param)

    def encoded(self) -> bytes:
        """The JSON body as bytes."""
        return dumps(self.body())


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` as OpenAI shapes it."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code or kind}}


def from_provider_error(error: ProviderError, *, unknown_model: str | None = None) -> ApiError:
    """The HTTP answer for a failed routed request. ``unknown_model``: the request named a model that no
    configured provider offers, so a ``no_provider`` answer is OpenAI's 404 ``model_not_found``."""
    kind = error.kind.value
    if kind == "no_provider" and unknown_model is not None:
        message = f"The model {unknown_model!r} does not exist or is not served here (see GET /v1/models)."
        suggestion = error.message.find("(did you mean")
        if suggestion >= 0:  # the router's closest served name
            message += " " + error.message[suggestion:].split(")", 1)[0] + ")"
        return ApiError(404, kind, message, code="model_not_found", param="model")
    status = KIND_STATUS.get(kind, 500)
    message = error.message
    if kind == "auth":
        message = f"provider {error.provider or '?'} refused this server's credentials: {message}"
    return ApiError(status, kind, message, code=_CODES.get(kind), retry_after=error.retry_after)
