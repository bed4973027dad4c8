"""A loopback Anthropic Messages API server: the real wire format, scripted replies, injected faults.

Speaks ``POST /v1/messages`` (JSON or SSE stream), ``POST /v1/messages/count_tokens``,
``GET /v1/models`` (paginated) and ``GET /v1/models/{id}`` with the API's headers and error bodies, so
both our provider and the official ``anthropic`` client parse it. Replies come from ``server.script``
(default: an echo of the last user text).

How each :class:`~duckagents.testing._server.Fault` field is rendered:

- ``status``: that HTTP error with the API's body ``{"type": "error", "error": {"type", "message"},
  "request_id"}``; ``error_type`` (default: the status's usual type) and ``message`` fill it. A 429 also
  carries ``retry-after`` (5 s unless ``headers`` says otherwise) and exhausted rate-limit headers.
- on a streaming request, ``status`` or ``error_type`` together with ``cut_after=N`` (N >= 1): N stream
  events (``message_start`` first), then an ``error`` event of that type, and the stream ends cleanly:
  how the API reports a failure after the stream started. ``error_type`` without ``status`` or
  ``cut_after`` puts the error event right after ``message_start`` (and does nothing to a request that
  is not streamed). With ``cut_after=0`` nothing can be sent: the connection is simply dropped.
- ``headers``: extra (or overriding) headers on the error reply.
- ``cut_after`` alone: the connection is dropped after N events (or half-way through a JSON body).
- ``malformed``: a body that is not JSON, or a stream with a garbage event after ``message_start``.
- ``latency``, ``first_byte_delay`` and ``reply`` as in :class:`LoopbackServer`.

The API key is accepted in ``x-api-key`` or, as newer official clients send it, as a bearer token.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ..messages import FinishReason
from ._script import ReplyScript, ScriptedReply, estimate_prompt_tokens, split_text
from ._server import Fault, HTTPRequest, LoopbackServer, Reply, StreamReply, serve_loopback, sse

__all__ = ["DEFAULT_MODELS", "ERROR_TYPES", "AnthropicServer", "open_anthropic_server"]

DEFAULT_MODELS: tuple[str, ...] = (
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
    "claude-opus-4-6",
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "claude-3-7-sonnet-latest",
    "claude-3-5-haiku-latest",
)
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
_STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.REFUSAL: "refusal",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.OTHER: "pause_turn",
}
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_MALFORMED_BODY = b'{"id": "msg_broken", "type": "message", "content": ['
_GARBAGE_EVENT = b"event: content_block_delta\ndata: {this is not json\n\n"


class _Reject(Exception):
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


def _rfc3339(seconds_from_now: float) -> str:
    when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=seconds_from_now)
    return when.isoformat().replace("+00:00", "Z")


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content if isinstance(block, dict)]


def _block_text(block: dict[str, Any]) -> str:
    if block.get("type") == "text":
        return str(block.get("text", ""))
    if block.get("type") == "tool_result":
        return " ".join(_block_text(b) for b in _blocks(block.get("content") or []))
    if block.get("type") == "tool_use":
        return f"{block.get('name', '')} {json.dumps(block.get('input', {}))}"
    return ""


class AnthropicServer:
    """The Messages API on a :class:`LoopbackServer`; start it with :func:`open_anthropic_server`.

    ``api_key``: when set, requests must carry it in ``x-api-key`` (else 401). ``models``: the models
    served (others get 404, like the API). ``context_window``: prompts over it (counted one token per
    word) get the API's "prompt is too long" 400. ``rate_limits``: (requests, tokens) per minute reported
    in ``anthropic-ratelimit-*`` headers. ``stream_interval``: pause between stream events.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        context_window: int = 200_000,
        rate_limits: tuple[int, int] = (50, 40_000),
        stream_interval: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.models = tuple(models)
        self.context_window = context_window
        self.rate_limits = rate_limits
        self.stream_interval = stream_interval
        self.script = ReplyScript()
        self.loopback = LoopbackServer(self._app)
        self.tokens_used = 0
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        """Base URL to give a client, e.g. ``http://127.0.0.1:54321``."""
        return self.loopback.url

    @property
    def requests(self) -> deque[HTTPRequest]:
        """The most recent requests received (bounded)."""
        return self.loopback.requests

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is used once, by the next request matching its ``path``."""
        self.loopback.inject(*faults)

    # --- dispatch --------------------------------------------------------------------------------

    async def _app(self, request: HTTPRequest, fault: Fault | None) -> Reply | StreamReply:
        request_id = f"req_loopback{next(self._ids):012d}"
        try:
            in_stream = fault is not None and self._wants_stream(request) and self._in_stream_error(fault)
            if fault is not None and fault.status is not None and not in_stream:
                raise _Reject(fault.status, fault.message, fault.error_type, fault.headers)
            self._check_headers(request)
            if request.path == "/v1/messages" and request.method == "POST":
                return self._messages(self._body(request), fault, request_id)
            if request.path == "/v1/messages/count_tokens" and request.method == "POST":
                return self._count_tokens(self._body(request), fault, request_id)
            if request.path == "/v1/models" and request.method == "GET":
                return self._list_models(request.query, fault, request_id)
            if request.path.startswith("/v1/models/") and request.method == "GET":
                return self._get_model(request.path.removeprefix("/v1/models/"), fault, request_id)
            raise _Reject(404, "Not Found")
        except _Reject as reject:
            return self._error_reply(reject, request_id)

    @staticmethod
    def _wants_stream(request: HTTPRequest) -> bool:
        try:
            return request.path == "/v1/messages" and request.json().get("stream") is True
        except (ValueError, AttributeError):
            return False

    @staticmethod
    def _in_stream_error(fault: Fault) -> bool:
        return (fault.cut_after is not None and fault.status is not None) or (
            fault.status is None and fault.error_type is not None
        )

    def _check_headers(self, request: HTTPRequest) -> None:
        key = request.headers.get("x-api-key")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if key is None and scheme.lower() == "bearer":
            key = token.strip()  # newer official clients send the API key as a bearer token
        if self.api_key is not None and key != self.api_key:
            raise _Reject(401, "invalid x-api-key" if key else "x-api-key header is required")
        if "anthropic-version" not in request.headers:
            raise _Reject(400, "anthropic-version: header is required")

    @staticmethod
    def _body(request: HTTPRequest) -> dict[str, Any]:
        try:
            body = request.json()
        except ValueError:
            raise _Reject(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _Reject(400, "The request body must be a JSON object.")
        return body

    def _headers(self, request_id: str, *, exhausted: bool = False) -> dict[str, str]:
        requests_limit, tokens_limit = self.rate_limits
        remaining = {
            "requests": 0 if exhausted else max(0, requests_limit - self.loopback.request_count),
            "tokens": 0 if exhausted else max(0, tokens_limit - self.tokens_used),
        }
        headers = {"request-id": request_id}
        for family, limit, left in (
            ("requests", requests_limit, remaining["requests"]),
            ("tokens", tokens_limit, remaining["tokens"]),
            ("input-tokens", tokens_limit, remaining["tokens"]),
            ("output-tokens", tokens_limit // 5, 0 if exhausted else tokens_limit // 5),
        ):
            headers[f"anthropic-ratelimit-{family}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{family}-remaining"] = str(left)
            headers[f"anthropic-ratelimit-{family}-reset"] = _rfc3339(60.0)
        return headers

    def _error_reply(self, reject: _Reject, request_id: str) -> Reply:
        headers = {"request-id": request_id}
        if reject.status == 429:
            headers = {**self._headers(request_id, exhausted=True), "retry-after": "5"}
        retry = reject.status in (408, 409, 429) or reject.status >= 500
        headers["x-should-retry"] = "true" if retry else "false"
        body = {
            "type": "error",
            "error": {"type": reject.error_type, "message": reject.message},
            "request_id": request_id,
        }
        return Reply.json(body, reject.status, {**headers, **reject.headers})

    # --- validation ------------------------------------------------------------------------------

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str):
            raise _Reject(400, "model: Field required")
        if model not in self.models:
            raise _Reject(404, f"model: {model}")
        return model

    @staticmethod
    def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _Reject(400, "messages: Field required")
        if not messages:
            raise _Reject(400, "messages: at least one message is required")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise _Reject(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
            content = message.get("content")
            if not isinstance(content, str | list):
                raise _Reject(400, f"messages.{i}.content: Field required")
            for j, block in enumerate(_blocks(content)):
                where = f"messages.{i}.content.{j}"
                if block.get("type") == "text" and not block.get("text"):
                    raise _Reject(400, f"{where}: text content blocks must be non-empty")
                if block.get("type") == "image":
                    source = block.get("source") or {}
                    if source.get("type") == "base64" and source.get("media_type") not in _MEDIA_TYPES:
                        raise _Reject(
                            400,
                            f"{where}.image.source.base64.media_type: Input should be "
                            "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
                        )
                if block.get("type") == "tool_use" and message["role"] != "assistant":
                    raise _Reject(400, f"{where}: tool_use blocks are only allowed in assistant messages")
                if block.get("type") == "tool_result" and message["role"] != "user":
                    raise _Reject(400, f"{where}: tool_result blocks are only allowed in user messages")
        return messages

    def count_tokens(self, body: dict[str, Any]) -> int:
        """The server's input-token count of a request body (one token per word of every text)."""
        system = body.get("system") or ""
        texts = [system] if isinstance(system, str) else [_block_text(b) for b in _blocks(system)]
        for message in body.get("messages") or ():
            texts.extend(_block_text(block) for block in _blocks(message.get("content") or []))
        return estimate_prompt_tokens(" ".join(texts))

    # --- endpoints -------------------------------------------------------------------------------

    def _messages(self, body: dict[str, Any], fault: Fault | None, request_id: str) -> Reply | StreamReply:
        model = self._check_model(body)
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _Reject(400, "max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _Reject(400, "max_tokens: Input should be greater than or equal to 1")
        messages = self._check_messages(body)
        prompt_tokens = self.count_tokens(body)
        if prompt_tokens > self.context_window:
            raise _Reject(400, f"prompt is too long: {prompt_tokens} tokens > {self.context_window} maximum")
        last_user = next((m for m in reversed(messages) if m["role"] == "user"), {"content": ""})
        reply = self.script.next(" ".join(filter(None, map(_block_text, _blocks(last_user["content"])))))
        usage = {
            "input_tokens": reply.prompt_tokens if reply.prompt_tokens is not None else prompt_tokens,
            "output_tokens": reply.completion_tokens
            if reply.completion_tokens is not None
            else estimate_prompt_tokens(reply.text + " ".join(c.arguments for c in reply.tool_calls)),
        }
        self.tokens_used += usage["input_tokens"] + usage["output_tokens"]
        headers = self._headers(request_id)
        message_id = f"msg_loopback{request_id.removeprefix('req_loopback')}"
        if body.get("stream") is True:
            events = self._stream_events(reply, model, message_id, usage)
            return StreamReply(
                self._faulted(events, fault),
                headers={**headers, "content-type": "text/event-stream; charset=utf-8"},
                interval=self.stream_interval,
            )
        if fault is not None and fault.malformed:
            return Reply(200, _MALFORMED_BODY, {**headers, "content-type": "application/json"})
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments)}
            for c in reply.tool_calls
        ]
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": _stop_reason(reply),
            "stop_sequence": None,
            "usage": {**usage, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        return Reply.json(message, headers=headers)

    @staticmethod
    def _stream_events(
        reply: ScriptedReply, model: str, message_id: str, usage: dict[str, int]
    ) -> list[bytes]:
        start: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
        }
        events = [
            sse("message_start", {"type": "message_start", "message": start}),
            sse("ping", {"type": "ping"}),
        ]
        blocks: list[tuple[dict[str, Any], str, list[str]]] = []
        if reply.text or not reply.tool_calls:
            blocks.append(
                ({"type": "text", "text": ""}, "text_delta", split_text(reply.text, reply.chunk_size))
            )
        for call in reply.tool_calls:
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            # Like the API: an empty fragment first, then the JSON in pieces.
            blocks.append((block, "input_json_delta", ["", *split_text(call.arguments, reply.chunk_size)]))
        for index, (block, delta_type, pieces) in enumerate(blocks):
            events.append(
                sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
            )
            key = "text" if delta_type == "text_delta" else "partial_json"
            for piece in pieces:
                if piece or delta_type == "input_json_delta":
                    delta = {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": delta_type, key: piece},
                    }
                    events.append(sse("content_block_delta", delta))
            events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        events.append(sse("message_stop", {"type": "message_stop"}))
        return events

    def _faulted(self, events: list[bytes], fault: Fault | None) -> list[bytes]:
        if fault is None:
            return events
        if fault.malformed:
            return [events[0], _GARBAGE_EVENT, *events[1:]]
        if not self._in_stream_error(fault):
            return events
        error_type = fault.error_type or _Reject(fault.status or 500, fault.message).error_type
        error = sse("error", {"type": "error", "error": {"type": error_type, "message": fault.message}})
        # Exactly N pieces, the last carrying the error event, so the server's cut_after never fires.
        n = min(max(1, fault.cut_after or 1), len(events) - 1)
        return [*events[: n - 1], events[n - 1] + error]

    def _count_tokens(self, body: dict[str, Any], fault: Fault | None, request_id: str) -> Reply:
        self._check_model(body)
        self._check_messages(body)
        if fault is not None and fault.malformed:
            return Reply(
                200, b'{"input_tokens": ', {"content-type": "application/json", "request-id": request_id}
            )
        return Reply.json({"input_tokens": self.count_tokens(body)}, headers={"request-id": request_id})

    @staticmethod
    def _model_info(model: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": model,
            "display_name": model.replace("-", " ").title(),
            "created_at": "2025-01-01T00:00:00Z",
        }

    def _list_models(self, query: str, fault: Fault | None, request_id: str) -> Reply:
        params = dict(urllib.parse.parse_qsl(query))
        try:
            limit = int(params.get("limit", "20"))
        except ValueError:
            raise _Reject(400, "limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise _Reject(400, "limit: Input should be between 1 and 1000")
        start = 0
        if "after_id" in params:
            if params["after_id"] not in self.models:
                raise _Reject(400, f"after_id: unknown model {params['after_id']}")
            start = self.models.index(params["after_id"]) + 1
        page = self.models[start : start + limit]
        if fault is not None and fault.malformed:
            return Reply(200, b'{"data": [', {"content-type": "application/json", "request-id": request_id})
        body = {
            "data": [{**self._model_info(m), "max_input_tokens": self.context_window} for m in page],
            "has_more": start + limit < len(self.models),
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
        return Reply.json(body, headers={"request-id": request_id})

    def _get_model(self, model: str, fault: Fault | None, request_id: str) -> Reply:
        if model not in self.models:
            raise _Reject(404, f"model: {model}")
        return Reply.json(self._model_info(model), headers={"request-id": request_id})


def _tool_input(arguments: str) -> Any:
    # A script may hold broken arguments on purpose; send them as a string rather than crash the server.
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return arguments


def _stop_reason(reply: ScriptedReply) -> str:
    if reply.raw_finish_reason is not None:
        return reply.raw_finish_reason
    if reply.tool_calls and reply.finish_reason is FinishReason.STOP:
        return "tool_use"
    return _STOP_REASONS[reply.finish_reason]


@asynccontextmanager
async def open_anthropic_server(**options: Any) -> AsyncIterator[AnthropicServer]:
    """Run an :class:`AnthropicServer` (constructor ``options``) on 127.0.0.1 for the block."""
    server = AnthropicServer(**options)
    async with serve_loopback(server.loopback):
        yield server
