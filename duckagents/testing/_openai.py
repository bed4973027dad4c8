"""A loopback OpenAI Chat Completions server: the real wire format, scripted replies, fault injection.

Serves ``POST /v1/chat/completions`` (JSON or SSE stream with ``include_usage``), ``GET /v1/models`` and
``GET /v1/models/{id}`` with OpenAI's headers (``x-request-id``, ``x-ratelimit-*``) and error bodies
(``{"error": {"message", "type", "param", "code"}}``), validating requests the way the API does where it
is cheap. Point any OpenAI client at :attr:`OpenAIServer.base_url`::

    async with open_openai_server(api_key="sk-test") as server:
        server.script.push(ScriptedReply(text="hi"))
        server.inject(Fault(status=429))
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ..messages import FinishReason, ToolCall
from ._common import WireServer, serve
from ._openai_errors import APIError, error_for_fault
from ._openai_rules import RequestFacts, validate_chat_request
from ._script import ScriptedReply, estimate_prompt_tokens, split_text
from ._server import Fault, HTTPRequest, LoopbackServer, Reply, StreamReply, sse

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-3.5-turbo", "o3-mini", "o4-mini", "gpt-5",
)
_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.REFUSAL: "stop",  # a refusal is a normal stop with the ``refusal`` field set
    FinishReason.OTHER: "stop",
}
_JSON = "application/json"
#: Arrival times of chat completions kept (:attr:`OpenAIServer.served_at`).
MAX_SERVED_TIMES = 100_000
_MALFORMED_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"message": {"conte'
_GARBAGE_EVENT = b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": \n\n'


@attrs.frozen
class OpenAIRateLimits:
    """What the ``x-ratelimit-*`` headers announce; ``remaining`` counts down as requests arrive."""

    limit_requests: int = 10_000
    limit_tokens: int = 2_000_000
    reset_requests: str = "6ms"
    reset_tokens: str = "0s"


class _Bucket:
    """A token bucket of ``capacity`` requests refilled over ``seconds``."""

    def __init__(self, capacity: int, seconds: float) -> None:
        if capacity < 1 or not seconds > 0:
            raise ValueError("enforce is (requests >= 1, seconds > 0)")
        self.capacity = capacity
        self.rate = capacity / seconds
        self.level = float(capacity)
        self.since: float | None = None

    def take(self, now: float) -> float:
        """Take one request: 0 when admitted, else the seconds until one would be."""
        if self.since is not None:
            self.level = min(self.capacity, self.level + (now - self.since) * self.rate)
        self.since = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


class OpenAIServer(WireServer):
    """The app; start it with :func:`open_openai_server`. ``models=None`` accepts any model name."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: Sequence[str] | None = DEFAULT_MODELS,
        context_window: int = 128_000,
        rate_limits: OpenAIRateLimits = OpenAIRateLimits(),
        stream_interval: float = 0.0,
        enforce: tuple[int, float] | None = None,
    ) -> None:
        super().__init__()
        #: The server's own limit on chat completions, when given as ``(requests, seconds)``: a token
        #: bucket of ``requests`` refilled over ``seconds`` (Trio clock; its own code, so that it checks
        #: the clients' limiting independently), and what lies beyond it gets the API's 429
        #: ``rate_limit_exceeded`` with a ``retry-after``.
        self.enforced = None if enforce is None else _Bucket(*enforce)
        #: When each chat completion it answered arrived (Trio clock), most recent last (bounded).
        self.served_at: deque[float] = deque(maxlen=MAX_SERVED_TIMES)
        #: Chat completions refused with 429 because of :attr:`enforced`.
        self.refused = 0
        self.api_key = api_key
        self.models = tuple(models) if models is not None else None
        self.context_window = context_window
        self.rate_limits = rate_limits
        self.stream_interval = stream_interval
        self.tokens_used = 0
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client: :attr:`url` (the server root) + ``/v1``."""
        return self.url + "/v1"

    @property
    def http(self) -> LoopbackServer:
        """The loopback server under this app (an older name of :attr:`loopback`)."""
        return self.loopback

    # --- dispatch --------------------------------------------------------------------------------

    async def _app(self, request: HTTPRequest, fault: Fault | None) -> Reply | StreamReply:
        n = next(self._ids)
        headers = {
            "x-request-id": f"req_{n:032x}",
            "openai-version": "2020-10-01",
            "openai-organization": "user-duckagents",
            "openai-processing-ms": "1",
            **self._rate_headers(),
        }
        try:
            if fault is not None and fault.status is not None:
                raise error_for_fault(fault, self.context_window)
            self._check_auth(request)
            if request.method == "POST" and request.path == "/v1/chat/completions":
                self._admit()
            reply = self._route(request, n, fault)
        except (TypeError, AttributeError, KeyError, ValueError):
            # A body of the wrong shape somewhere the rules do not look: the API's generic schema refusal.
            err = APIError(400, "Invalid request body: a parameter has the wrong type.")
            reply = Reply.json({"error": err.body()}, err.status)
        except APIError as err:
            reply = Reply.json({"error": err.body()}, err.status, {**err.headers})
        extra = fault.headers if fault is not None else {}
        return attrs.evolve(reply, headers={**headers, **reply.headers, **extra})

    def _rate_headers(self) -> dict[str, str]:
        limits, served = self.rate_limits, self.loopback.request_count
        return {
            "x-ratelimit-limit-requests": str(limits.limit_requests),
            "x-ratelimit-limit-tokens": str(limits.limit_tokens),
            "x-ratelimit-remaining-requests": str(max(0, limits.limit_requests - served)),
            "x-ratelimit-remaining-tokens": str(max(0, limits.limit_tokens - self.tokens_used)),
            "x-ratelimit-reset-requests": limits.reset_requests,
            "x-ratelimit-reset-tokens": limits.reset_tokens,
        }

    def _admit(self) -> None:
        """The server's own request limit (``enforce``): beyond it, the API's 429."""
        now = trio.current_time()
        if self.enforced is not None:
            wait = self.enforced.take(now)
            if wait > 0:
                self.refused += 1
                raise APIError(
                    429,
                    "Rate limit reached for requests. Please try again later.",
                    type="requests",
                    code="rate_limit_exceeded",
                    headers={"retry-after": f"{max(1, math.ceil(wait))}"},
                )
        self.served_at.append(now)

    def _check_auth(self, request: HTTPRequest) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not given[7:].strip():
            raise APIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
                "https://platform.openai.com/account/api-keys.",
            )
        key = given[7:].strip()
        if key != self.api_key:
            masked = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}" if len(key) > 8 else "***"
            raise APIError(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _route(self, request: HTTPRequest, n: int, fault: Fault | None) -> Reply | StreamReply:
        malformed = fault is not None and fault.malformed
        if request.method == "POST" and request.path == "/v1/chat/completions":
            return self._chat(request, n, malformed)
        if request.method == "GET" and request.path.startswith("/v1/models"):
            if malformed:
                return Reply(200, b'{"object": "list", "data": [{"id": ', {"content-type": _JSON})
            return self._models(request.path.removeprefix("/v1/models").strip("/"))
        raise APIError(404, f"Invalid URL ({request.method} {request.path})")

    def _models(self, model_id: str) -> Reply:
        def entry(name: str) -> dict[str, Any]:
            owner = "system" if name.startswith(("o", "gpt-4.1", "gpt-5")) else "openai"
            return {"id": name, "object": "model", "created": 1_715_367_049, "owned_by": owner}

        known = self.models if self.models is not None else DEFAULT_MODELS
        if not model_id:
            return Reply.json({"object": "list", "data": [entry(m) for m in known]})
        if self.models is not None and model_id not in self.models:
            raise APIError.model_not_found(model_id)
        return Reply.json(entry(model_id))

    # --- chat completions ------------------------------------------------------------------------

    def _chat(self, request: HTTPRequest, n: int, malformed: bool) -> Reply | StreamReply:
        facts = validate_chat_request(request.body, self.models, self.context_window)
        reply = self.script.next(facts.last_user_text, json_mode=facts.json_mode)
        if facts.max_output is not None and not reply.tool_calls:
            words = reply.text.split(" ")
            if len(words) > facts.max_output:  # stand-in tokenizer: a word is a token
                reply = attrs.evolve(reply, text=" ".join(words[: facts.max_output]),
                                     finish_reason=FinishReason.LENGTH)
        usage = self._usage(reply, facts)
        head = {"id": f"chatcmpl-{n:024x}", "created": int(time.time()), "model": facts.model,
                "system_fingerprint": "fp_duckagents"}
        if facts.stream:
            pieces = self._chunks(head, reply, usage, facts.include_usage)
            if malformed:
                pieces.insert(1, _GARBAGE_EVENT)
            headers = {"content-type": "text/event-stream; charset=utf-8"}
            return StreamReply(pieces, headers=headers, interval=self.stream_interval)
        if malformed:
            return Reply(200, _MALFORMED_BODY, {"content-type": _JSON})
        refused = reply.finish_reason is FinishReason.REFUSAL
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if refused or (reply.tool_calls and not reply.text) else reply.text,
            "refusal": reply.text if refused else None,
            "annotations": [],
        }
        if reply.tool_calls and reply.tool_call_style == "function_call":
            call = reply.tool_calls[0]
            message["function_call"] = {"name": call.name, "arguments": call.arguments}
        elif reply.tool_calls:
            message["tool_calls"] = [_tool_call(c, reply.tool_call_style) for c in reply.tool_calls]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _raw_finish(reply)}
        body = {**head, "object": "chat.completion", "choices": [choice], "usage": usage,
                "service_tier": "default"}
        return Reply.json(body)

    def _usage(self, reply: ScriptedReply, facts: RequestFacts) -> dict[str, Any]:
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else facts.prompt_tokens
        completion = reply.completion_tokens
        if completion is None:
            produced = reply.text + "".join(c.name + " " + c.arguments for c in reply.tool_calls)
            completion = estimate_prompt_tokens(produced)
        self.tokens_used += prompt + completion
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }

    def _chunks(
        self, head: dict[str, Any], reply: ScriptedReply, usage: dict[str, Any], include_usage: bool
    ) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj: dict[str, Any] = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            if include_usage:
                obj["usage"] = None  # every chunk carries a null usage until the last one
            return sse(None, obj)

        refused = reply.finish_reason is FinishReason.REFUSAL
        field = "refusal" if refused else "content"
        silent = refused or (not reply.text and bool(reply.tool_calls))
        first = {"role": "assistant", "content": None if silent else "", "refusal": None}
        pieces = [chunk(first)]
        if reply.text:
            pieces += [chunk({field: piece}) for piece in split_text(reply.text, reply.chunk_size)]
        style = reply.tool_call_style
        for i, call in enumerate(reply.tool_calls[:1] if style == "function_call" else reply.tool_calls):
            pieces += [chunk(delta) for delta in _tool_call_deltas(i, call, style, reply.chunk_size)]
        pieces.append(chunk({}, _raw_finish(reply)))
        if include_usage:
            last = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            pieces.append(sse(None, last))
        pieces.append(b"data: [DONE]\n\n")
        return pieces


def _raw_finish(reply: ScriptedReply) -> str:
    legacy = reply.tool_call_style == "function_call"
    return reply.finish_name(_FINISH, tool_calls="function_call" if legacy else "tool_calls")


def _tool_call(call: ToolCall, style: str) -> dict[str, Any]:
    """A tool call of a reply message: a ``function`` call, or a ``custom`` one with raw ``input``."""
    if style == "custom":
        return {"id": call.id, "type": "custom", "custom": {"name": call.name, "input": call.arguments}}
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _tool_call_deltas(index: int, call: ToolCall, style: str, size: int) -> list[dict[str, Any]]:
    """The stream deltas of one tool call: an opening fragment with id and name, then argument pieces."""
    pieces = split_text(call.arguments, size)
    if style == "function_call":  # the deprecated shape: one call, no id, no index
        return [{"function_call": {"name": call.name, "arguments": ""}}] + [
            {"function_call": {"arguments": piece}} for piece in pieces
        ]
    field, key = ("custom", "input") if style == "custom" else ("function", "arguments")
    opening = {"index": index, "id": call.id, "type": style, field: {"name": call.name, key: ""}}
    return [{"tool_calls": [opening]}] + [
        {"tool_calls": [{"index": index, field: {key: piece}}]} for piece in pieces
    ]


@asynccontextmanager
async def open_openai_server(**options: Any) -> AsyncIterator[OpenAIServer]:
    """Run an :class:`OpenAIServer` on 127.0.0.1 (free port) for the duration of the block."""
    async with serve(OpenAIServer(**options)) as server:
        yield server


__all__ = ["DEFAULT_MODELS", "OpenAIRateLimits", "OpenAIServer", "open_openai_server"]
