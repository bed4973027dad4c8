"""A loopback server speaking Hugging Face TGI's wire format.

Endpoints: ``/info``, ``/health``, ``/tokenize``, ``/generate``, ``/generate_stream`` (SSE token events),
``/v1/chat/completions`` (OpenAI-shaped, SSE with ``[DONE]``) and ``/v1/models``. Errors use TGI's
``{"error", "error_type"}`` shape; request validation mirrors TGI's (token limits from ``/info``).
Body deserialisation failures answer as TGI's axum router does: 422/400 with a plain-text message.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs

from ..messages import FinishReason
from ._script import ReplyScript, ScriptedReply, split_text
from ._server import Fault, HTTPRequest, LoopbackServer, Reply, StreamReply, serve_loopback
from ._tgi_rules import content_text, error, json_reply, read_body, text, tokenize, validate

__all__ = ["TGIServer", "open_tgi_server"]

VERSION = "3.3.6-dev0"
SSE_HEADERS = {"content-type": "text/event-stream", "x-accel-buffering": "no"}
_DEFAULT_ERROR_TYPES = {422: "validation", 424: "generation", 429: "overloaded", 500: "incomplete_generation"}


def _event(obj: Any) -> bytes:
    # TGI's axum SSE writes "data:" without the optional space.
    return b"data:" + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


@attrs.define
class _Job:
    """A validated generation: the reply to render and its token counts."""

    reply: ScriptedReply
    input_tokens: int
    pieces: list[str]
    eos: bool = True

    @property
    def output_tokens(self) -> int:
        """Generated tokens; the EOS token counts when the model stopped on its own."""
        c = self.reply.completion_tokens
        return c if c is not None else len([p for p in self.pieces if p]) + int(self.eos)


class TGIServer:
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
        self.script = ReplyScript()
        self.server = LoopbackServer(self._app)
        self.api_key = api_key
        self.model_id = model_id
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.pipeline_tag = pipeline_tag
        self.tokenizer = tokenizer
        self.healthy = True

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return self.server.url

    @property
    def requests(self) -> Any:
        """Recorded requests (most recent last)."""
        return self.server.requests

    def inject(self, *faults: Fault) -> None:
        """Queue faults for the next matching requests."""
        self.server.inject(*faults)

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
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error(401, "Unauthorized", "authentication")
        if fault is not None and fault.status is not None:
            headers = dict(fault.headers)
            if fault.status == 429:
                headers = {
                    "retry-after": "1",
                    "x-ratelimit-limit-requests": "128",
                    "x-ratelimit-remaining-requests": "0",
                    **headers,
                }
            error_type = fault.error_type or _DEFAULT_ERROR_TYPES.get(fault.status, "error")
            return error(fault.status, fault.message, error_type, headers)
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
        handler = routes.get((request.method, request.path))
        if handler is None:
            if any(path == request.path for _, path in routes):
                return Reply(405, b"", {"allow": "GET, POST"})
            return Reply(404, b"")
        return await handler(request, malformed)

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
        job = _Job(reply, checked, split_text(reply.text, reply.chunk_size), eos=raw != "length")
        headers = self._timing_headers(job)
        if request.path == "/generate_stream":
            return self._generate_events(job, raw, malformed, headers)
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

    def _generate_events(self, job: _Job, raw: str, malformed: bool, headers: dict[str, str]) -> StreamReply:
        events = []
        pieces = [p for p in job.pieces if p]
        tokens = [{"id": i + 10, "text": p, "logprob": -0.25, "special": False} for i, p in enumerate(pieces)]
        if job.eos or not tokens:  # the model stopped on its own: the EOS token ends the stream
            tokens.append({"id": 2, "text": "</s>", "logprob": -0.01, "special": True})
        for index, token in enumerate(tokens, 1):
            last = index == len(tokens)
            details = {
                "finish_reason": raw,
                "generated_tokens": job.output_tokens,
                "seed": None,
                "input_length": job.input_tokens,
            }
            events.append(
                _event(
                    {
                        "index": index,
                        "token": token,
                        "top_tokens": None,
                        "generated_text": job.reply.text if last else None,
                        "details": details if last else None,
                    }
                )
            )
        if malformed:
            events.insert(1, b"data:{not json\n\n")
        return StreamReply(events, headers={**SSE_HEADERS, **headers})

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
        texts = [content_text(m.get("content")) for m in messages]
        prompt = " ".join(texts)
        checked = validate(
            prompt, max_new=body.get("max_tokens"), stop=body.get("stop"), generate=False, **self._limits()
        )
        if isinstance(checked, Reply):
            return checked
        users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
        reply = self.script.next(users[-1] if users else "")
        job = _Job(reply, checked, split_text(reply.text, reply.chunk_size))
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
            return self._chat_events(job, raw, head, usage if include_usage else None, malformed)
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

    def _chat_events(
        self, job: _Job, raw: str, head: dict[str, Any], usage: dict[str, int] | None, malformed: bool
    ) -> StreamReply:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _event({"object": "chat.completion.chunk", **head, "choices": [choice], "usage": None})

        events = [chunk({"role": "assistant", "content": p, "tool_call_id": None}) for p in job.pieces if p]
        for index, call in enumerate(job.reply.tool_calls):
            for n, piece in enumerate(split_text(call.arguments, job.reply.chunk_size)):
                function = {"name": call.name if n == 0 else None, "arguments": piece}
                tool = {
                    "index": index,
                    "id": "" if n else str(index),
                    "type": "function",
                    "function": function,
                }
                events.append(chunk({"role": "assistant", "tool_calls": [tool]}))
        events.append(chunk({"role": "assistant", "content": "", "tool_call_id": None}, raw))
        if usage is not None:
            events.append(_event({"object": "chat.completion.chunk", **head, "choices": [], "usage": usage}))
        if malformed:
            events.insert(1, b"data:{not json\n\n")
        events.append(_event(b"[DONE]"))
        return StreamReply(events, headers=SSE_HEADERS)

    def _limits(self) -> dict[str, int]:
        return {"max_input_tokens": self.max_input_tokens, "max_total_tokens": self.max_total_tokens}

    @staticmethod
    def _timing_headers(job: _Job) -> dict[str, str]:
        return {
            "x-compute-type": "gpu+optimized",
            "x-compute-time": "0.05",
            "x-total-time": "50",
            "x-validation-time": "1",
            "x-queue-time": "1",
            "x-inference-time": "48",
            "x-time-per-token": "9",
            "x-prompt-tokens": str(job.input_tokens),
        }


@asynccontextmanager
async def open_tgi_server(**options: Any) -> AsyncIterator[TGIServer]:
    """Run a :class:`TGIServer` on 127.0.0.1 for the duration of the block."""
    server = TGIServer(**options)
    async with serve_loopback(server.server):
        yield server
