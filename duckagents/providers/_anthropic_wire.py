"""The Anthropic Messages API wire format: our request body, the reply message and the stream events.

Pure functions and one small state machine (:class:`StreamAssembler`); no I/O, so every edge case is
testable without a socket. A request the API would refuse raises :class:`~._base.WireFormatError` with
its kind (INVALID_REQUEST, UNSUPPORTED) before a byte is sent; a reply or event that breaks the format
raises it with PROTOCOL, an ``error`` event :class:`~._base.InBandError`. Error replies and rate-limit
headers are :mod:`._anthropic_errors`, the model table :mod:`._anthropic_models`;
:mod:`duckagents.providers._anthropic` does the HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..errors import ErrorKind
from ..messages import FinishReason, ImagePart, Message, TextPart, ToolCall, ToolSpec, Usage
from ..signals import ProviderRequest, ToolCallDelta
from ._base import Completion, InBandError, RateLimitInfo, StreamDelta, StreamEnd, WireFormatError
from ._streams import SSEEvent, sse_json


def _refused(message: str, kind: ErrorKind = ErrorKind.INVALID_REQUEST) -> WireFormatError:
    """Our request cannot be expressed on the Anthropic wire."""
    return WireFormatError(message, kind)


# --- requests ------------------------------------------------------------------------------------

#: Image media types the Messages API accepts.
MEDIA_TYPES: frozenset[str] = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
#: The documented per-image size limit of the API (decoded bytes).
MAX_IMAGE_BYTES = 5 * 1024 * 1024


def image_problem(part: ImagePart) -> str | None:
    """Why the API would reject this image (media type or size), or None when it is acceptable."""
    if part.data is None:
        return None  # URL images are fetched and checked by the API itself
    if part.media_type not in MEDIA_TYPES:
        return f"image media type {part.media_type!r} is not one of {', '.join(sorted(MEDIA_TYPES))}"
    size = len(part.data) * 3 // 4 - part.data[-2:].count("=")
    if size > MAX_IMAGE_BYTES:
        return f"image is {size} bytes; the limit is {MAX_IMAGE_BYTES} bytes"
    return None


def _encode_image(part: ImagePart, where: str) -> dict[str, Any]:
    problem = image_problem(part)
    if problem:
        raise _refused(f"{where}: {problem}")
    if part.data is not None:
        source = {"type": "base64", "media_type": part.media_type, "data": part.data}
    else:
        source = {"type": "url", "url": part.url}
    return {"type": "image", "source": source}


def _encode_parts(message: Message, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(message.content):
        if isinstance(part, TextPart):
            if part.text:  # the API rejects empty text blocks
                blocks.append({"type": "text", "text": part.text})
        else:
            blocks.append(_encode_image(part, f"{where}.content[{j}]"))
    return blocks


def _tool_input(call: ToolCall, where: str) -> dict[str, Any]:
    try:
        value = json.loads(call.arguments.strip() or "{}")
    except json.JSONDecodeError:
        raise _refused(f"{where}: arguments of tool call {call.id!r} are not JSON") from None
    if not isinstance(value, dict):
        raise _refused(f"{where}: arguments of tool call {call.id!r} must be a JSON object")
    return value


def _encode_turn(message: Message, where: str) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        if not message.tool_call_id:
            raise _refused(f"{where}: a tool message needs tool_call_id")
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.images:
            block["content"] = _encode_parts(message, where)
        elif message.text:
            block["content"] = message.text
        return "user", [block]
    blocks = _encode_parts(message, where)
    if message.role == "assistant":
        if message.images:
            raise _refused(f"{where}: assistant turns cannot carry images")
        for call in message.tool_calls:
            blocks.append(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call, where)}
            )
    return message.role, blocks


def encode_messages(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """Split neutral messages into the top-level ``system`` text and the API's ``messages`` turns.

    System/developer messages go to ``system``; ``tool`` messages become user turns with tool_result
    blocks; consecutive turns of one role are merged, since the API wants alternating roles.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role in ("system", "developer"):
            if message.images:
                raise _refused(f"{where}: a {message.role} message cannot carry images")
            if message.text:
                system.append(message.text)
            continue
        role, blocks = _encode_turn(message, where)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # The API requires a user turn's tool_result blocks to come before its other blocks.
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if not turns:
        raise _refused("at least one user or assistant message is required")
    return ("\n\n".join(system) or None), turns


def encode_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs in the API's shape (``input_schema`` is our JSON-schema ``parameters``)."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        spec: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
        if tool.description:
            spec["description"] = tool.description
        out.append(spec)
    return out


def encode_tool_choice(choice: str | None, tools: Sequence[ToolSpec]) -> dict[str, Any] | None:
    """Our ``tool_choice`` ("auto" | "none" | "required" | a tool name) in the API's shape."""
    if choice is None or (not tools and choice in ("auto", "none")):
        return None
    if not tools:
        raise _refused(f"tool_choice {choice!r} needs at least one tool")
    if choice == "auto":
        return {"type": "auto"}
    if choice in ("required", "any"):
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if choice not in {tool.name for tool in tools}:
        raise _refused(f"tool_choice names unknown tool {choice!r}")
    return {"type": "tool", "name": choice}


def build_body(
    request: ProviderRequest, model: str, *, stream: bool, max_tokens: int, exclusive_sampling: bool
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/messages``. ``max_tokens`` (required by the API) applies when the
    request sets none; with ``exclusive_sampling`` (the model family's rule, see
    :class:`~._anthropic_models.AnthropicModelFamily`) a request setting both ``temperature`` and
    ``top_p`` sends ``temperature`` only."""
    options = request.options
    if options.response_format == "json_object":
        raise _refused("the Messages API has no JSON mode", ErrorKind.UNSUPPORTED)
    system, turns = encode_messages(request.messages)
    body: dict[str, Any] = {"model": model, "max_tokens": options.max_tokens or max_tokens, "messages": turns}
    if system:
        body["system"] = system
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if options.top_p is not None and not (exclusive_sampling and options.temperature is not None):
        body["top_p"] = options.top_p
    if options.stop:
        body["stop_sequences"] = list(options.stop)
    if options.tools:
        body["tools"] = encode_tools(options.tools)
    choice = encode_tool_choice(options.tool_choice, options.tools)
    if choice is not None:
        body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


# --- replies -------------------------------------------------------------------------------------

FINISH_REASONS: dict[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.REFUSAL,
    "pause_turn": FinishReason.OTHER,
}


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


def parse_completion(body: Any, model: str, rate_limit: RateLimitInfo | None = None) -> Completion:
    """A non-streaming ``message`` object as a :class:`Completion`."""
    if isinstance(body, dict) and body.get("type") == "error" and isinstance(body.get("error"), dict):
        raise InBandError(body)  # an error object in a 200 (a proxy's way); a bare {"type": "error"} is not
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
    """Folds the Messages stream events into :class:`StreamDelta` items and, after ``message_stop``, one
    :class:`~._base.StreamEnd`: the decoder of the provider's stream (``HTTPProvider._stream``).

    Tool-call fragments get dense indexes (0, 1, ...) in the order tool_use blocks start, whatever
    their content-block index.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.done = False
        self._blocks: dict[int, _Block] = {}
        self._tools: list[_Block] = []
        self._text: list[str] = []
        self._input_tokens = 0
        self._output_tokens = 0
        self._stop_reason: str | None = None

    def feed(self, event: SSEEvent) -> list[StreamDelta]:
        """Consume one SSE event; an ``error`` event raises :class:`~._base.InBandError`."""
        return self.feed_event(event.event, sse_json(event.data))

    def feed_event(self, event: str, data: Any) -> list[StreamDelta]:
        """Consume one event (``event`` is the SSE event name, or the data's ``type`` when absent)."""
        if not isinstance(data, dict):
            raise WireFormatError(f"{event} event data is not an object")
        if event == "message" and isinstance(data.get("type"), str):
            event = data["type"]
        if event == "error":
            raise InBandError(data)
        if event == "ping":
            return []
        if event == "message_start":
            return self._message_start(data)
        if not self.started:
            raise WireFormatError(f"{event} event before message_start")
        if self.done:
            return []
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
            self.done = True
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

    def finish(self, rate_limit: RateLimitInfo | None = None) -> StreamEnd:
        """The stream's last event (see :meth:`completion`)."""
        return StreamEnd(self.completion(rate_limit))

    def completion(self, rate_limit: RateLimitInfo | None = None) -> Completion:
        """The assembled completion; raises :class:`WireFormatError` unless message_stop was seen."""
        if not self.done:
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


def parse_model_page(page: Any) -> list[dict[str, Any]]:
    """The models of one ``GET /v1/models`` page (objects with a string ``id``)."""
    data = page.get("data") if isinstance(page, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(m, dict) and isinstance(m.get("id"), str) for m in data
    ):
        raise WireFormatError("model list without a data array of models")
    return data
