"""Our requests on the Anthropic Messages API wire: message turns, images, tools, the request body.

Pure functions; anything the API would refuse raises :class:`RequestEncodingError` before a byte is sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import ErrorKind
from ..messages import ImagePart, Message, RequestOptions, TextPart, ToolCall, ToolSpec

#: Image media types the Messages API accepts.
MEDIA_TYPES: frozenset[str] = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
#: The documented per-image size limit of the API (decoded bytes).
MAX_IMAGE_BYTES = 5 * 1024 * 1024


class RequestEncodingError(ValueError):
    """Our request cannot be expressed on the Anthropic wire (raised before anything is sent)."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INVALID_REQUEST) -> None:
        super().__init__(message)
        self.kind = kind


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
        raise RequestEncodingError(f"{where}: {problem}")
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
        raise RequestEncodingError(f"{where}: arguments of tool call {call.id!r} are not JSON") from None
    if not isinstance(value, dict):
        raise RequestEncodingError(f"{where}: arguments of tool call {call.id!r} must be a JSON object")
    return value


def _encode_turn(message: Message, where: str) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        if not message.tool_call_id:
            raise RequestEncodingError(f"{where}: a tool message needs tool_call_id")
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.images:
            block["content"] = _encode_parts(message, where)
        elif message.text:
            block["content"] = message.text
        return "user", [block]
    blocks = _encode_parts(message, where)
    if message.role == "assistant":
        if message.images:
            raise RequestEncodingError(f"{where}: assistant turns cannot carry images")
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
                raise RequestEncodingError(f"{where}: a {message.role} message cannot carry images")
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
        raise RequestEncodingError("at least one user or assistant message is required")
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
        raise RequestEncodingError(f"tool_choice {choice!r} needs at least one tool")
    if choice == "auto":
        return {"type": "auto"}
    if choice in ("required", "any"):
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if choice not in {tool.name for tool in tools}:
        raise RequestEncodingError(f"tool_choice names unknown tool {choice!r}")
    return {"type": "tool", "name": choice}


def encode_request(
    messages: Sequence[Message], options: RequestOptions, *, model: str, max_tokens: int, stream: bool
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/messages``."""
    if options.response_format == "json_object":
        raise RequestEncodingError("the Messages API has no JSON mode", ErrorKind.UNSUPPORTED)
    system, turns = encode_messages(messages)
    body: dict[str, Any] = {"model": model, "max_tokens": options.max_tokens or max_tokens, "messages": turns}
    if system:
        body["system"] = system
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if options.top_p is not None:
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
