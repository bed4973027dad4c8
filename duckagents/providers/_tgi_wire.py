"""The Hugging Face TGI wire format: /info, /generate(_stream), /tokenize and TGI's error shape.

The Messages API (``/v1/chat/completions``) is OpenAI-shaped, so its bodies and replies go through
:mod:`duckagents.providers._openai_wire`; this module only adapts what TGI does differently (JSON mode
is a grammar, tool-call arguments may arrive as an object, ``eos_token`` finish reasons, errors are
``{"error": str, "error_type": str}``). Pure functions, no I/O; parsers raise ``StreamFormatError``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..errors import ErrorKind, ProviderError, Secret, redact
from ..messages import Features, FinishReason, Message, Usage
from ..signals import ProviderRequest
from . import _openai_wire as openai_wire
from ._http import error_message_from_body, kind_for_status, parse_int
from ._streams import StreamFormatError
from .base import Completion, RateLimitInfo, StreamDelta

#: Before /info is fetched: TGI's default limits (v2 launcher defaults), tools and grammar always on.
DEFAULT_FEATURES = Features(tools=True, json_mode=True, context_window=4096, max_output_tokens=1024)
GENERATE_FINISH: dict[str, FinishReason] = {
    "length": FinishReason.LENGTH,
    "eos_token": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
}
# Model ids of vision-language models TGI serves, for servers whose /info has no pipeline tag.
_VISION_HINTS = (
    "llava",
    "idefics",
    "paligemma",
    "qwen2-vl",
    "qwen2.5-vl",
    "mllama",
    "vision",
    "pixtral",
    "gemma-3",
)
# TGI's validation messages for inputs that do not fit: "`inputs` tokens + `max_new_tokens` must be <= N"
# and "`inputs` must have less than N tokens".
_TOO_LONG = re.compile(r"`inputs` tokens \+ `max_new_tokens` must be|`inputs` must have less than|too long")


@attrs.frozen
class TGIInfo:
    """What ``GET /info`` says about the served model and the router's limits."""

    model_id: str
    max_input_tokens: int
    max_total_tokens: int
    max_concurrent_requests: int | None = None
    max_best_of: int | None = None
    max_stop_sequences: int | None = None
    max_client_batch_size: int | None = None
    version: str | None = None
    model_pipeline_tag: str | None = None
    model_sha: str | None = None


def parse_info(body: Any) -> TGIInfo:
    """``GET /info``; ``max_input_length`` is the pre-2.1 name of ``max_input_tokens``."""
    if not isinstance(body, dict) or not isinstance(body.get("model_id"), str):
        raise StreamFormatError("info reply has no model_id")
    max_input = body.get("max_input_tokens", body.get("max_input_length"))
    max_total = body.get("max_total_tokens")
    if not isinstance(max_input, int) or not isinstance(max_total, int):
        raise StreamFormatError("info reply has no max_input_tokens / max_total_tokens")

    def opt(key: str, kind: type) -> Any:
        value = body.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    return TGIInfo(
        model_id=body["model_id"],
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        max_concurrent_requests=opt("max_concurrent_requests", int),
        max_best_of=opt("max_best_of", int),
        max_stop_sequences=opt("max_stop_sequences", int),
        max_client_batch_size=opt("max_client_batch_size", int),
        version=opt("version", str),
        model_pipeline_tag=opt("model_pipeline_tag", str),
        model_sha=opt("model_sha", str),
    )


def features_for(info: TGIInfo | None) -> Features:
    """Features from /info: the window is ``max_total_tokens``; output can use all but one input token."""
    if info is None:
        return DEFAULT_FEATURES
    vision = info.model_pipeline_tag == "image-text-to-text" or any(
        hint in info.model_id.lower() for hint in _VISION_HINTS
    )
    return Features(
        streaming=True,
        tools=True,  # TGI implements tools with grammars for every model
        vision=vision,
        system_prompt=True,
        json_mode=True,
        context_window=info.max_total_tokens,
        max_output_tokens=max(1, info.max_total_tokens - 1),
    )


# --- Messages API --------------------------------------------------------------------------------


def build_chat_body(request: ProviderRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body: OpenAI's, with TGI's grammar for JSON mode."""
    body = openai_wire.build_body(request, model, stream=stream, reasoning=False)
    for message in body["messages"]:
        if message["role"] == "developer":  # chat templates know only system/user/assistant/tool
            message["role"] = "system"
    body.pop("response_format", None)
    if request.options.response_format == "json_object":
        body["response_format"] = {"type": "json", "value": {"type": "object"}}
    return body


def normalize_tool_arguments(reply: Any) -> Any:
    """A copy of a chat reply or chunk whose tool-call arguments are JSON text (TGI 2.x sent objects)."""
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
        return reply
    reply = copy.deepcopy(reply)
    for choice in reply["choices"]:
        if not isinstance(choice, dict):
            continue
        for key in ("message", "delta"):
            part = choice.get(key)
            calls = part.get("tool_calls") if isinstance(part, dict) else None
            for call in calls if isinstance(calls, list) else ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), dict | list):
                    function["arguments"] = json.dumps(function["arguments"])
    return reply


def fix_finish(completion: Completion) -> Completion:
    """TGI's ``eos_token``/``stop_sequence`` mean stop; a reply with tool calls finished for them."""
    finish = completion.finish_reason
    if completion.raw_finish_reason in GENERATE_FINISH:
        finish = GENERATE_FINISH[completion.raw_finish_reason]
    if completion.tool_calls and finish in (FinishReason.STOP, FinishReason.OTHER):
        finish = FinishReason.TOOL_CALLS
    return attrs.evolve(completion, finish_reason=finish)


def render_prompt(messages: Sequence[Message]) -> str:
    """The simple chat template used for token counting: ``role: text`` lines."""
    return "\n".join(f"{m.role}: {m.text}" for m in messages)


# --- /generate -----------------------------------------------------------------------------------


def build_generate_body(prompt: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """``/generate`` and ``/generate_stream`` body; details are always asked for (finish reason, counts)."""
    return {"inputs": prompt, "parameters": {**(parameters or {}), "details": True}}


def _finish(details: dict[str, Any]) -> tuple[FinishReason, str | None]:
    raw = details.get("finish_reason")
    if raw is not None and not isinstance(raw, str):
        raise StreamFormatError("details.finish_reason is not a string")
    return GENERATE_FINISH.get(raw or "", FinishReason.OTHER), raw


def _details(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StreamFormatError("details is not an object")
    return value


def _count(value: Any, fallback: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else fallback


def parse_generate(
    body: Any, model: str, headers: Mapping[str, str], rate_limit: RateLimitInfo | None = None
) -> Completion:
    """A ``/generate`` reply; token counts from details, else TGI's ``x-prompt-tokens`` headers."""
    if isinstance(body, list) and len(body) == 1:  # the compat route "/" wraps it in a list
        body = body[0]
    if not isinstance(body, dict) or not isinstance(body.get("generated_text"), str):
        raise StreamFormatError("generate reply has no generated_text")
    details = _details(body.get("details"))
    finish, raw = _finish(details)
    prompt_tokens = _count(parse_int(headers.get("x-prompt-tokens")), len(details.get("prefill") or ()))
    completion_tokens = _count(
        details.get("generated_tokens"), _count(parse_int(headers.get("x-generated-tokens")))
    )
    return Completion(
        model=model,
        content=body["generated_text"],
        finish_reason=finish,
        usage=Usage(prompt_tokens, completion_tokens),
        rate_limit=rate_limit,
        raw_finish_reason=raw,
    )


class GenerateStreamAssembler:
    """Turns ``/generate_stream`` events into text deltas and, on the event with ``generated_text``, a
    Completion. Special tokens (EOS) are not text."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False

    def feed(
        self, event: Any, rate_limit: RateLimitInfo | None = None
    ) -> tuple[list[StreamDelta], Completion | None]:
        """Consume one parsed event; return its deltas and, for the last event, the Completion."""
        if not isinstance(event, dict) or not isinstance(event.get("token"), dict):
            raise StreamFormatError("stream event has no token")
        token = event["token"]
        text = token.get("text", "")
        if not isinstance(text, str):
            raise StreamFormatError("token text is not a string")
        deltas = [StreamDelta(text=text)] if text and not token.get("special") else []
        final = event.get("generated_text")
        if final is None:
            return deltas, None
        if not isinstance(final, str):
            raise StreamFormatError("generated_text is not a string")
        details = _details(event.get("details"))
        finish, raw = _finish(details)
        usage = Usage(_count(details.get("input_length")), _count(details.get("generated_tokens")))
        self.done = True
        completion = Completion(
            self.model, final, finish_reason=finish, usage=usage, rate_limit=rate_limit, raw_finish_reason=raw
        )
        return deltas, completion


def parse_tokenize(body: Any) -> int:
    """The number of tokens in a ``/tokenize`` reply (a list of ``{id, text, start, stop}``)."""
    if not isinstance(body, list) or not all(isinstance(t, dict) and "id" in t for t in body):
        raise StreamFormatError("tokenize reply is not a list of tokens")
    return len(body)


# --- errors --------------------------------------------------------------------------------------


def error_kind(status: int | None, error_type: str | None, message: str) -> tuple[ErrorKind, bool | None]:
    """The kind (and a retryable override) of a TGI error.

    424 ``generation`` errors are failures inside the model shards (CUDA errors, OOM on a given input);
    the same request tends to fail the same way, so they are UPSTREAM_4XX and not retried.
    """
    if status == 422 or error_type == "validation":
        return (ErrorKind.CONTEXT_LENGTH if _TOO_LONG.search(message) else ErrorKind.INVALID_REQUEST), None
    if status == 424 or error_type == "generation":
        return ErrorKind.UPSTREAM_4XX, False
    if error_type == "overloaded":  # TGI's 429: max_concurrent_requests reached
        return ErrorKind.OVERLOADED, None
    if error_type == "incomplete_generation":
        return ErrorKind.UPSTREAM_5XX, None
    return (kind_for_status(status) if status is not None else ErrorKind.UPSTREAM_5XX), None


def make_error(
    status: int | None,
    headers: Mapping[str, str],
    body: Any,
    *,
    provider: str,
    model: str | None,
    secrets: Iterable[Secret | str | None],
) -> ProviderError:
    """The ProviderError of a TGI error reply or in-band error event (``body`` parsed JSON or text)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # an OpenAI-shaped proxy error
        return openai_wire.make_error(status, headers, body, provider=provider, model=model, secrets=secrets)
    message = error_message_from_body(body).strip() or "upstream error"
    error_type = body.get("error_type") if isinstance(body, dict) else None
    error_type = error_type if isinstance(error_type, str) else None
    kind, retryable = error_kind(status, error_type, message)
    details = [f"error_type={error_type}"] if error_type else []
    request_id = headers.get("x-request-id") or headers.get("request-id")
    if request_id:
        details.append(f"request id {request_id}")
    text = f"{message} ({', '.join(details)})" if details else message
    return ProviderError(
        kind,
        redact(text, secrets),
        provider=provider,
        model=model,
        retryable=retryable,
        retry_after=openai_wire.retry_after(headers),
        status=status,
    )
