"""The OpenAI Chat Completions wire format: a request body in, our neutral types; our answers out.

:func:`parse_chat_request` checks a JSON value (already decoded and bounded by
:func:`duckagents.validation.loads`) against the parts of the API this door serves and refuses
everything else by name, so a client never gets a silently different request: an unknown field, a
feature we cannot honour (``n`` > 1, ``json_schema``, logprobs, audio) or a value of the wrong type or
range is a ``BodyError`` naming the field. Fields that change nothing about the answer (``user``,
``metadata``, ``store``, ``seed``...) are accepted and ignored.

The rendering functions build ``chat.completion`` objects and ``chat.completion.chunk`` SSE events; chunk
events are assembled from a prefix encoded once per stream.
"""

from __future__ import annotations

import binascii
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..messages import FinishReason, ImagePart, Message, Part, TextPart, ToolCall, ToolSpec, Usage
from ..signals import ProviderChunk, ProviderResponse
from ._json import BodyError, dumps, short

__all__ = [
    "ChatRequest",
    "ChunkWriter",
    "completion_id",
    "completion_object",
    "parse_chat_request",
    "usage_object",
]

MAX_TOKENS_LIMIT = 10_000_000
MAX_TOOLS = 128
MAX_STOP = 4
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,(.*)$", re.DOTALL)
_ROLES = ("system", "developer", "user", "assistant", "tool")
_COMMON_KEYS = frozenset({"role", "content", "name"})
_MESSAGE_KEYS = {
    "system": _COMMON_KEYS,
    "developer": _COMMON_KEYS,
    "user": _COMMON_KEYS,
    "assistant": _COMMON_KEYS | {"tool_calls", "refusal", "annotations", "audio", "function_call"},
    "tool": _COMMON_KEYS | {"tool_call_id"},
}
#: Accepted and ignored: they do not change what the model answers here.
_IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "seed",
        "service_tier",
        "parallel_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
    }
)
#: Accepted only with a value that means "off" (their default): we cannot honour anything else.
_OFF_ONLY: dict[str, Callable[[Any], bool]] = {
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v is None or v == 0,
    "frequency_penalty": lambda v: v is None or v == 0,
    "presence_penalty": lambda v: v is None or v == 0,
    "logit_bias": lambda v: v is None or v == {},
    "modalities": lambda v: v is None or v == ["text"],
    "reasoning_effort": lambda v: v is None,
    "verbosity": lambda v: v is None,
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "functions": lambda v: v is None,
    "function_call": lambda v: v is None,
}
_KNOWN = (
    frozenset(
        {
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "n",
            "stream",
            "stream_options",
            "tools",
            "tool_choice",
            "response_format",
        }
    )
    | _IGNORED
    | frozenset(_OFF_ONLY)
)


@attrs.frozen
class ChatRequest:
    """A parsed chat completion request. ``options`` are :class:`~duckagents.messages.RequestOptions`
    fields for the router (``stream`` apart); ``model`` None lets the router choose."""

    model: str | None
    messages: tuple[Message, ...]
    options: dict[str, Any]
    stream: bool = False
    include_usage: bool = False


# --- parsing -------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BodyError(f"must be an object, got {_kind(value)}", param)
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise BodyError(f"must be a string, got {_kind(value)}", param)
    return value


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise BodyError(f"must be a boolean, got {_kind(value)}", param)
    return value


def _integer(value: Any, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BodyError(f"must be an integer, got {_kind(value)}", param)
    if not low <= value <= high:
        raise BodyError(f"must be from {low} to {high}, got {short(value)}", param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BodyError(f"must be a number, got {_kind(value)}", param)
    if not low <= value <= high:
        raise BodyError(f"must be from {low:g} to {high:g}, got {short(value)}", param)
    return float(value)


def _keys(obj: dict[str, Any], allowed: frozenset[str] | set[str], param: str) -> None:
    unknown = [key for key in obj if key not in allowed]
    if unknown:
        where = f"{param}." if param else ""
        raise BodyError(
            f"unrecognized field; allowed here: {', '.join(sorted(allowed))}",
            where + (unknown[0] if len(unknown[0]) <= 40 else short(unknown[0])),
        )


def parse_chat_request(body: Any) -> ChatRequest:
    """A :class:`ChatRequest` from a JSON body; raises :class:`BodyError` naming the bad field."""
    obj = _object(body, "")
    for key, value in obj.items():
        if key not in _KNOWN:
            shown = key if len(key) <= 40 else short(key)
            raise BodyError(f"unrecognized request argument {shown!r}", shown)
        is_off = _OFF_ONLY.get(key)
        if is_off is not None and not is_off(value):
            hint = " (use tools)" if key in ("functions", "function_call") else ""
            raise BodyError(f"not supported by this server{hint}", key)
    model = obj.get("model")
    if model is not None:
        model = _string(model, "model") or None
        if model is not None and len(model) > 256:
            raise BodyError("must be at most 256 characters", "model")
    if "messages" not in obj:
        raise BodyError("required", "messages")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BodyError("must be a non-empty array of messages", "messages")
    messages = tuple(_message(m, f"messages[{i}]") for i, m in enumerate(raw_messages))
    if obj.get("n") is not None and _integer(obj["n"], "n", 1, 1 << 31) != 1:
        raise BodyError("only n = 1 is supported", "n")
    stream = obj.get("stream")
    stream = False if stream is None else _boolean(stream, "stream")
    include_usage = False
    if obj.get("stream_options") is not None:
        if not stream:
            raise BodyError("only allowed when stream is true", "stream_options")
        options_obj = _object(obj["stream_options"], "stream_options")
        _keys(options_obj, {"include_usage", "include_obfuscation"}, "stream_options")
        if options_obj.get("include_usage") is not None:
            include_usage = _boolean(options_obj["include_usage"], "stream_options.include_usage")
        if options_obj.get("include_obfuscation") is not None:
            _boolean(options_obj["include_obfuscation"], "stream_options.include_obfuscation")
    return ChatRequest(model, messages, _options(obj), stream, include_usage)


def _options(obj: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):  # the newer name wins when both are given
        if obj.get(key) is not None:
            options["max_tokens"] = _integer(obj[key], key, 1, MAX_TOKENS_LIMIT)
            break
    if obj.get("temperature") is not None:
        options["temperature"] = _number(obj["temperature"], "temperature", 0.0, 2.0)
    if obj.get("top_p") is not None:
        options["top_p"] = _number(obj["top_p"], "top_p", 0.0, 1.0)
    stop = obj.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOP:
            raise BodyError(f"must be a string or an array of at most {MAX_STOP} strings", "stop")
        options["stop"] = tuple(_string(s, f"stop[{i}]") for i, s in enumerate(stops))
    tools: tuple[ToolSpec, ...] = ()
    if obj.get("tools") is not None:
        raw = obj["tools"]
        if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
            raise BodyError(f"must be an array of at most {MAX_TOOLS} tools", "tools")
        tools = tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(raw))
        if tools:
            options["tools"] = tools
    if obj.get("tool_choice") is not None:
        options["tool_choice"] = _tool_choice(obj["tool_choice"], tools)
    if obj.get("response_format") is not None:
        fmt = _object(obj["response_format"], "response_format")
        kind = fmt.get("type")
        if kind == "json_schema":
            raise BodyError(
                "json_schema is not supported by this server; use json_object", "response_format.type"
            )
        if kind not in ("text", "json_object"):
            raise BodyError("must be 'text' or 'json_object'", "response_format.type")
        _keys(fmt, {"type"}, "response_format")
        options["response_format"] = kind
    return options


def _tool(value: Any, param: str) -> ToolSpec:
    tool = _object(value, param)
    _keys(tool, {"type", "function"}, param)
    if tool.get("type") != "function":
        raise BodyError("must be 'function'", f"{param}.type")
    fn = _object(tool.get("function"), f"{param}.function")
    _keys(fn, {"name", "description", "parameters", "strict"}, f"{param}.function")
    name = _string(fn.get("name"), f"{param}.function.name")
    if not _TOOL_NAME.match(name):
        raise BodyError("must be 1 to 64 characters from a-z, A-Z, 0-9, _ and -", f"{param}.function.name")
    description = fn.get("description")
    description = "" if description is None else _string(description, f"{param}.function.description")
    if fn.get("strict") is not None:
        _boolean(fn["strict"], f"{param}.function.strict")
    if fn.get("parameters") is None:
        return ToolSpec(name, description)
    return ToolSpec(name, description, _object(fn["parameters"], f"{param}.function.parameters"))


def _tool_choice(value: Any, tools: Sequence[ToolSpec]) -> str:
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise BodyError("must be 'none', 'auto', 'required' or a function choice", "tool_choice")
        if value == "required" and not tools:
            raise BodyError("'required' needs tools", "tool_choice")
        return value
    choice = _object(value, "tool_choice")
    _keys(choice, {"type", "function"}, "tool_choice")
    if choice.get("type") != "function":
        raise BodyError("must be 'function'", "tool_choice.type")
    fn = _object(choice.get("function"), "tool_choice.function")
    _keys(fn, {"name"}, "tool_choice.function")
    name = _string(fn.get("name"), "tool_choice.function.name")
    if name not in {t.name for t in tools}:
        raise BodyError("names no tool of the request", "tool_choice.function.name")
    return name


def _message(value: Any, param: str) -> Message:
    msg = _object(value, param)
    role = msg.get("role")
    if role == "function":
        raise BodyError(
            "the 'function' role is not supported (use tools and the 'tool' role)", f"{param}.role"
        )
    if role not in _ROLES:
        raise BodyError(f"must be one of {', '.join(_ROLES)}", f"{param}.role")
    _keys(msg, _MESSAGE_KEYS[role], param)
    name = msg.get("name")
    if name is not None:
        name = _string(name, f"{param}.name")
    content = _content(msg.get("content"), role, f"{param}.content")
    if role == "assistant":
        for key in ("audio", "function_call"):
            if msg.get(key) is not None:
                raise BodyError("not supported by this server", f"{param}.{key}")
        refusal = msg.get("refusal")
        if refusal is not None and not content:
            content = (TextPart(_string(refusal, f"{param}.refusal")),)
        calls = msg.get("tool_calls")
        tool_calls = () if calls is None else _tool_calls(calls, f"{param}.tool_calls")
        if not content and not tool_calls and msg.get("content") is None:
            raise BodyError("an assistant message needs content or tool_calls", f"{param}.content")
        return Message("assistant", content, tool_calls, name=name)
    if msg.get("content") is None:
        raise BodyError("required", f"{param}.content")
    if role == "tool":
        call_id = _string(msg.get("tool_call_id"), f"{param}.tool_call_id")
        return Message("tool", content, tool_call_id=call_id, name=name)
    return Message(role, content, name=name)


def _content(value: Any, role: str, param: str) -> tuple[Part, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (TextPart(value),)
    if not isinstance(value, list):
        raise BodyError(f"must be a string or an array of content parts, got {_kind(value)}", param)
    return tuple(_part(part, role, f"{param}[{i}]") for i, part in enumerate(value))


def _part(value: Any, role: str, param: str) -> Part:
    part = _object(value, param)
    kind = part.get("type")
    if kind == "text":
        _keys(part, {"type", "text"}, param)
        return TextPart(_string(part.get("text"), f"{param}.text"))
    if kind == "refusal" and role == "assistant":
        _keys(part, {"type", "refusal"}, param)
        return TextPart(_string(part.get("refusal"), f"{param}.refusal"))
    if kind == "image_url" and role == "user":
        _keys(part, {"type", "image_url"}, param)
        image = _object(part.get("image_url"), f"{param}.image_url")
        _keys(image, {"url", "detail"}, f"{param}.image_url")
        if image.get("detail") is not None and image["detail"] not in ("auto", "low", "high"):
            raise BodyError("must be 'auto', 'low' or 'high'", f"{param}.image_url.detail")
        return _image(_string(image.get("url"), f"{param}.image_url.url"), f"{param}.image_url.url")
    if kind in ("input_audio", "file", "image_url", "refusal"):
        raise BodyError(
            f"content parts of type {kind!r} are not supported in {role} messages", f"{param}.type"
        )
    allowed = "'text', 'image_url'" if role == "user" else "'text'"
    raise BodyError(f"must be one of {allowed}", f"{param}.type")


def _image(url: str, param: str) -> ImagePart:
    if url.startswith(("https://", "http://")):
        return ImagePart(url=url)
    match = _DATA_URL.match(url)
    if match is None:
        raise BodyError("must be an http(s) URL or a data:image/...;base64, URL", param)
    data = match.group(2)
    try:
        binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BodyError("the data URL does not hold valid base64", param) from None
    if not data:
        raise BodyError("the data URL holds no data", param)
    return ImagePart(media_type=match.group(1), data=data)


def _tool_calls(value: Any, param: str) -> tuple[ToolCall, ...]:
    if not isinstance(value, list):
        raise BodyError(f"must be an array, got {_kind(value)}", param)
    calls = []
    for i, raw in enumerate(value):
        where = f"{param}[{i}]"
        call = _object(raw, where)
        _keys(call, {"id", "type", "function"}, where)
        if call.get("type", "function") != "function":
            raise BodyError("must be 'function'", f"{where}.type")
        fn = _object(call.get("function"), f"{where}.function")
        _keys(fn, {"name", "arguments"}, f"{where}.function")
        calls.append(
            ToolCall(
                id=_string(call.get("id"), f"{where}.id"),
                name=_string(fn.get("name"), f"{where}.function.name"),
                arguments=_string(fn.get("arguments", "{}"), f"{where}.function.arguments"),
            )
        )
    return tuple(calls)


# --- rendering -----------------------------------------------------------------------------------

#: Our finish reasons as OpenAI names them (a refusal is a normal stop with ``message.refusal`` set).
FINISH: dict[FinishReason, str] = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.REFUSAL: "stop",
    FinishReason.OTHER: "stop",
}


def completion_id(request_id: str) -> str:
    """The ``id`` of the completion object for one of our request ids."""
    return f"chatcmpl-{request_id}"


def usage_object(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object; ``cost`` (USD) is added when the response carries one."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    cost = getattr(usage, "cost", None)
    if cost is not None:
        out["cost"] = cost
    return out


def _tool_call_object(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def completion_object(response: ProviderResponse, created: int | None = None) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished request; ``model`` is the model that answered."""
    refused = response.finish_reason is FinishReason.REFUSAL
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if refused or (response.tool_calls and not response.content) else response.content,
        "refusal": response.content if refused else None,
    }
    if response.tool_calls:
        message["tool_calls"] = [_tool_call_object(c) for c in response.tool_calls]
    return {
        "id": completion_id(response.request_id),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH[response.finish_reason],
            }
        ],
        "usage": usage_object(response.usage),
    }


class ChunkWriter:
    """Renders one stream's ``chat.completion.chunk`` SSE events.

    Every event shares the same head (id, object, created, model), so it is encoded once; a chunk costs
    the encoding of its delta. The first delta carries ``role``; with ``include_usage`` every chunk has
    ``"usage": null`` and a last chunk with no choices carries the usage, as OpenAI does.
    """

    def __init__(self, request_id: str, model: str, include_usage: bool, created: int | None = None) -> None:
        self.include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._id = completion_id(request_id)
        self._head = self._head_for(model)
        self._tail = b',"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}' if include_usage else b"}"
        )
        self._started = False

    def _head_for(self, model: str) -> bytes:
        head = dumps(
            {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": model}
        )
        return b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":'

    def delta(self, chunk: ProviderChunk) -> bytes:
        """The event of one streamed chunk."""
        delta: dict[str, Any] = {}
        if not self._started:
            self._started = True
            delta["role"] = "assistant"
            delta["content"] = chunk.delta if chunk.delta or chunk.tool_call is None else None
        elif chunk.delta:
            delta["content"] = chunk.delta
        call = chunk.tool_call
        if call is not None:
            piece: dict[str, Any] = {"index": call.index}
            if call.id is not None:
                piece["id"] = call.id
                piece["type"] = "function"
            function: dict[str, Any] = {"arguments": call.arguments}
            if call.name is not None:
                function["name"] = call.name
            piece["function"] = function
            delta["tool_calls"] = [piece]
        return self._head + dumps(delta) + self._tail + b"\n\n"

    def finish(self, response: ProviderResponse) -> bytes:
        """The closing events: the finish reason (with the exact model that answered), the usage chunk
        when asked for, and ``[DONE]``."""
        self._head = self._head_for(response.model)
        out = b""
        if not self._started:  # nothing was streamed (an empty answer): still open the message
            self._started = True
            out += self._head + b'{"role":"assistant","content":""}' + self._tail + b"\n\n"
        finish = dumps(FINISH[response.finish_reason])
        out += self._head + b'{},"logprobs":null,"finish_reason":' + finish + b"}]"
        out += (b',"usage":null}' if self.include_usage else b"}") + b"\n\n"
        if self.include_usage:
            usage = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": response.model,
                "choices": [],
                "usage": usage_object(response.usage),
            }
            out += b"data: " + dumps(usage) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(body: dict[str, Any]) -> bytes:
        """An error event after the stream began (the status line has gone out already); the OpenAI SDKs
        raise an ``APIError`` on an event with an ``error`` field."""
        return b"data: " + dumps(body) + b"\n\n"
