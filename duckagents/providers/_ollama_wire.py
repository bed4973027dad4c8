"""The Ollama wire format: chat request bodies, replies, model details and the per-model feature table.

Pure functions over JSON values, no I/O; :mod:`duckagents.providers._ollama` does the HTTP. Parsers
raise :class:`~duckagents.providers._streams.StreamFormatError` on malformed values (never a raw
``KeyError``); the provider turns that into a ``PROTOCOL`` error with its context.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import attrs

from ..errors import ErrorKind, ProviderError
from ..messages import Features, FinishReason, ImagePart, Message, ToolCall, Usage
from ..signals import ProviderRequest
from ._base import Completion, RateLimitInfo
from ._streams import StreamFormatError

PROVIDER = "ollama"
#: Used when neither /api/show nor the family table knows the model (Ollama's own default num_ctx).
DEFAULT_CONTEXT_WINDOW = 4096

# (name prefix, context window, tools, vision). The longest matching prefix wins, so specific variants
# ("llama3.2-vision") beat their family ("llama3.2"). /api/show capabilities override this table.
FAMILIES: tuple[tuple[str, int, bool, bool], ...] = (
    ("llama3.3", 131072, True, False),
    ("llama3.2-vision", 131072, False, True),
    ("llama3.2", 131072, True, False),
    ("llama3.1", 131072, True, False),
    ("llama3", 8192, False, False),
    ("llava", 4096, False, True),
    ("bakllava", 4096, False, True),
    ("moondream", 2048, False, True),
    ("minicpm-v", 32768, False, True),
    ("gemma3", 131072, False, True),
    ("gemma2", 8192, False, False),
    ("mistral-nemo", 131072, True, False),
    ("mistral", 32768, True, False),
    ("mixtral", 32768, True, False),
    ("qwen2.5vl", 128000, False, True),
    ("qwen2.5", 32768, True, False),
    ("qwen3", 40960, True, False),
    ("phi3", 4096, False, False),
    ("phi4", 16384, False, False),
    ("command-r", 131072, True, False),
)

_CONTEXT_LENGTH_RE = re.compile(r"context (length|window)|exceeds (the )?maximum|too long", re.IGNORECASE)


@attrs.frozen
class OllamaModelDetails:
    """What ``POST /api/show`` says about a local model."""

    name: str
    context_window: int | None = None
    capabilities: tuple[str, ...] = ()
    family: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None


def canonical_model_name(name: str) -> str:
    """Ollama's canonical name: ``llama3.2`` and ``llama3.2:latest`` are the same model."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def family(model: str) -> tuple[str, int, bool, bool] | None:
    """The :data:`FAMILIES` entry of ``model`` (namespace and tag ignored), or None."""
    base = model.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    matches = [entry for entry in FAMILIES if base.startswith(entry[0])]
    return max(matches, key=lambda entry: len(entry[0])) if matches else None


def features_for(model: str, shown: OllamaModelDetails | None, num_ctx: int | None) -> Features:
    """Features of ``model``: /api/show data when known, else the family table, capped by ``num_ctx``."""
    fam = family(model)
    ctx = (shown.context_window if shown else None) or (fam[1] if fam else DEFAULT_CONTEXT_WINDOW)
    if num_ctx:
        ctx = min(ctx, num_ctx)  # Ollama truncates input to num_ctx, whatever the model could take
    if shown and shown.capabilities:
        tools, vision = "tools" in shown.capabilities, "vision" in shown.capabilities
    else:
        tools, vision = (fam[2], fam[3]) if fam else (False, False)
    # Ollama generates until the context is full unless num_predict says otherwise.
    return Features(
        streaming=True,
        tools=tools,
        vision=vision,
        system_prompt=True,
        json_mode=True,
        context_window=ctx,
        max_output_tokens=ctx,
    )


# --- requests ------------------------------------------------------------------------------------


def build_chat_body(
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
        "messages": encode_messages(request.messages, model),
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


def encode_messages(messages: Sequence[Message], model: str) -> list[dict[str, Any]]:
    """Neutral messages as Ollama chat messages (images as base64, tool-call arguments as objects)."""
    names: dict[str, str] = {}  # tool_call_id -> tool name, for Ollama's tool_name on results
    out: list[dict[str, Any]] = []
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role, "content": message.text}
        images = [encode_image(part, model) for part in message.images]
        if images:
            item["images"] = images
        if message.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _arguments(c, model)}} for c in message.tool_calls
            ]
            names.update((c.id, c.name) for c in message.tool_calls)
        if message.role == "tool" and message.tool_call_id in names:
            item["tool_name"] = names[message.tool_call_id]
        out.append(item)
    return out


def encode_image(part: ImagePart, model: str) -> str:
    """An image as Ollama wants it: bare base64 (a ``data:`` URL is unwrapped; remote URLs unsupported)."""
    if part.data is not None:
        return part.data
    url = part.url or ""
    if url.startswith("data:") and ";base64," in url:
        return url.split(",", 1)[1]
    raise ProviderError(
        ErrorKind.UNSUPPORTED,
        "Ollama accepts inline base64 images only, not URLs",
        provider=PROVIDER,
        model=model,
    )


def _arguments(call: ToolCall, model: str) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise ProviderError(
            ErrorKind.INVALID_REQUEST,
            f"tool call {call.id!r} arguments are not a JSON object",
            provider=PROVIDER,
            model=model,
        )
    return args


# --- replies -------------------------------------------------------------------------------------


def parse_message(value: Any) -> tuple[str, list[Any]]:
    """The content and raw tool calls of a reply's (or stream line's) ``message``."""
    message = value if value is not None else {}
    if not isinstance(message, dict):
        raise StreamFormatError("message is not an object")
    content = message.get("content") or ""
    calls = message.get("tool_calls") or []
    if not isinstance(content, str) or not isinstance(calls, list):
        raise StreamFormatError("message content is not a string or tool_calls not a list")
    return content, calls


def parse_tool_call(raw: Any, index: int) -> ToolCall:
    """A whole Ollama tool call; it has no id, so ``call_<index>`` is synthesised (stable per reply)."""
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise StreamFormatError(f"tool call {index} has no function name")
    args = function.get("arguments", {})
    arguments = args if isinstance(args, str) else json.dumps(args)
    call_id = raw.get("id")  # newer servers may send one; keep it when they do
    return ToolCall(
        id=call_id if isinstance(call_id, str) and call_id else f"call_{index}",
        name=function["name"],
        arguments=arguments,
    )


def parse_completion(
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


def parse_show(body: Any, model: str) -> OllamaModelDetails:
    """``POST /api/show``: context length from ``model_info["<arch>.context_length"]``, capabilities."""
    if not isinstance(body, dict):
        raise StreamFormatError("show reply is not an object")
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


def error_kind(default: ErrorKind, message: str) -> ErrorKind:
    """Refine the status-derived kind from Ollama's message (it has no error codes)."""
    return ErrorKind.CONTEXT_LENGTH if _CONTEXT_LENGTH_RE.search(message) else default


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def opt_int(value: Any) -> int | None:
    """An int field, or None when missing or not an int."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
