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
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ._anthropic_render import MALFORMED_BODY, faulted, in_stream_error, message, stream_events
from ._anthropic_rules import (
    ERROR_TYPES,
    Reject,
    block_text,
    blocks,
    check_headers,
    check_max_tokens,
    check_messages,
    check_model,
    check_sampling,
    read_body,
)
from ._anthropic_rules import count_tokens as count_body_tokens
from ._common import WireServer, serve
from ._script import estimate_prompt_tokens
from ._server import Fault, HTTPRequest, Reply, StreamReply

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
_JSON = "application/json"


def _rfc3339(seconds_from_now: float) -> str:
    when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=seconds_from_now)
    return when.isoformat().replace("+00:00", "Z")


class AnthropicServer(WireServer):
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
        super().__init__()
        self.api_key = api_key
        self.models = tuple(models)
        self.context_window = context_window
        self.rate_limits = rate_limits
        self.stream_interval = stream_interval
        self.tokens_used = 0
        self._ids = itertools.count(1)

    # --- dispatch --------------------------------------------------------------------------------

    async def _app(self, request: HTTPRequest, fault: Fault | None) -> Reply | StreamReply:
        request_id = f"req_loopback{next(self._ids):012d}"
        try:
            in_stream = fault is not None and self._wants_stream(request) and in_stream_error(fault)
            if fault is not None and fault.status is not None and not in_stream:
                raise Reject(fault.status, fault.message, fault.error_type, fault.headers)
            check_headers(request, self.api_key)
            if request.path == "/v1/messages" and request.method == "POST":
                return self._messages(read_body(request), fault, request_id)
            if request.path == "/v1/messages/count_tokens" and request.method == "POST":
                return self._count_tokens(read_body(request), fault, request_id)
            if request.path == "/v1/models" and request.method == "GET":
                return self._list_models(request.query, fault, request_id)
            if request.path.startswith("/v1/models/") and request.method == "GET":
                return self._get_model(request.path.removeprefix("/v1/models/"), fault, request_id)
            raise Reject(404, "Not Found")
        except Reject as reject:
            return self._error_reply(reject, request_id)

    @staticmethod
    def _wants_stream(request: HTTPRequest) -> bool:
        try:
            return request.path == "/v1/messages" and request.json().get("stream") is True
        except (ValueError, AttributeError):
            return False

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

    def _error_reply(self, reject: Reject, request_id: str) -> Reply:
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

    def count_tokens(self, body: dict[str, Any]) -> int:
        """The server's input-token count of a request body (one token per word of every text)."""
        return count_body_tokens(body)

    # --- endpoints -------------------------------------------------------------------------------

    def _messages(self, body: dict[str, Any], fault: Fault | None, request_id: str) -> Reply | StreamReply:
        model = check_model(body, self.models)
        check_max_tokens(body)
        check_sampling(body, model)
        messages = check_messages(body)
        prompt_tokens = self.count_tokens(body)
        if prompt_tokens > self.context_window:
            raise Reject(400, f"prompt is too long: {prompt_tokens} tokens > {self.context_window} maximum")
        last_user = next((m for m in reversed(messages) if m["role"] == "user"), {"content": ""})
        reply = self.script.next(" ".join(filter(None, map(block_text, blocks(last_user["content"])))))
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
            return StreamReply(
                faulted(stream_events(reply, model, message_id, usage), fault),
                headers={**headers, "content-type": "text/event-stream; charset=utf-8"},
                interval=self.stream_interval,
            )
        if fault is not None and fault.malformed:
            return Reply(200, MALFORMED_BODY, {**headers, "content-type": _JSON})
        return Reply.json(message(reply, model, message_id, usage), headers=headers)

    def _count_tokens(self, body: dict[str, Any], fault: Fault | None, request_id: str) -> Reply:
        check_model(body, self.models)
        check_messages(body)
        if fault is not None and fault.malformed:
            return Reply(
                200, b'{"input_tokens": ', {"content-type": _JSON, "request-id": request_id}
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
            raise Reject(400, "limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise Reject(400, "limit: Input should be between 1 and 1000")
        start = 0
        if "after_id" in params:
            if params["after_id"] not in self.models:
                raise Reject(400, f"after_id: unknown model {params['after_id']}")
            start = self.models.index(params["after_id"]) + 1
        page = self.models[start : start + limit]
        if fault is not None and fault.malformed:
            return Reply(200, b'{"data": [', {"content-type": _JSON, "request-id": request_id})
        body = {
            "data": [{**self._model_info(m), "max_input_tokens": self.context_window} for m in page],
            "has_more": start + limit < len(self.models),
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
        return Reply.json(body, headers={"request-id": request_id})

    def _get_model(self, model: str, fault: Fault | None, request_id: str) -> Reply:
        if model not in self.models:
            raise Reject(404, f"model: {model}")
        return Reply.json(self._model_info(model), headers={"request-id": request_id})


@asynccontextmanager
async def open_anthropic_server(**options: Any) -> AsyncIterator[AnthropicServer]:
    """Run an :class:`AnthropicServer` (constructor ``options``) on 127.0.0.1 for the block."""
    async with serve(AnthropicServer(**options)) as server:
        yield server
