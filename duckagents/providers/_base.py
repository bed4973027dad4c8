"""The provider protocol and the neutral result types providers return.

A provider is a plain async class that speaks one API over httpx. It has no agent logic: rate limiting,
circuit breaking, metrics and signals are the agent's job (:mod:`duckagents.agents`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from ..errors import ErrorKind, Secret
from ..messages import Features, FinishReason, ImagePart, Message, ToolCall, Usage
from ..resilience import RateLimitInfo
from ..signals import ProviderRequest, ToolCallDelta


class WireFormatError(ValueError):
    """A value does not fit a provider's wire format. The one format-error type of every provider.

    Raised by the pure encoders and decoders (``_<provider>_wire``) and the stream parsers: for bytes or
    JSON the upstream sent that break its format (``kind`` PROTOCOL, the default), and for a request of
    ours the format cannot express, before anything is sent (``kind`` INVALID_REQUEST or UNSUPPORTED).
    The provider turns it into a :class:`~duckagents.errors.ProviderError` of that kind.
    """

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.PROTOCOL) -> None:
        super().__init__(message)
        self.kind = kind


class InBandError(Exception):
    """The upstream reported an error inside a successful reply (a stream event, an NDJSON line, a 200
    body): ``body`` is the error object, for the provider's error mapping (``_<provider>_errors``)."""

    def __init__(self, body: Any) -> None:
        super().__init__("error reported in band")
        self.body = body


@attrs.frozen
class Completion:
    """A finished completion in neutral form."""

    model: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = Usage()
    rate_limit: RateLimitInfo | None = None
    #: The provider's own finish reason string (``end_turn``, ``refusal``...), for diagnostics.
    raw_finish_reason: str | None = None


@attrs.frozen
class StreamDelta:
    """A streamed fragment: text and/or a tool-call fragment."""

    text: str = ""
    tool_call: ToolCallDelta | None = None


@attrs.frozen
class StreamEnd:
    """The last item of every stream: the assembled completion with usage and finish reason."""

    completion: Completion


StreamEvent = StreamDelta | StreamEnd


@attrs.frozen
class TokenCount:
    """A token count; ``exact`` when the provider's tokenizer produced it."""

    tokens: int
    exact: bool = False


@attrs.frozen
class HealthProbe:
    """The result of a cheap connectivity probe."""

    ok: bool
    latency: float = 0.0
    detail: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class ModelInfo:
    """A model a provider offers (and, for local servers, its load state and sizes in bytes)."""

    name: str
    context_window: int | None = None
    loaded: bool | None = None
    size: int | None = None
    size_vram: int | None = None
    expires_at: str | None = None


@runtime_checkable
class Provider(Protocol):
    """What every provider implements. ``name`` is the provider kind, e.g. ``"openai"``."""

    name: str
    default_model: str

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """Secrets this provider holds, so error messages can be redacted."""
        ...

    async def complete(self, request: ProviderRequest) -> Completion:
        """Run one non-streaming completion; raises :class:`~duckagents.errors.ProviderError`."""
        ...

    def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        """Stream a completion: :class:`StreamDelta` items, then exactly one :class:`StreamEnd`.

        Use it as ``async with contextlib.aclosing(provider.stream(req)) as events:``.
        """
        ...

    def features(self, model: str | None = None) -> Features:
        """What ``model`` (default: the provider's default model) supports."""
        ...

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """Count (exactly, where the API offers it) or estimate the input tokens of ``messages``."""
        ...

    async def health(self) -> HealthProbe:
        """A cheap connectivity probe; never raises for an unreachable upstream (``ok=False``)."""
        ...

    async def list_models(self) -> list[ModelInfo]:
        """The models the upstream offers."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP client."""
        ...


# A local estimate for providers without a tokenizer endpoint. English text averages about four
# characters per token for BPE tokenizers (OpenAI's published rule of thumb); each message costs a few
# tokens of framing; an image is charged a fixed budget comparable to a low-detail OpenAI tile.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
TOKENS_PER_IMAGE = 85


def heuristic_token_count(messages: Sequence[Message]) -> int:
    """Estimate input tokens: ceil(chars / 4) + 4 per message + 85 per image + tool-call text."""
    total = 3  # reply priming
    for message in messages:
        chars = len(message.text) + sum(len(c.name) + len(c.arguments) for c in message.tool_calls)
        total += TOKENS_PER_MESSAGE + math.ceil(chars / CHARS_PER_TOKEN)
        total += TOKENS_PER_IMAGE * sum(1 for p in message.content if isinstance(p, ImagePart))
    return total
