"""The Ollama wire format: chat request bodies, replies and streams, pull progress, model details.

Pure functions over JSON values, no I/O; :mod:`duckagents.providers._ollama` does the HTTP, the model
table is :mod:`._ollama_models`, error replies :mod:`._ollama_errors`. Parsers raise
:class:`~duckagents.providers._base.WireFormatError` on malformed values (never a raw ``KeyError``) and
:class:`~duckagents.providers._base.InBandError` for the ``{"error": ...}`` objects Ollama reports late
failures with; a request Ollama cannot take (an image URL, tool arguments that are not an object) raises
``WireFormatError`` with its kind before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import ErrorKind
from ..messages import FinishReason, ImagePart, Message, ToolCall, Usage
from ..signals import ProviderRequest, ToolCallDelta
from ._base import Completion, InBandError, RateLimitInfo, StreamDelta, StreamEnd, WireFormatError
from ._ollama_models import OllamaModelDetails

# --- requests ------------------------------------------------------------------------------------


def build_body(
    request: ProviderRequest,
    model: str,
    *,
    stream: bool,
    keep_alive: str | float | None = None,
    num_ctx: int | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /api/chat``. ``stream`` is always explicit: Ollama streams by default."""
    opts = request.options
    body: dict[str, Any] = {
        "model": model,
        "messages": encode_messages(request.messages),
        "stream": stream,
    }
    if opts.tools and opts.tool_choice != "none":  # Ollama has no tool_choice: "none" drops the tools
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in opts.tools
        ]
    options: dict[str, Any] = {}
    for key, value in (
        ("temperature", opts.temperature),
        ("top_p", opts.top_p),
        ("num_predict", opts.max_tokens),
        ("num_ctx", num_ctx),
    ):
        if value is not None:
            options[key] = value
    if opts.stop:
        options["stop"] = list(opts.stop)
    if options:
        body["options"] = options
    if opts.response_format == "json_object":
        body["format"] = "json"
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body


def encode_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Neutral messages as Ollama chat messages (images as base64, tool-call arguments as objects)."""
    names: dict[str, str] = {}  # tool_call_id -> tool name, for Ollama's tool_name on results
    out: list[dict[str, Any]] = []
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role, "content": message.text}
        images = [encode_image(part) for part in message.images]
        if images:
            item["images"] = images
        if message.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _arguments(c)}} for c in message.tool_calls
            ]
            names.update((c.id, c.name) for c in message.tool_calls)
        if message.role == "tool" and message.tool_call_id in names:
            item["tool_name"] = names[message.tool_call_id]
        out.append(item)
    return out


def encode_image(part: ImagePart) -> str:
    """An image as Ollama wants it: bare base64 (a ``data:`` URL is unwrapped; remote URLs unsupported)."""
    if part.data is not None:
        return part.data
    url = part.url or ""
    if url.startswith("data:") and ";base64," in url:
        return url.split(",", 1)[1]
    raise WireFormatError("Ollama accepts inline base64 images only, not URLs", ErrorKind.UNSUPPORTED)


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise WireFormatError(
            f"tool call {call.id!r} arguments are not a JSON object", ErrorKind.INVALID_REQUEST
        )
    return args


# --- replies -------------------------------------------------------------------------------------


def parse_message(value: Any) -> tuple[str, list[Any]]:
    """The content and raw tool calls of a reply's (or stream line's) ``message``."""
    message = value if value is not None else {}
    if not isinstance(message, dict):
        raise WireFormatError("message is not an object")
    content = message.get("content") or ""
    calls = message.get("tool_calls") or []
    if not isinstance(content, str) or not isinstance(calls, list):
        raise WireFormatError("message content is not a string or tool_calls not a list")
    return content, calls


def parse_tool_call(raw: Any, index: int) -> ToolCall:
    """A whole Ollama tool call; it has no id, so ``call_<index>`` is synthesised (stable per reply)."""
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise WireFormatError(f"tool call {index} has no function name")
    args = function.get("arguments", {})
    arguments = args if isinstance(args, str) else json.dumps(args)
    call_id = raw.get("id")  # newer servers may send one; keep it when they do
    return ToolCall(
        id=call_id if isinstance(call_id, str) and call_id else f"call_{index}",
        name=function["name"],
        arguments=arguments,
    )


def _completion(
    final: dict[str, Any],
    model: str,
    content: str,
    calls: tuple[ToolCall, ...],
    rate_limit: RateLimitInfo | None = None,
) -> Completion:
    """A Completion from the ``done`` object (whole reply or last stream line) and the gathered output."""
    raw = final.get("done_reason")
    raw = raw if isinstance(raw, str) else None
    if calls and raw in (None, "stop"):  # Ollama says "stop" after tool calls too
        finish = FinishReason.TOOL_CALLS
    else:
        finish = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}.get(
            raw or "stop", FinishReason.OTHER
        )
    usage = Usage(_count(final.get("prompt_eval_count")), _count(final.get("eval_count")))
    return Completion(
        model=str(final.get("model") or model),
        content=content,
        tool_calls=calls,
        finish_reason=finish,
        usage=usage,
        rate_limit=rate_limit,
        raw_finish_reason=raw,
    )


def parse_completion(body: Any, model: str, rate_limit: RateLimitInfo | None = None) -> Completion:
    """A non-streaming ``/api/chat`` reply as a :class:`Completion`."""
    if not isinstance(body, dict) or body.get("done") is not True or "message" not in body:
        raise WireFormatError("chat reply has no message or is not done")
    content, raw_calls = parse_message(body["message"])
    calls = tuple(parse_tool_call(raw, i) for i, raw in enumerate(raw_calls))
    return _completion(body, model, content, calls, rate_limit)


class StreamAssembler:
    """Turns the NDJSON lines of a streamed ``/api/chat`` into deltas and, after the ``done`` line, one
    :class:`~._base.StreamEnd`: the decoder of the provider's stream (``HTTPProvider._stream``).

    Ollama sends each tool call whole, so each becomes one :class:`ToolCallDelta` with id and name.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._text: list[str] = []
        self._calls: list[ToolCall] = []
        self._final: dict[str, Any] = {}

    def feed(self, line: Any) -> list[StreamDelta]:
        """Consume one line; an ``{"error": ...}`` line (a late failure) raises
        :class:`~._base.InBandError`."""
        if not isinstance(line, dict):
            raise WireFormatError("stream line is not a JSON object")
        if isinstance(line.get("error"), str):
            raise InBandError(line)
        content, raw_calls = parse_message(line.get("message"))
        first = len(self._calls)
        calls = [parse_tool_call(raw, first + i) for i, raw in enumerate(raw_calls)]
        deltas = [StreamDelta(text=content)] if content else []
        if content:
            self._text.append(content)
        for index, call in enumerate(calls, first):
            deltas.append(StreamDelta(tool_call=ToolCallDelta(index, call.id, call.name, call.arguments)))
        self._calls += calls
        if line.get("done") is True:
            self.done = True
            self._final = line
        return deltas

    def finish(self, rate_limit: RateLimitInfo | None = None) -> StreamEnd:
        """The stream's last event; raises :class:`~._base.WireFormatError` before the ``done`` line."""
        if not self.done:
            raise WireFormatError("stream ended without its done line")
        content = "".join(self._text)
        return StreamEnd(_completion(self._final, self.model, content, tuple(self._calls), rate_limit))


class PullProgress:
    """The stream decoder of ``/api/pull``: yields each progress object (``status``, ``digest``,
    ``total``, ``completed``) up to ``{"status": "success"}``; an ``{"error": ...}`` line (the model
    does not exist, the download failed) raises :class:`~._base.InBandError`."""

    def __init__(self) -> None:
        self.done = False

    def feed(self, line: Any) -> list[dict[str, Any]]:
        """Consume one progress line."""
        if not isinstance(line, dict):
            raise WireFormatError("pull progress line is not a JSON object")
        if isinstance(line.get("error"), str):
            raise InBandError(line)
        self.done = line.get("status") == "success"
        return [line]

    def finish(self, rate_limit: RateLimitInfo | None = None) -> None:
        """Nothing follows the success line; raises :class:`~._base.WireFormatError` without it."""
        if not self.done:
            raise WireFormatError("pull stream ended without success")


def parse_show(body: Any, model: str) -> OllamaModelDetails:
    """``POST /api/show``: context length from ``model_info["<arch>.context_length"]``, capabilities."""
    if not isinstance(body, dict):
        raise WireFormatError("show reply is not an object")
    info: dict[str, Any] = body["model_info"] if isinstance(body.get("model_info"), dict) else {}
    details: dict[str, Any] = body["details"] if isinstance(body.get("details"), dict) else {}
    arch = info.get("general.architecture")
    ctx = info.get(f"{arch}.context_length") if arch else None
    if ctx is None:  # unknown architecture key: any "<arch>.context_length" will do
        ctx = next((v for k, v in info.items() if k.endswith(".context_length")), None)
    caps: list[Any] = body["capabilities"] if isinstance(body.get("capabilities"), list) else []
    return OllamaModelDetails(
        name=model,
        context_window=opt_int(ctx),
        capabilities=tuple(str(c) for c in caps),
        family=details.get("family"),
        parameter_size=details.get("parameter_size"),
        quantization_level=details.get("quantization_level"),
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def parse_version(body: Any) -> str:
    """The server version of a ``GET /api/version`` reply."""
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise WireFormatError("version reply has no version")
    return str(body["version"])


def parse_model_list(body: Any, path: str) -> list[dict[str, Any]]:
    """The ``models`` of a ``GET /api/tags`` or ``GET /api/ps`` reply."""
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise WireFormatError(f"{path} reply has no models list")
    return models


def opt_int(value: Any) -> int | None:
    """An int field, or None when missing or not an int."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
