"""A loopback server speaking Hugging Face TGI's wire format.

Endpoints: ``/info``, ``/health``, ``/tokenize``, ``/generate``, ``/generate_stream`` (SSE token events),
``/v1/chat/completions`` (OpenAI-shaped, SSE with ``[DONE]``) and ``/v1/models``. Errors use TGI's
``{"error", "error_type"}`` shape; request validation mirrors TGI's (token limits from ``/info``).
Body deserialisation failures answer as TGI's axum router does: 422/400 with a plain-text message.
A chat message is read as TGI reads it (its ``MessageBody`` is ``content`` or ``tool_calls``, tried in
that order, so a message with both keeps its text and loses its calls); :attr:`TGIServer.conversations`
records each chat as the server understood it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..messages import FinishReason
from ._common import WireServer, bearer_refused, fault_headers, route, serve
from ._script import split_text
from ._server import Fault, HTTPRequest, LoopbackServer, Reply, StreamReply
from ._tgi_render import Job, chat_events, generate_events, timing_headers
from ._tgi_rules import content_text, error, json_reply, read_body, text, tokenize, understand, validate

__all__ = ["TGIServer", "open_tgi_server"]

VERSION = "3.3.6-dev0"
_DEFAULT_ERROR_TYPES = {422: "validation", 424: "generation", 429: "overloaded", 500: "incomplete_generation"}
_RATE_LIMITED = {
    "retry-after": "1",
    "x-ratelimit-limit-requests": "128",
    "x-ratelimit-remaining-requests": "0",
}
_NOT_ALLOWED = Reply(405, b"", {"allow": "GET, POST"})
_NOT_FOUND = Reply(404, b"")


class TGIServer(WireServer):
    """The TGI wire server app; ``script`` scripts replies, ``inject`` queues faults, ``healthy`` flips
    ``/health``, ``tokenizer=False`` makes ``/tokenize`` answer 404 like a model without a fast tokenizer."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        model_id: str = "HuggingFaceH4/zephyr-7b-beta",
        max_input_tokens: int = 1024,
        max_total_tokens: int = 2048,
        max_concurrent_requests: int = 128,
        pipeline_tag: str = "text-generation",
        tokenizer: bool = True,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.model_id = model_id
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.pipeline_tag = pipeline_tag
        self.tokenizer = tokenizer
        self.healthy = True
        #: The messages of each chat request as TGI understood them (most recent last, bounded).
        self.conversations: deque[list[dict[str, Any]]] = deque(maxlen=64)

    @property
    def server(self) -> LoopbackServer:
        """The loopback server under this app (an older name of :attr:`loopback`)."""
        return self.loopback

    def info(self) -> dict[str, Any]:
        """The ``/info`` object."""
        return {
            "model_id": self.model_id,
            "model_sha": "b70e0c9a2d9e14bd1e812d3c398e5f313e93b473",
            "model_pipeline_tag": self.pipeline_tag,
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": VERSION,
            "sha": None,
            "docker_label": None,
        }

    # --- dispatch -------------------------------------------------------------------------------------

    async def _app(self, request: HTTPRequest, fault: Fault | None) -> Reply | StreamReply:
        if bearer_refused(request, self.api_key):
            return error(401, "Unauthorized", "authentication")
        if fault is not None and fault.status is not None:
            error_type = fault.error_type or _DEFAULT_ERROR_TYPES.get(fault.status, "error")
            return error(fault.status, fault.message, error_type, fault_headers(fault, _RATE_LIMITED))
        malformed = fault is not None and fault.malformed
        routes = {
            ("GET", "/info"): self._info,
            ("GET", "/health"): self._health,
            ("GET", "/v1/models"): self._models,
            ("POST", "/tokenize"): self._tokenize,
            ("POST", "/generate"): self._generate,
            ("POST", "/generate_stream"): self._generate,
            ("POST", "/v1/chat/completions"): self._chat,
        }
        return await route(routes, request, malformed, not_allowed=_NOT_ALLOWED, not_found=_NOT_FOUND)

    async def _info(self, request: HTTPRequest, malformed: bool) -> Reply:
        return json_reply(self.info(), malformed)

    async def _health(self, request: HTTPRequest, malformed: bool) -> Reply:
        return Reply(200) if self.healthy else error(503, "unhealthy", "healthcheck")

    async def _models(self, request: HTTPRequest, malformed: bool) -> Reply:
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}
        return json_reply({"object": "list", "data": [model]}, malformed)

    async def _tokenize(self, request: HTTPRequest, malformed: bool) -> Reply:
        body = read_body(request, "inputs")
        if isinstance(body, Reply):
            return body
        if not self.tokenizer:
            return error(404, "No fast tokenizer or tokenizer.json for this model", "no fast tokenizer")
        return json_reply(tokenize(str(body["inputs"])), malformed)

    # --- generation ---------------------------------------------------------------------------------

    async def _generate(self, request: HTTPRequest, malformed: bool) -> Reply | StreamReply:
        body = read_body(request, "inputs")
        if isinstance(body, Reply):
            return body
        params = body.get("parameters") or {}
        prompt = str(body["inputs"])
        checked = validate(
            prompt,
            max_new=params.get("max_new_tokens"),
            temperature=params.get("temperature"),
            stop=params.get("stop"),
            generate=True,
            **self._limits(),
        )
        if isinstance(checked, Reply):
            return checked
        reply = self.script.next(prompt)
        raw = reply.raw_finish_reason or (
            "length" if reply.finish_reason is FinishReason.LENGTH else "eos_token"
        )
        job = Job(reply, checked, split_text(reply.text, reply.chunk_size), eos=raw != "length")
        headers = timing_headers(job)
        if request.path == "/generate_stream":
            return generate_events(job, raw, malformed, headers)
        details = {
            "finish_reason": raw,
            "generated_tokens": job.output_tokens,
            "seed": None,
            "prefill": [],
            "tokens": [
                {"id": i, "text": p, "logprob": -0.25, "special": False} for i, p in enumerate(job.pieces)
            ],
        }
        out: dict[str, Any] = {"generated_text": reply.text}
        if params.get("details"):
            out["details"] = details
        return json_reply(out, malformed, {**headers, "x-generated-tokens": str(job.output_tokens)})

    async def _chat(self, request: HTTPRequest, malformed: bool) -> Reply | StreamReply:
        body = read_body(request, "messages")
        if isinstance(body, Reply):
            return body
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            return text(
                422,
                "Failed to deserialize the JSON body into the target type: messages: missing field `role`",
            )
        understood = understand(messages)
        if isinstance(understood, Reply):
            return understood
        self.conversations.append(understood)
        texts = [content_text(m.get("content")) for m in understood]
        prompt = " ".join(texts)
        checked = validate(
            prompt, max_new=body.get("max_tokens"), stop=body.get("stop"), generate=False, **self._limits()
        )
        if isinstance(checked, Reply):
            return checked
        users = [t for m, t in zip(understood, texts, strict=True) if m.get("role") == "user"]
        reply = self.script.next(users[-1] if users else "")
        job = Job(reply, checked, split_text(reply.text, reply.chunk_size))
        # TGI formats its EOS finish as "stop" in chat, tool calls included (they end on EOS too).
        raw = reply.raw_finish_reason or ("length" if reply.finish_reason is FinishReason.LENGTH else "stop")
        head = {
            "id": "",
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": f"{VERSION}-native",
        }
        usage = {
            "prompt_tokens": job.input_tokens,
            "completion_tokens": job.output_tokens,
            "total_tokens": job.input_tokens + job.output_tokens,
        }
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return chat_events(job, raw, head, usage if include_usage else None, malformed)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message = {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": str(i),
                        "type": "function",
                        "function": {"description": None, "name": c.name, "arguments": c.arguments},
                    }
                    for i, c in enumerate(reply.tool_calls)
                ],
            }
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": raw}
        return json_reply(
            {"object": "chat.completion", **head, "choices": [choice], "usage": usage}, malformed
        )

    def _limits(self) -> dict[str, int]:
        return {"max_input_tokens": self.max_input_tokens, "max_total_tokens": self.max_total_tokens}


@asynccontextmanager
async def open_tgi_server(**options: Any) -> AsyncIterator[TGIServer]:
    """Run a :class:`TGIServer` on 127.0.0.1 for the duration of the block."""
    async with serve(TGIServer(**options)) as server:
        yield server
