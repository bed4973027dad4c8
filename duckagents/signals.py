"""Typed signals and their CloudEvents 1.0 envelope.

Agents and the router talk only through :class:`Signal` envelopes. ``Signal.type`` names the payload
(``provider_request``, ``provider_response``, ...); ``subject`` is the request id when there is one and
``provider`` (a CloudEvents extension attribute) the provider concerned, so the bus can filter on the
envelope alone. (De)serialisation to CloudEvents JSON lives in :mod:`duckagents.codec`.
"""

from __future__ import annotations

import itertools
import os
import time as _time
from typing import Any, ClassVar

import attrs

from .errors import ErrorKind, ProviderError
from .messages import Features, FinishReason, Message, RequestOptions, ToolCall, Usage

# --- payloads ------------------------------------------------------------------------------------


@attrs.frozen
class ProviderRequest:
    """Ask for one completion. ``deadline`` is absolute, on the Trio clock of the process."""

    TYPE: ClassVar[str] = "provider_request"
    request_id: str
    messages: tuple[Message, ...]
    model: str | None = None
    options: RequestOptions = RequestOptions()
    deadline: float | None = None
    #: The agent that must execute it (set by the router when dispatching), else ``None``.
    provider: str | None = None
    attempt: int = 1
    #: Features the caller needs (``"tools"``, ``"vision"``...), used for routing.
    required_features: tuple[str, ...] = ()
    #: Who submitted it: the *name* of the gateway token (never the token), for per-token budgets;
    #: ``None`` for requests made in-process without one.
    principal: str | None = None


@attrs.frozen
class ToolCallDelta:
    """A fragment of a streamed tool call; fragments with the same ``index`` concatenate."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@attrs.frozen
class ProviderChunk:
    """A piece of a streamed answer. ``index`` counts chunks of a request from 0."""

    TYPE: ClassVar[str] = "provider_chunk"
    request_id: str
    provider: str
    index: int
    delta: str = ""
    tool_call: ToolCallDelta | None = None


@attrs.frozen
class ProviderResponse:
    """The terminal success signal of a request."""

    TYPE: ClassVar[str] = "provider_response"
    request_id: str
    provider: str
    model: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = Usage()
    latency: float = 0.0
    time_to_first_chunk: float | None = None
    attempt: int = 1


@attrs.frozen
class ProviderErrorData:
    """The data of a ``provider_error`` signal: the terminal failure of a request (or of one attempt).

    Named after its wire type; the exception a caller sees is :class:`~duckagents.errors.ProviderError`
    (:meth:`to_error`). ``ProviderFailure`` is its former name, kept as an alias.

    ``partial`` is true when some chunks were already delivered, so the request must not be retried.
    """

    TYPE: ClassVar[str] = "provider_error"
    request_id: str
    kind: ErrorKind
    message: str
    retryable: bool = False
    provider: str | None = None
    model: str | None = None
    retry_after: float | None = None
    upstream_status: int | None = None
    attempt: int = 1
    agent_id: str | None = None
    breaker_state: str | None = None
    partial: bool = False

    @classmethod
    def from_error(cls, request_id: str, error: ProviderError, **context: Any) -> ProviderErrorData:
        """The payload for a :class:`ProviderError`: the one place a ``provider_error`` payload is built.

        ``context`` sets or overrides fields the error does not know (``provider``, ``model``,
        ``attempt``, ``agent_id``, ``breaker_state``, ``partial``, ``message``...), e.g. an agent's own.
        """
        fields: dict[str, Any] = {
            "kind": error.kind,
            "message": error.message,
            "retryable": error.retryable,
            "provider": error.provider,
            "model": error.model,
            "retry_after": error.retry_after,
            "upstream_status": error.status,
            "attempt": error.attempt or 1,
            "agent_id": error.agent_id,
            "breaker_state": error.breaker_state,
            "partial": error.partial,
        }
        fields.update(context)
        return cls(request_id=request_id, **fields)

    def to_error(self) -> ProviderError:
        """The exception a caller of ``router.complete()`` sees for this failure."""
        return ProviderError(
            self.kind,
            self.message,
            provider=self.provider,
            model=self.model,
            retryable=self.retryable,
            retry_after=self.retry_after,
            status=self.upstream_status,
            request_id=self.request_id,
            attempt=self.attempt,
            agent_id=self.agent_id,
            breaker_state=self.breaker_state,
            partial=self.partial,
        )


@attrs.frozen
class LatencySummary:
    """Latency percentiles in seconds over a bounded window of recent requests."""

    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    samples: int = 0


@attrs.frozen
class MetricsSnapshot:
    """Per-provider counters at one instant."""

    total_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    total_tokens: int = 0
    avg_latency: float = 0.0
    latency: LatencySummary = LatencySummary()
    time_to_first_chunk: LatencySummary = LatencySummary()
    in_flight: int = 0
    #: USD spent since the agent started (answered requests with a known price), and per model.
    cost: float = 0.0
    cost_by_model: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen
class Headroom:
    """What the rate limiter would still admit now (``None``: unlimited)."""

    requests: float | None = None
    tokens: float | None = None
    #: Earliest Trio-clock time at which a refused request could be admitted, if currently refusing.
    retry_at: float | None = None


@attrs.frozen
class ProviderStatus:
    """Health report of one provider agent."""

    TYPE: ClassVar[str] = "provider_status"
    provider: str
    health: float
    breaker_state: str
    headroom: Headroom = Headroom()
    metrics: MetricsSnapshot = MetricsSnapshot()
    reachable: bool = True
    detail: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class FeatureCheck:
    """Ask an agent (or every agent when ``provider`` is None) whether it supports features."""

    TYPE: ClassVar[str] = "feature_check"
    request_id: str
    features: tuple[str, ...] = ()
    provider: str | None = None
    model: str | None = None


@attrs.frozen
class FeatureReply:
    """An agent's answer to a :class:`FeatureCheck`."""

    TYPE: ClassVar[str] = "feature_reply"
    request_id: str
    provider: str
    model: str
    supported: dict[str, bool]
    features: Features = Features()


@attrs.frozen
class TokenEstimate:
    """Ask an agent to count the tokens of messages."""

    TYPE: ClassVar[str] = "token_estimate"
    request_id: str
    messages: tuple[Message, ...]
    provider: str | None = None
    model: str | None = None


@attrs.frozen
class TokenEstimateReply:
    """An agent's token count. ``exact`` is true when the provider's own tokenizer counted."""

    TYPE: ClassVar[str] = "token_estimate_reply"
    request_id: str
    provider: str
    model: str
    tokens: int
    exact: bool = False


@attrs.frozen
class SupervisorEvent:
    """A child started, crashed, was restarted or shut down, or a supervisor gave up.

    For ``crashed`` and ``gave_up``, ``reason`` is ``"Type: message"`` and ``error_type`` /
    ``error_message`` the exception's parts (of its first leaf: exception groups are flattened); for
    ``gave_up`` they describe the last crash, the one that exhausted the budget.
    """

    TYPE: ClassVar[str] = "supervisor_event"
    supervisor: str
    child: str
    event: str  # started | exited | crashed | restarted | gave_up | shutdown | killed
    reason: str = ""
    restarts: int = 0
    error_type: str = ""
    error_message: str = ""


@attrs.frozen
class ProgressEvent:
    """Progress of long work (a model pull): ``completed`` of ``total`` units, when known."""

    TYPE: ClassVar[str] = "progress"
    provider: str
    task: str
    status: str
    completed: int | None = None
    total: int | None = None


Payload = (
    ProviderRequest
    | ProviderChunk
    | ProviderResponse
    | ProviderErrorData
    | ProviderStatus
    | FeatureCheck
    | FeatureReply
    | TokenEstimate
    | TokenEstimateReply
    | SupervisorEvent
    | ProgressEvent
)

PAYLOAD_TYPES: dict[str, type[Any]] = {
    cls.TYPE: cls
    for cls in (
        ProviderRequest,
        ProviderChunk,
        ProviderResponse,
        ProviderErrorData,
        ProviderStatus,
        FeatureCheck,
        FeatureReply,
        TokenEstimate,
        TokenEstimateReply,
        SupervisorEvent,
        ProgressEvent,
    )
}

#: Signal types that end a request: exactly one of them is emitted per ``provider_request``.
TERMINAL_TYPES: frozenset[str] = frozenset({ProviderResponse.TYPE, ProviderErrorData.TYPE})

# --- envelope ------------------------------------------------------------------------------------

_ID_PREFIX = f"{os.getpid():x}-{int(_time.time() * 1000):x}-"
_ids = itertools.count(1)


def new_id() -> str:
    """A process-unique, cheap id (no uuid on the hot path)."""
    return f"{_ID_PREFIX}{next(_ids)}"


@attrs.frozen(slots=True)
class Signal:
    """A CloudEvents 1.0 envelope around one payload.

    ``time`` is wall-clock microseconds since the epoch (an int, so JSON round-trips are exact),
    rendered as RFC 3339 in JSON.
    """

    type: str
    source: str
    data: Payload
    id: str = attrs.field(factory=new_id)
    time: int = attrs.field(factory=lambda: _time.time_ns() // 1000)
    subject: str | None = None
    provider: str | None = None
    specversion: str = "1.0"
    datacontenttype: str = "application/json"

    @property
    def request_id(self) -> str | None:
        """The request this signal belongs to (the CloudEvents ``subject``), if any."""
        return self.subject

    @property
    def is_terminal(self) -> bool:
        """True for ``provider_response`` and ``provider_error``."""
        return self.type in TERMINAL_TYPES


def make_signal(data: Payload, source: str) -> Signal:
    """Wrap a payload in an envelope, deriving ``type``, ``subject`` and ``provider`` from it."""
    return Signal(
        type=data.TYPE,
        source=source,
        data=data,
        subject=getattr(data, "request_id", None),
        provider=getattr(data, "provider", None),
    )
