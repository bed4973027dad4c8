"""What the loopback Anthropic server refuses, and how: request checks and the API's error types.

A refusal is raised as :class:`Reject` and rendered by the server as the API's error body
``{"type": "error", "error": {"type", "message"}, "request_id"}``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._script import estimate_prompt_tokens
from ._server import HTTPRequest

#: The error ``type`` the API uses for each status.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# Claude Opus 4.1 and every model since take temperature or top_p, not both: the server's own rule,
# independent of the provider's model table.
_ONE_SAMPLING_PARAMETER = re.compile(r"^claude-(opus-4-[1-9]|(sonnet|haiku)-4-[5-9]|[a-z]+-[5-9])(-|$)")


class Reject(Exception):
    """Answer with an API error instead of a result."""

    def __init__(
        self, status: int, message: str, error_type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = (
            error_type
            or ERROR_TYPES.get(status)
            or ("api_error" if status >= 500 else "invalid_request_error")
        )
        self.headers = headers or {}


def blocks(content: Any) -> list[dict[str, Any]]:
    """The content blocks of a message's ``content`` (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content if isinstance(block, dict)]


def block_text(block: dict[str, Any]) -> str:
    """The text a block contributes to the prompt (tool results and tool calls included)."""
    if block.get("type") == "text":
        return str(block.get("text", ""))
    if block.get("type") == "tool_result":
        return " ".join(block_text(b) for b in blocks(block.get("content") or []))
    if block.get("type") == "tool_use":
        return f"{block.get('name', '')} {json.dumps(block.get('input', {}))}"
    return ""


def count_tokens(body: dict[str, Any]) -> int:
    """The input-token count of a request body (one token per word of every text)."""
    system = body.get("system") or ""
    texts = [system] if isinstance(system, str) else [block_text(b) for b in blocks(system)]
    for message in body.get("messages") or ():
        texts.extend(block_text(block) for block in blocks(message.get("content") or []))
    return estimate_prompt_tokens(" ".join(texts))


def check_headers(request: HTTPRequest, api_key: str | None) -> None:
    """The key (``x-api-key``, or a bearer token) and the ``anthropic-version`` header."""
    key = request.headers.get("x-api-key")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if key is None and scheme.lower() == "bearer":
        key = token.strip()  # newer official clients send the API key as a bearer token
    if api_key is not None and key != api_key:
        raise Reject(401, "invalid x-api-key" if key else "x-api-key header is required")
    if "anthropic-version" not in request.headers:
        raise Reject(400, "anthropic-version: header is required")


def read_body(request: HTTPRequest) -> dict[str, Any]:
    """The request's JSON object."""
    try:
        body = request.json()
    except ValueError:
        raise Reject(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise Reject(400, "The request body must be a JSON object.")
    return body


def check_model(body: dict[str, Any], models: tuple[str, ...]) -> str:
    """The requested model, which must be one of ``models``."""
    model = body.get("model")
    if not isinstance(model, str):
        raise Reject(400, "model: Field required")
    if model not in models:
        raise Reject(404, f"model: {model}")
    return model


def check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``messages`` list, checked the way the API checks roles and blocks."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Reject(400, "messages: Field required")
    if not messages:
        raise Reject(400, "messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise Reject(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise Reject(400, f"messages.{i}.content: Field required")
        for j, block in enumerate(blocks(content)):
            _check_block(block, message["role"], f"messages.{i}.content.{j}")
    return messages


def _check_block(block: dict[str, Any], role: str, where: str) -> None:
    if block.get("type") == "text" and not block.get("text"):
        raise Reject(400, f"{where}: text content blocks must be non-empty")
    if block.get("type") == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64" and source.get("media_type") not in _MEDIA_TYPES:
            raise Reject(
                400,
                f"{where}.image.source.base64.media_type: Input should be "
                "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
            )
    if block.get("type") == "tool_use" and role != "assistant":
        raise Reject(400, f"{where}: tool_use blocks are only allowed in assistant messages")
    if block.get("type") == "tool_result" and role != "user":
        raise Reject(400, f"{where}: tool_result blocks are only allowed in user messages")


def check_sampling(body: dict[str, Any], model: str) -> None:
    """Newer models refuse ``temperature`` and ``top_p`` together, as the API does."""
    if body.get("temperature") is not None and body.get("top_p") is not None:
        if _ONE_SAMPLING_PARAMETER.match(model):
            raise Reject(400, "`temperature` and `top_p` cannot both be specified for this model. "
                         "Please use only one.")


def check_max_tokens(body: dict[str, Any]) -> None:
    """``max_tokens`` is required and at least 1."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise Reject(400, "max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Reject(400, "max_tokens: Input should be greater than or equal to 1")
