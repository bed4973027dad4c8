"""The Hugging Face TGI wire format: the Messages API where it differs from OpenAI's, /generate(_stream),
/info and /tokenize (errors: :mod:`._tgi_errors`, what the served model supports: :mod:`._tgi_models`).

The Messages API (``/v1/chat/completions``) is OpenAI-shaped, so its bodies and replies go through
:mod:`duckagents.providers._openai_wire`; this module only adapts what TGI does differently:

* a message is either ``content`` or ``tool_calls`` (TGI's ``MessageBody`` is one or the other; given
  both it keeps the text and drops the calls). An assistant turn with text and tool calls is therefore
  sent as two assistant messages: its text, then its tool calls, so the tool results that follow answer
  calls the model saw. A tool-call message carries no ``content`` key at all;
* a tool definition's JSON schema goes in ``function.arguments`` (TGI's name; ``parameters`` is only an
  alias there), and ``developer`` turns are ``system`` ones (chat templates know four roles);
* JSON mode is a grammar; tool-call arguments may come back as an object; ``eos_token`` finish reasons.

Pure functions, no I/O; parsers raise :class:`~._base.WireFormatError`, error events
:class:`~._base.InBandError`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from ..messages import FinishReason, Message, ToolSpec, Usage
from ..signals import ProviderRequest
from . import _openai_wire as openai_wire
from ._base import Completion, InBandError, RateLimitInfo, StreamDelta, StreamEnd, WireFormatError
from ._http import parse_int
from ._streams import sse_json
from ._tgi_models import TGIInfo

GENERATE_FINISH: dict[str, FinishReason] = {
    "length": FinishReason.LENGTH,
    "eos_token": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
}


# --- Messages API --------------------------------------------------------------------------------


def encode_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Neutral messages as TGI's: a message is content or tool calls, never both (module docstring)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item = openai_wire.encode_message(message)
        if item["role"] == "developer":  # chat templates know only system/user/assistant/tool
            item["role"] = "system"
        calls = item.pop("tool_calls", None)
        if calls:
            text = item.pop("content", None)
            if text:
                out.append({**item, "content": text})
            item["tool_calls"] = calls
        out.append(item)
    return out


def encode_tool(tool: ToolSpec) -> dict[str, Any]:
    """A tool definition as TGI's ``Tool``: the JSON schema of its parameters is ``function.arguments``."""
    function: dict[str, Any] = {"name": tool.name, "arguments": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def build_body(request: ProviderRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body: OpenAI's, with TGI's messages, tools and JSON-mode grammar."""
    body = openai_wire.build_body(request, model, stream=stream, reasoning=False)
    body["messages"] = encode_messages(request.messages)
    if request.options.tools:
        body["tools"] = [encode_tool(tool) for tool in request.options.tools]
    body.pop("response_format", None)
    if request.options.response_format == "json_object":
        body["response_format"] = {"type": "json", "value": {"type": "object"}}
    return body


def _functions(reply: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``function`` objects of a chat reply's or chunk's tool calls."""
    for choice in reply["choices"]:
        for key in ("message", "delta"):
            part = choice.get(key) if isinstance(choice, dict) else None
            calls = part.get("tool_calls") if isinstance(part, dict) else None
            for call in calls if isinstance(calls, list) else ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    yield function


def normalize_tool_arguments(reply: Any) -> Any:
    """A chat reply or chunk whose tool-call arguments are JSON text (TGI 2.x sent objects): ``reply``
    itself when none is an object (the usual chunk), else a converted copy."""
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
        return reply
    if not any(isinstance(f.get("arguments"), dict | list) for f in _functions(reply)):
        return reply
    reply = copy.deepcopy(reply)
    for function in _functions(reply):
        if isinstance(function.get("arguments"), dict | list):
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


def parse_completion(body: Any, model: str, rate_limit: RateLimitInfo | None = None) -> Completion:
    """A ``/v1/chat/completions`` reply as a :class:`Completion`."""
    return fix_finish(openai_wire.parse_completion(normalize_tool_arguments(body), model, rate_limit))


class StreamAssembler(openai_wire.StreamAssembler):
    """OpenAI's chunk assembler with TGI's differences: object arguments, ``eos_token`` finishes, and
    its ``{"error", "error_type"}`` events (no ``choices``: :func:`~._openai_wire.is_error`)."""

    def feed_chunk(self, chunk: Any) -> list[StreamDelta]:
        """Consume one parsed chunk (its tool-call arguments as JSON text)."""
        return super().feed_chunk(normalize_tool_arguments(chunk))

    def completion(self, rate_limit: RateLimitInfo | None = None) -> Completion:
        """The completion assembled so far, with TGI's finish reasons mapped."""
        return fix_finish(super().completion(rate_limit))


def render_prompt(messages: Sequence[Message]) -> str:
    """The simple chat template used for token counting: ``role: text`` lines."""
    return "\n".join(f"{m.role}: {m.text}" for m in messages)


# --- /info and /tokenize -------------------------------------------------------------------------


def _number(value: Any) -> int | None:
    """A non-negative count as TGI versions (and proxies in front of them) write it: an int, an
    integral float, or a decimal string; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None
    return value if isinstance(value, int) and value >= 0 else None


def parse_info(body: Any) -> TGIInfo:
    """``GET /info``, leniently: only ``model_id`` and the token limits are required (a count may be
    written as a string); ``max_input_length`` is the pre-2.1 name of ``max_input_tokens``, and without
    either the input may use all but one of ``max_total_tokens`` (TGI's own default). Fields of the wrong
    type that we do not need are skipped, not refused."""
    if not isinstance(body, dict) or not isinstance(body.get("model_id"), str) or not body["model_id"]:
        raise WireFormatError("info reply has no model_id")
    max_total = _number(body.get("max_total_tokens"))
    if max_total is None:
        raise WireFormatError("info reply has no max_total_tokens")
    max_input = _number(body.get("max_input_tokens"))
    if max_input is None:
        max_input = _number(body.get("max_input_length"))
    if max_input is None:
        max_input = max(1, max_total - 1)

    def text(key: str) -> str | None:
        value = body.get(key)
        return value if isinstance(value, str) else None

    return TGIInfo(
        model_id=body["model_id"],
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        max_concurrent_requests=_number(body.get("max_concurrent_requests")),
        max_best_of=_number(body.get("max_best_of")),
        max_stop_sequences=_number(body.get("max_stop_sequences")),
        max_client_batch_size=_number(body.get("max_client_batch_size")),
        version=text("version"),
        model_pipeline_tag=text("model_pipeline_tag"),
        model_sha=text("model_sha"),
    )


def parse_tokenize(body: Any) -> int:
    """The number of tokens in a ``/tokenize`` reply (a list of ``{id, text, start, stop}``)."""
    if not isinstance(body, list) or not all(isinstance(t, dict) and "id" in t for t in body):
        raise WireFormatError("tokenize reply is not a list of tokens")
    return len(body)


# --- /generate -----------------------------------------------------------------------------------


def build_generate_body(prompt: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """``/generate`` and ``/generate_stream`` body; details are always asked for (finish reason, counts)."""
    return {"inputs": prompt, "parameters": {**(parameters or {}), "details": True}}


def _finish(details: dict[str, Any]) -> tuple[FinishReason, str | None]:
    raw = details.get("finish_reason")
    if raw is not None and not isinstance(raw, str):
        raise WireFormatError("details.finish_reason is not a string")
    return GENERATE_FINISH.get(raw or "", FinishReason.OTHER), raw


def _details(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WireFormatError("details is not an object")
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
        raise WireFormatError("generate reply has no generated_text")
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
    """Turns the SSE data of ``/generate_stream`` into text deltas and, after the event with
    ``generated_text``, one :class:`~._base.StreamEnd`. Special tokens (EOS) are not text; an
    ``{"error", "error_type"}`` event (a late failure) raises :class:`~._base.InBandError`."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._final = ""
        self._details: dict[str, Any] = {}

    def feed(self, data: str) -> list[StreamDelta]:
        """Consume one event's data; return its deltas."""
        event = sse_json(data)
        if isinstance(event, dict) and "error" in event and "token" not in event:
            raise InBandError(event)
        if not isinstance(event, dict) or not isinstance(event.get("token"), dict):
            raise WireFormatError("stream event has no token")
        token = event["token"]
        text = token.get("text", "")
        if not isinstance(text, str):
            raise WireFormatError("token text is not a string")
        deltas = [StreamDelta(text=text)] if text and not token.get("special") else []
        final = event.get("generated_text")
        if final is None:
            return deltas
        if not isinstance(final, str):
            raise WireFormatError("generated_text is not a string")
        self._details = _details(event.get("details"))
        _finish(self._details)  # a malformed finish reason fails on this event, not later
        self._final = final
        self.done = True
        return deltas

    def finish(self, rate_limit: RateLimitInfo | None = None) -> StreamEnd:
        """The stream's last event; raises :class:`~._base.WireFormatError` before ``generated_text``."""
        if not self.done:
            raise WireFormatError("generate stream ended without generated_text")
        details = self._details
        finish, raw = _finish(details)
        usage = Usage(_count(details.get("input_length")), _count(details.get("generated_tokens")))
        completion = Completion(
            self.model, self._final, finish_reason=finish, usage=usage, rate_limit=rate_limit,
            raw_finish_reason=raw,
        )
        return StreamEnd(completion)
