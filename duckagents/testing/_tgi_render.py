"""How the loopback TGI server renders a validated generation: token events, chat chunks and headers.

TGI's axum SSE writes ``data:`` without the optional space; every stream is a :class:`StreamReply`.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from ._script import ScriptedReply, split_text
from ._server import StreamReply

SSE_HEADERS = {"content-type": "text/event-stream", "x-accel-buffering": "no"}
_GARBAGE_EVENT = b"data:{not json\n\n"


def event(obj: Any) -> bytes:
    """One SSE event the way TGI writes it (``bytes`` are sent as they are, e.g. ``[DONE]``)."""
    return b"data:" + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


@attrs.define
class Job:
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


def timing_headers(job: Job) -> dict[str, str]:
    """The ``x-*`` timing headers TGI puts on ``/generate`` replies."""
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


def generate_events(job: Job, raw: str, malformed: bool, headers: dict[str, str]) -> StreamReply:
    """``/generate_stream``: one event per token; the last carries ``generated_text`` and details."""
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
            event(
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
        events.insert(1, _GARBAGE_EVENT)
    return StreamReply(events, headers={**SSE_HEADERS, **headers})


def chat_events(
    job: Job, raw: str, head: dict[str, Any], usage: dict[str, int] | None, malformed: bool
) -> StreamReply:
    """``/v1/chat/completions`` streamed: OpenAI-shaped chunks, then ``[DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return event({"object": "chat.completion.chunk", **head, "choices": [choice], "usage": None})

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
        events.append(event({"object": "chat.completion.chunk", **head, "choices": [], "usage": usage}))
    if malformed:
        events.insert(1, _GARBAGE_EVENT)
    events.append(event(b"[DONE]"))
    return StreamReply(events, headers=SSE_HEADERS)
