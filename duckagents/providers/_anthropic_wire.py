"""The Anthropic Messages API wire format, decoding side: the reply message and the stream events.

Pure functions and one small state machine (:class:`StreamAssembler`); no I/O, so every edge case is
testable without a socket. Request encoding is in :mod:`._anthropic_request`, rate-limit headers and
error replies in :mod:`._anthropic_errors`; :mod:`duckagents.providers._anthropic` does the HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from ..messages import FinishReason, ToolCall, Usage
from ..signals import ToolCallDelta
from ._base import Completion, RateLimitInfo, StreamDelta

FINISH_REASONS: dict[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.REFUSAL,
    "pause_turn": FinishReason.OTHER,
}


class WireFormatError(ValueError):
    """A response body or stream event does not have the documented shape."""


class StreamErrorEvent(Exception):
    """The upstream sent an ``error`` event in the middle of a stream; ``body`` is its data."""

    def __init__(self, body: Any) -> None:
        super().__init__("error event in stream")
        self.body = body


# --- response decoding ---------------------------------------------------------------------------


def _count(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WireFormatError(f"usage.{key} is not a non-negative integer: {value!r}")
    return value


def input_tokens(usage: Mapping[str, Any]) -> int:
    """All input tokens of a ``usage`` object: fresh plus cache writes plus cache reads."""
    return sum(
        _count(usage, key)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def finish_reason(stop_reason: str | None) -> FinishReason:
    """Our finish reason for an Anthropic ``stop_reason`` (unknown or missing -> OTHER)."""
    return FINISH_REASONS.get(stop_reason or "", FinishReason.OTHER)


def decode_message(body: Any, *, model: str, rate_limit: RateLimitInfo | None) -> Completion:
    """A non-streaming ``message`` object as a :class:`Completion`."""
    if (
        not isinstance(body, dict)
        or body.get("type") != "message"
        or not isinstance(body.get("content"), list)
    ):
        raise WireFormatError("response is not a message object with a content list")
    text: list[str] = []
    calls: list[ToolCall] = []
    for i, block in enumerate(body["content"]):
        if not isinstance(block, dict):
            raise WireFormatError(f"content[{i}] is not an object")
        if block.get("type") == "text":
            if not isinstance(block.get("text"), str):
                raise WireFormatError(f"content[{i}].text is not a string")
            text.append(block["text"])
        elif block.get("type") == "tool_use":
            ident, name, args = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(ident, str) or not isinstance(name, str) or not isinstance(args, dict):
                raise WireFormatError(f"content[{i}] is not a tool_use block with id, name and input")
            calls.append(ToolCall(ident, name, json.dumps(args)))
    usage = body.get("usage") or {}
    if not isinstance(usage, dict):
        raise WireFormatError("usage is not an object")
    stop = body.get("stop_reason")
    return Completion(
        model=str(body.get("model") or model),
        content="".join(text),
        tool_calls=tuple(calls),
        finish_reason=finish_reason(stop),
        usage=Usage(input_tokens(usage), _count(usage, "output_tokens")),
        rate_limit=rate_limit,
        raw_finish_reason=stop if isinstance(stop, str) else None,
    )


# --- streaming -----------------------------------------------------------------------------------


@attrs.define
class _Block:
    kind: str  # "text" | "tool_use" | anything else we pass over (thinking, server tools...)
    tool_index: int = -1
    id: str = ""
    name: str = ""
    initial_input: dict[str, Any] = attrs.field(factory=dict)
    arguments: list[str] = attrs.field(factory=list)

    def arguments_json(self) -> str:
        joined = "".join(self.arguments)
        return joined if joined else json.dumps(self.initial_input)


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], event: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise WireFormatError(f"{event} event without a valid {key!r}")
    return value


class StreamAssembler:
    """Folds the Messages stream events into :class:`StreamDelta` items and the final completion.

    Tool-call fragments get dense indexes (0, 1, ...) in the order tool_use blocks start, whatever
    their content-block index.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.finished = False
        self._blocks: dict[int, _Block] = {}
        self._tools: list[_Block] = []
        self._text: list[str] = []
        self._input_tokens = 0
        self._output_tokens = 0
        self._stop_reason: str | None = None

    def feed(self, event: str, data: Any) -> list[StreamDelta]:
        """Consume one event (``event`` is the SSE event name, or the data's ``type`` when absent)."""
        if not isinstance(data, dict):
            raise WireFormatError(f"{event} event data is not an object")
        if event == "message" and isinstance(data.get("type"), str):
            event = data["type"]
        if event == "error":
            raise StreamErrorEvent(data)
        if event == "ping":
            return []
        if event == "message_start":
            return self._message_start(data)
        if not self.started:
            raise WireFormatError(f"{event} event before message_start")
        if self.finished:
            return []  # read on to the end of the body so the connection is released cleanly
        if event == "content_block_start":
            return self._block_start(data)
        if event == "content_block_delta":
            return self._block_delta(data)
        if event == "content_block_stop":
            self._block(data, event)
            return []
        if event == "message_delta":
            self._message_delta(data)
        elif event == "message_stop":
            self.finished = True
        return []  # the API may add event types; ignoring unknown ones is its documented advice

    def _message_start(self, data: dict[str, Any]) -> list[StreamDelta]:
        if self.started:
            raise WireFormatError("second message_start event")
        message = _get(data, "message", dict, "message_start")
        usage = message.get("usage") or {}
        if not isinstance(usage, dict):
            raise WireFormatError("message_start usage is not an object")
        self.model = str(message.get("model") or self.model)
        self._input_tokens = input_tokens(usage)
        self._output_tokens = _count(usage, "output_tokens")
        self.started = True
        return []

    def _block(self, data: dict[str, Any], event: str) -> _Block:
        block = self._blocks.get(_get(data, "index", int, event))
        if block is None:
            raise WireFormatError(f"{event} event for a content block that never started")
        return block

    def _block_start(self, data: dict[str, Any]) -> list[StreamDelta]:
        index = _get(data, "index", int, "content_block_start")
        if index in self._blocks:
            raise WireFormatError(f"content block {index} started twice")
        start = _get(data, "content_block", dict, "content_block_start")
        kind = start.get("type")
        if kind == "text":
            self._blocks[index] = _Block("text")
            initial = start.get("text") or ""
            if not isinstance(initial, str):
                raise WireFormatError("content_block_start text is not a string")
            self._text.append(initial)
            return [StreamDelta(text=initial)] if initial else []
        if kind == "tool_use":
            ident = _get(start, "id", str, "content_block_start")
            name = _get(start, "name", str, "content_block_start")
            initial_input = start.get("input") or {}
            if not isinstance(initial_input, dict):
                raise WireFormatError("content_block_start tool_use input is not an object")
            block = _Block("tool_use", len(self._tools), ident, name, initial_input)
            self._blocks[index] = block
            self._tools.append(block)
            return [StreamDelta(tool_call=ToolCallDelta(block.tool_index, id=ident, name=name))]
        self._blocks[index] = _Block(str(kind))
        return []

    def _block_delta(self, data: dict[str, Any]) -> list[StreamDelta]:
        block = self._block(data, "content_block_delta")
        delta = _get(data, "delta", dict, "content_block_delta")
        kind = delta.get("type")
        if kind == "text_delta":
            text = _get(delta, "text", str, "text_delta")
            if block.kind != "text":
                raise WireFormatError(f"text_delta for a {block.kind} block")
            self._text.append(text)
            return [StreamDelta(text=text)] if text else []
        if kind == "input_json_delta":
            fragment = _get(delta, "partial_json", str, "input_json_delta")
            if block.kind != "tool_use":
                raise WireFormatError(f"input_json_delta for a {block.kind} block")
            block.arguments.append(fragment)
            if not fragment:
                return []
            return [StreamDelta(tool_call=ToolCallDelta(block.tool_index, arguments=fragment))]
        return []  # thinking, signature, citations: not part of our neutral model

    def _message_delta(self, data: dict[str, Any]) -> None:
        delta = _get(data, "delta", dict, "message_delta")
        stop = delta.get("stop_reason")
        if stop is not None:
            if not isinstance(stop, str):
                raise WireFormatError("message_delta stop_reason is not a string")
            self._stop_reason = stop
        usage = data.get("usage") or {}
        if not isinstance(usage, dict):
            raise WireFormatError("message_delta usage is not an object")
        # Counts on message_delta are cumulative: they replace, never add to, earlier ones.
        if usage.get("output_tokens") is not None:
            self._output_tokens = _count(usage, "output_tokens")
        if usage.get("input_tokens") is not None:
            self._input_tokens = input_tokens(usage)

    def completion(self, rate_limit: RateLimitInfo | None) -> Completion:
        """The assembled completion; raises :class:`WireFormatError` unless message_stop was seen."""
        if not self.finished:
            raise WireFormatError("stream ended before message_stop")
        calls = []
        for block in self._tools:
            arguments = block.arguments_json()
            try:
                if not isinstance(json.loads(arguments), dict):
                    raise ValueError
            except ValueError:
                raise WireFormatError(f"tool call {block.id!r} input is not a JSON object") from None
            calls.append(ToolCall(block.id, block.name, arguments))
        return Completion(
            model=self.model,
            content="".join(self._text),
            tool_calls=tuple(calls),
            finish_reason=finish_reason(self._stop_reason),
            usage=Usage(self._input_tokens, self._output_tokens),
            rate_limit=rate_limit,
            raw_finish_reason=self._stop_reason,
        )
