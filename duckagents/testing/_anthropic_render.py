"""How the loopback Anthropic server renders a scripted reply: a ``message`` object or its SSE events.

Also how a :class:`~duckagents.testing._server.Fault` changes a stream: garbage after ``message_start``,
or an ``error`` event after N events (see :mod:`duckagents.testing._anthropic`).
"""

from __future__ import annotations

import json
from typing import Any

from ..messages import FinishReason
from ._anthropic_rules import Reject
from ._script import ScriptedReply, split_text
from ._server import Fault, sse

_STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.REFUSAL: "refusal",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.OTHER: "pause_turn",
}
MALFORMED_BODY = b'{"id": "msg_broken", "type": "message", "content": ['
_GARBAGE_EVENT = b"event: content_block_delta\ndata: {this is not json\n\n"


def stop_reason(reply: ScriptedReply) -> str:
    """The ``stop_reason`` of ``reply``."""
    return reply.finish_name(_STOP_REASONS, tool_calls="tool_use")


def _tool_input(arguments: str) -> Any:
    # A script may hold broken arguments on purpose; send them as a string rather than crash the server.
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return arguments


def message(reply: ScriptedReply, model: str, message_id: str, usage: dict[str, int]) -> dict[str, Any]:
    """The ``message`` object of a non-streaming reply."""
    content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    content += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments)}
        for c in reply.tool_calls
    ]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(reply),
        "stop_sequence": None,
        "usage": {**usage, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


def stream_events(reply: ScriptedReply, model: str, message_id: str, usage: dict[str, int]) -> list[bytes]:
    """The SSE events of a streamed reply, ``message_start`` to ``message_stop``."""
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
        blocks.append(({"type": "text", "text": ""}, "text_delta", split_text(reply.text, reply.chunk_size)))
    for call in reply.tool_calls:
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        # Like the API: an empty fragment first, then the JSON in pieces.
        blocks.append((block, "input_json_delta", ["", *split_text(call.arguments, reply.chunk_size)]))
    for index, (block, delta_type, pieces) in enumerate(blocks):
        opening = {"type": "content_block_start", "index": index, "content_block": block}
        events.append(sse("content_block_start", opening))
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
                "delta": {"stop_reason": stop_reason(reply), "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


def in_stream_error(fault: Fault) -> bool:
    """True when ``fault`` asks for an ``error`` event inside a stream rather than an error reply."""
    return (fault.cut_after is not None and fault.status is not None) or (
        fault.status is None and fault.error_type is not None
    )


def faulted(events: list[bytes], fault: Fault | None) -> list[bytes]:
    """``events`` as ``fault`` changes them (unchanged without one)."""
    if fault is None:
        return events
    if fault.malformed:
        return [events[0], _GARBAGE_EVENT, *events[1:]]
    if not in_stream_error(fault):
        return events
    error_type = fault.error_type or Reject(fault.status or 500, fault.message).error_type
    error = sse("error", {"type": "error", "error": {"type": error_type, "message": fault.message}})
    # Exactly N pieces, the last carrying the error event, so the server's cut_after never fires.
    n = min(max(1, fault.cut_after or 1), len(events) - 1)
    return [*events[: n - 1], events[n - 1] + error]
