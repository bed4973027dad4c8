"""The OpenAI Chat Completions wire format: request bodies, replies and stream chunks.

Pure functions over JSON values, no I/O; :mod:`duckagents.providers._openai` does the HTTP and
:mod:`duckagents.providers._openai_errors` maps error replies and rate-limit headers. TGI's Messages API
reuses these pieces (:mod:`duckagents.providers._tgi_wire`).
Parsers raise :class:`~duckagents.providers._base.WireFormatError` on a malformed value (never a raw
``KeyError``/``TypeError``) and :class:`~duckagents.providers._base.InBandError` for an error object in
a 200 reply or in the stream; the provider turns those into ProviderErrors with their context.

Tool calls in replies, in neutral form (:class:`~duckagents.messages.ToolCall`):

* a ``function`` call is its name and its ``arguments`` JSON text;
* a ``custom`` (free-form) call is its name and its raw ``input`` text as ``arguments``, unchanged: it is
  not JSON (sent back in a later turn, it goes out as a function call with that text);
* the deprecated ``message.function_call`` (and ``delta.function_call`` in streams) is one more tool call,
  with the id ``call_<index>`` since it has none; ``finish_reason: "function_call"`` is ``tool_calls``.
"""

from __future__ import annotations

from typing import Any

from ..messages import FinishReason, ImagePart, Message, TextPart, ToolCall, ToolSpec, Usage
from ..signals import ProviderRequest, ToolCallDelta
from ._base import Completion, InBandError, RateLimitInfo, StreamDelta, StreamEnd, WireFormatError
from ._streams import sse_json

FINISH_REASONS: dict[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,  # deprecated functions API
    "content_filter": FinishReason.CONTENT_FILTER,
}

# --- requests ------------------------------------------------------------------------------------


def image_url(part: ImagePart) -> str:
    """The ``image_url.url`` of an image part: its URL, or a base64 data URL."""
    if part.url is not None:
        return part.url
    return f"data:{part.media_type or 'image/png'};base64,{part.data}"


def encode_message(message: Message) -> dict[str, Any]:
    """One neutral message as a Chat Completions message object."""
    out: dict[str, Any] = {"role": message.role}
    if message.images:
        out["content"] = [
            {"type": "text", "text": p.text}
            if isinstance(p, TextPart)
            else {"type": "image_url", "image_url": {"url": image_url(p)}}
            for p in message.content
        ]
    elif message.role == "assistant" and message.tool_calls and not message.text:
        out["content"] = None  # the API's shape for a pure tool-call turn
    else:
        out["content"] = message.text
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def encode_tool(tool: ToolSpec) -> dict[str, Any]:
    """A tool spec as a ``function`` tool."""
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def encode_tool_choice(choice: str) -> str | dict[str, Any]:
    """``auto``/``none``/``required`` pass through; anything else names the function to force."""
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def build_body(
    request: ProviderRequest, model: str, *, stream: bool, reasoning: bool, stream_usage: bool = True
) -> dict[str, Any]:
    """The JSON body of ``POST /chat/completions`` for ``request``.

    ``reasoning`` models (o-series, gpt-5) take ``max_completion_tokens`` and reject sampling parameters,
    so those are left out for them; other models get ``max_tokens``, which every OpenAI-compatible
    server understands.
    """
    opts = request.options
    body: dict[str, Any] = {"model": model, "messages": [encode_message(m) for m in request.messages]}
    if stream:
        body["stream"] = True
        if stream_usage:
            body["stream_options"] = {"include_usage": True}
    if opts.max_tokens is not None:
        body["max_completion_tokens" if reasoning else "max_tokens"] = opts.max_tokens
    if not reasoning:
        if opts.temperature is not None:
            body["temperature"] = opts.temperature
        if opts.top_p is not None:
            body["top_p"] = opts.top_p
    if opts.stop:
        body["stop"] = list(opts.stop)
    if opts.tools:
        body["tools"] = [encode_tool(t) for t in opts.tools]
        if opts.tool_choice is not None:  # the API rejects tool_choice without tools
            body["tool_choice"] = encode_tool_choice(opts.tool_choice)
    if opts.response_format is not None:
        body["response_format"] = {"type": opts.response_format}
    return body


# --- replies -------------------------------------------------------------------------------------


def _fail(what: str) -> WireFormatError:
    return WireFormatError(f"malformed OpenAI reply: {what}")


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{what} is not an object")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _fail(f"{what} is not a string")


def _int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _fail(f"{what} is not a non-negative integer")


def parse_usage(value: Any) -> Usage:
    """``usage`` of a reply or the final stream chunk (missing or null: zeros)."""
    if value is None:
        return Usage()
    usage = _obj(value, "usage")
    return Usage(
        prompt_tokens=_int(usage.get("prompt_tokens", 0), "usage.prompt_tokens"),
        completion_tokens=_int(usage.get("completion_tokens", 0), "usage.completion_tokens"),
    )


def finish_reason(raw: str | None, refused: bool = False) -> FinishReason:
    """Map the API's ``finish_reason``; a refusal (the ``refusal`` field instead of content) wins."""
    if refused:
        return FinishReason.REFUSAL
    return FINISH_REASONS.get(raw or "", FinishReason.OTHER)


def is_error(obj: Any) -> bool:
    """Is ``obj`` (a reply body or a stream chunk) an error object (``{"error": ...}`` without choices)?"""
    return type(obj) is dict and bool(obj.get("error")) and "choices" not in obj


def _tool_call(value: Any, index: int) -> ToolCall:
    call = _obj(value, f"tool_calls[{index}]")
    kind = call.get("type") or "function"
    if not isinstance(kind, str):
        raise _fail(f"tool_calls[{index}].type is not a string")
    # The payload sits under the call's type: {"function": {"name", "arguments"}} or
    # {"custom": {"name", "input"}}; a later type of the same shape is read the same way.
    payload = _obj(call.get(kind), f"tool_calls[{index}].{kind}")
    name = _opt_str(payload.get("name"), f"{kind}.name")
    if not name:
        raise _fail(f"tool_calls[{index}] has no {kind} name")
    if kind == "function" or "input" not in payload:
        arguments = _opt_str(payload.get("arguments"), f"{kind}.arguments") or "{}"
    else:
        arguments = _opt_str(payload.get("input"), f"{kind}.input") or ""
    call_id = _opt_str(call.get("id"), "tool call id") or f"call_{index}"
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _function_call(value: Any, index: int) -> ToolCall:
    """The deprecated ``function_call`` of a message as the tool call at ``index``."""
    function = _obj(value, "message.function_call")
    name = _opt_str(function.get("name"), "function_call.name")
    if not name:
        raise _fail("function_call has no name")
    arguments = _opt_str(function.get("arguments"), "function_call.arguments") or "{}"
    return ToolCall(id=f"call_{index}", name=name, arguments=arguments)


def parse_completion(body: Any, model: str, rate_limit: RateLimitInfo | None = None) -> Completion:
    """A ``chat.completion`` object as a :class:`Completion` (the first choice)."""
    if is_error(body):
        raise InBandError(body)
    reply = _obj(body, "body")
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _fail("no choices")
    choice = _obj(choices[0], "choices[0]")
    message = _obj(choice.get("message"), "choices[0].message")
    content = _opt_str(message.get("content"), "message.content") or ""
    refusal = _opt_str(message.get("refusal"), "message.refusal")
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _fail("message.tool_calls is not a list")
    calls = [_tool_call(c, i) for i, c in enumerate(raw_calls)]
    if message.get("function_call") is not None:
        calls.append(_function_call(message["function_call"], len(calls)))
    raw_reason = _opt_str(choice.get("finish_reason"), "finish_reason")
    return Completion(
        model=_opt_str(reply.get("model"), "model") or model,
        content=content or refusal or "",
        tool_calls=tuple(calls),
        finish_reason=finish_reason(raw_reason, refused=bool(refusal) and not content),
        usage=parse_usage(reply.get("usage")),
        rate_limit=rate_limit,
        raw_finish_reason=raw_reason,
    )


def parse_model_ids(body: Any) -> list[str]:
    """The model ids of a ``GET /models`` reply."""
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("id"), str) for entry in entries
    ):
        raise WireFormatError("invalid model list: no data array of models with string ids")
    return [entry["id"] for entry in entries]


class StreamAssembler:
    """Turns the SSE data of a ``chat.completion.chunk`` stream into deltas and, after ``[DONE]``, one
    :class:`~._base.StreamEnd`: the decoder of the provider's stream (``HTTPProvider._stream``).

    Tool-call fragments are keyed by their ``index``: OpenAI sends ``id`` and ``name`` whole in the
    first fragment of a call and only ``arguments`` pieces after it, so the first id/name seen wins
    (some compatible servers repeat them in every fragment). A ``custom`` call's ``input`` pieces are its
    arguments; a legacy ``function_call`` delta is the call at index 0 (the API never mixes the two).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, argument pieces]
        self._raw_reason: str | None = None
        self._usage = Usage()

    def feed(self, data: str) -> list[StreamDelta]:
        """Consume one SSE event's data: ``[DONE]`` ends the stream, an error object raises
        :class:`~._base.InBandError`, a chunk gives its deltas."""
        # A chunk object starts with "{" and cannot be [DONE]: no strip() per event.
        if data[:1] != "{" and data.strip() == "[DONE]":
            self.done = True
            return []
        chunk = sse_json(data)
        if is_error(chunk):
            raise InBandError(chunk)
        return self.feed_chunk(chunk)

    def feed_chunk(self, chunk: Any) -> list[StreamDelta]:
        """Consume one parsed chunk; return the deltas it carries (only choice 0 is followed)."""
        deltas: list[StreamDelta] = []
        data = _obj(chunk, "chunk")
        model = data.get("model")
        if model and isinstance(model, str):
            self.model = model
        if data.get("usage") is not None:
            self._usage = parse_usage(data["usage"])
        choices = data.get("choices") or []
        if not isinstance(choices, list):
            raise _fail("chunk choices is not a list")
        for raw_choice in choices:
            choice = _obj(raw_choice, "chunk choice")
            if choice.get("index", 0) != 0:
                continue
            reason = _opt_str(choice.get("finish_reason"), "finish_reason")
            if reason:
                self._raw_reason = reason
            delta = _obj(choice.get("delta") or {}, "delta")
            text = _opt_str(delta.get("content"), "delta.content")
            refusal = _opt_str(delta.get("refusal"), "delta.refusal")
            # Empty pieces are not kept: the joined text is the same and a plain text delta costs one
            # append instead of two.
            if text:
                self._text.append(text)
            if refusal:
                self._refusal.append(refusal)
            if text or refusal:
                deltas.append(StreamDelta(text=text or refusal or ""))
            raw_calls = delta.get("tool_calls")
            if raw_calls:
                if not isinstance(raw_calls, list):
                    raise _fail("delta.tool_calls is not a list")
                deltas.extend(StreamDelta(tool_call=self._tool_fragment(c)) for c in raw_calls)
            if delta.get("function_call") is not None:
                deltas.append(StreamDelta(tool_call=self._function_fragment(delta["function_call"])))
        return deltas

    def _tool_fragment(self, value: Any) -> ToolCallDelta:
        frag = _obj(value, "tool call fragment")
        index = _int(frag.get("index"), "tool call index")
        payload = _obj(frag.get("function") or frag.get("custom") or {}, "tool call function")
        piece = payload.get("arguments") if "input" not in payload else payload.get("input")
        return self._fragment(index, _opt_str(frag.get("id"), "tool call id"), payload.get("name"), piece)

    def _function_fragment(self, value: Any) -> ToolCallDelta:
        function = _obj(value, "delta.function_call")
        return self._fragment(0, None, function.get("name"), function.get("arguments"))

    def _fragment(self, index: int, call_id: str | None, name: Any, arguments: Any) -> ToolCallDelta:
        fragment = ToolCallDelta(
            index=index,
            id=call_id,
            name=_opt_str(name, "function.name"),
            arguments=_opt_str(arguments, "function.arguments") or "",
        )
        slot = self._calls.setdefault(index, [None, None, []])
        slot[0] = slot[0] or fragment.id
        slot[1] = slot[1] or fragment.name
        slot[2].append(fragment.arguments)
        return fragment

    def finish(self, rate_limit: RateLimitInfo | None = None) -> StreamEnd:
        """The stream's last event; raises :class:`~._base.WireFormatError` before ``[DONE]``."""
        if not self.done:
            raise WireFormatError("stream ended without data: [DONE]")
        return StreamEnd(self.completion(rate_limit))

    def completion(self, rate_limit: RateLimitInfo | None = None) -> Completion:
        """The completion assembled from the chunks so far."""
        calls = []
        for index in sorted(self._calls):
            call_id, name, pieces = self._calls[index]
            if not name:
                raise _fail(f"streamed tool call {index} has no function name")
            arguments = "".join(pieces) or "{}"
            calls.append(ToolCall(id=call_id or f"call_{index}", name=name, arguments=arguments))
        text, refusal = "".join(self._text), "".join(self._refusal)
        return Completion(
            model=self.model,
            content=text or refusal,
            tool_calls=tuple(calls),
            finish_reason=finish_reason(self._raw_reason, refused=bool(refusal) and not text),
            usage=self._usage,
            rate_limit=rate_limit,
            raw_finish_reason=self._raw_reason,
        )
