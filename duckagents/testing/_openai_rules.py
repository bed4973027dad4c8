"""What the loopback OpenAI server refuses: chat request validation, raising :class:`APIError`.

Messages, ``type``/``param``/``code`` values and statuses follow what api.openai.com answers, so clients
(ours and the official one) meet the same shapes they meet in production (error bodies: _openai_errors).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

import attrs

from ._openai_errors import APIError, invalid, missing
from ._script import estimate_prompt_tokens

_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_PART_TYPES = ("text", "image_url", "input_audio", "file")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,(.*)$", re.DOTALL)
# o-series and gpt-5 reasoning models: the server's own rule, independent of the provider's table.
_REASONING = re.compile(r"^(o\d|gpt-5)")


@attrs.frozen
class RequestFacts:
    """What the server needs from a valid chat request."""

    model: str
    last_user_text: str
    prompt_tokens: int
    stream: bool = False
    include_usage: bool = False
    json_mode: bool = False
    max_output: int | None = None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _check_content(i: int, role: str, content: Any) -> None:
    if isinstance(content, str) or (content is None and role == "assistant"):
        return
    if not isinstance(content, list):
        raise missing(f"messages[{i}].content")
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _PART_TYPES:
            raise invalid(f"{where}.type", kind, _PART_TYPES)
        if kind == "text" and not isinstance(part.get("text"), str):
            raise missing(f"{where}.text")
        if kind == "image_url":
            if role != "user":
                raise APIError(400, f"Invalid 'messages[{i}]'. Image URLs are only allowed for messages with "
                               f"role 'user', but this message with role '{role}' contains an image URL.",
                               param=f"messages[{i}]", code="invalid_value")
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                raise missing(f"{where}.image_url.url")
            _check_image_url(url)


def _check_image_url(url: str) -> None:
    if not url.startswith("data:"):
        return
    match = _DATA_URL.match(url)
    try:
        ok = match is not None and bool(base64.b64decode(match.group(2), validate=True))
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise APIError(400, "You uploaded an unsupported image. Please make sure your image is of one of the "
                       "following formats: ['png', 'jpeg', 'gif', 'webp'].", code="invalid_image_format")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise APIError(400, "Invalid type for 'messages': expected an array.", param="messages",
                       code="invalid_type")
    if not messages:
        raise APIError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
                       "got an empty array instead.", param="messages", code="empty_array")
    pending: list[str] = []  # tool_call ids the conversation still owes results for
    pending_at = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise invalid(f"messages[{i}].role", role, _ROLES)
        role = message["role"]
        if role != "tool" and pending:
            raise APIError(400, "An assistant message with 'tool_calls' must be followed by tool messages "
                           "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                           f"response messages: {', '.join(pending)}", param=f"messages.[{pending_at}].role")
        if "content" not in message and not (role == "assistant" and message.get("tool_calls")):
            raise missing(f"messages[{i}].content")
        _check_content(i, role, message.get("content"))
        if role == "assistant" and message.get("tool_calls"):
            calls = message["tool_calls"]
            if not isinstance(calls, list) or not all(isinstance(c, dict) and c.get("id") for c in calls):
                raise missing(f"messages[{i}].tool_calls[0].id")
            pending, pending_at = [str(c["id"]) for c in calls], i
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not call_id:
                raise missing(f"messages[{i}].tool_call_id")
            if call_id not in pending:
                raise APIError(400, "Invalid parameter: messages with role 'tool' must be a response to a "
                               "preceeding message with 'tool_calls'.", param=f"messages.[{i}].role")
            pending.remove(call_id)


def _check_tools(body: dict[str, Any]) -> None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    names = []
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            raise missing(f"tools[{i}].function")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise APIError(400, f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                           "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                           param=f"tools[{i}].function.name", code="invalid_value")
        names.append(name)
    if choice is None:
        return
    if not tools:
        raise APIError(400, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                       "specified.", param="tool_choice")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise invalid("tool_choice", choice, ("none", "auto", "required"))
    elif not isinstance(choice, dict) or (choice.get("function") or {}).get("name") not in names:
        raise APIError(400, "Invalid 'tool_choice': the named function is not in 'tools'.",
                       param="tool_choice", code="invalid_value")


def validate_chat_request(raw: bytes, models: Sequence[str] | None, context_window: int) -> RequestFacts:
    """Check a ``POST /v1/chat/completions`` body; raise :class:`APIError` as the API would."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise APIError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                       "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "you must provide a model parameter")
    if "messages" not in body:
        raise missing("messages")
    messages = body["messages"]
    _check_messages(messages)
    if models is not None and model not in models:
        raise APIError.model_not_found(model)
    if _REASONING.match(model):
        if "max_tokens" in body:
            raise APIError(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                           "Use 'max_completion_tokens' instead.", param="max_tokens",
                           code="unsupported_parameter")
        for name in ("temperature", "top_p"):
            if body.get(name) not in (None, 1):
                raise APIError(400, f"Unsupported value: '{name}' does not support {body[name]} with this "
                               "model. Only the default (1) value is supported.", param=name,
                               code="unsupported_value")
    _check_tools(body)
    texts = [_text_of(m.get("content")) for m in messages]
    json_mode = (body.get("response_format") or {}).get("type") == "json_object"
    if json_mode and not any("json" in t.lower() for t in texts):
        raise APIError(400, "'messages' must contain the word 'json' in some form, to use "
                       "'response_format' of type 'json_object'.", param="messages")
    stream = body.get("stream") is True
    if body.get("stream_options") is not None and not stream:
        raise APIError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       param="stream_options")
    prompt_tokens = sum(estimate_prompt_tokens(t) for t in texts)
    max_output = body.get("max_completion_tokens", body.get("max_tokens"))
    max_output = max_output if isinstance(max_output, int) else None
    if prompt_tokens + (max_output or 0) > context_window:
        raise APIError.context_length(context_window, prompt_tokens, max_output or 0)
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    return RequestFacts(
        model=model,
        last_user_text=users[-1] if users else "",
        prompt_tokens=prompt_tokens,
        stream=stream,
        include_usage=stream and bool((body.get("stream_options") or {}).get("include_usage")),
        json_mode=json_mode,
        max_output=max_output,
    )
