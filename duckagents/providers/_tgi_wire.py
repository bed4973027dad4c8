"""The Hugging Face TGI wire format: /info, /generate(_stream) and /tokenize (errors: :mod:`._tgi_errors`).

The Messages API (``/v1/chat/completions``) is OpenAI-shaped, so its bodies and replies go through
:mod:`duckagents.providers._openai_wire`; this module only adapts what TGI does differently (JSON mode
is a grammar, tool-call arguments may arrive as an object, ``eos_token`` finish reasons). Pure
functions, no I/O; parsers raise ``StreamFormatError``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..messages import Features, FinishReason, Message, Usage
from ..signals import ProviderRequest
from . import _openai_wire as openai_wire
from ._base import Completion, RateLimitInfo, StreamDelta
from ._http import parse_int
from ._streams import StreamFormatError

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

    def features(self) -> Features:
        """What the served model supports, by this ``/info`` (see :func:`features_for`)."""
        return features_for(self)


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
