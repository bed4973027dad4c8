"""Typed signals and their CloudEvents 1.0 envelope.

Agents and the router talk only through :class:`Signal` envelopes. ``Signal.type`` names the payload
(``provider_request``, ``provider_response``, ...); ``subject`` is the request id when there is one and
``provider`` (a CloudEvents extension attribute) the provider concerned, so the bus can filter on the
envelope alone. (De)serialisation to CloudEvents JSON lives in :mod:`duckagents.codec`.
"""

from __future__ import annotations

import enum
import itertools
import os
import time as _time
from collections.abc import Collection, Sequence
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
class AttemptOutcome:
    """How one attempt of a request ended, as the router saw it: listed in a final result's ``attempts``
    when the request took more than one attempt (failover made visible, e.g. by ``ask -v``).

    ``outcome`` is ``"response"`` or the failure's :class:`~duckagents.errors.ErrorKind` value;
    ``latency`` is seconds from the agent receiving the attempt to its terminal (the router's own
    measure, from dispatch, when the agent gave none).
    """

    attempt: int
    provider: str
    model: str | None
    outcome: str
    latency: float | None = None


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
    #: In a final result that took several attempts: each of them, in order (empty otherwise).
    attempts: tuple[AttemptOutcome, ...] = ()


@attrs.frozen
class ProviderErrorData:
    """The data of a ``provider_error`` signal: the terminal failure of a request (or of one attempt).

    Named after its wire type; the exception a caller sees is :class:`~duckagents.errors.ProviderError`
    (:meth:`to_error`). ``ProviderFailure`` is its former name, kept as an alias.

    ``partial`` is true when some chunks were already delivered, so the request must not be retried.
    ``latency`` is seconds from the agent receiving the attempt to the failure (the router's measure from
    the dispatch when it answered on the agent's behalf; None for the router's own failures);
    ``attempts`` lists every attempt of a final result that took several (empty otherwise).
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
    latency: float | None = None
    attempts: tuple[AttemptOutcome, ...] = ()

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

    @classmethod
    def of(cls, samples: Collection[float]) -> LatencySummary:
        """p50 / p95 / p99 of ``samples`` by linear interpolation between order statistics.

        Matches ``statistics.quantiles(samples, n=100, method="inclusive")`` up to float rounding (and
        stays within the data, which that function's rounding does not always); a single sample is every
        percentile; no samples give zeros.
        """
        if not samples:
            return cls()
        ordered = sorted(samples)
        return cls(p50=_cut(ordered, 50), p95=_cut(ordered, 95), p99=_cut(ordered, 99), samples=len(ordered))


# statistics.quantiles(n=100, method="inclusive") cut points 50, 95 and 99, computed directly so a summary
# sorts once and interpolates three times instead of building all 99 cut points.
_CUTS = 100


def _cut(ordered: Sequence[float], i: int) -> float:
    # The same order statistics and weights as statistics.quantiles(method="inclusive"), but written as
    # x + (y - x) * w and clamped, so rounding never lands a percentile outside its two samples (the
    # module's (x * (n - d) + y * d) / n form can), which keeps p50 <= p95 <= p99 within the data.
    j, delta = divmod(i * (len(ordered) - 1), _CUTS)
    low = ordered[j]
    if delta == 0:
        return low
    high = ordered[j + 1]
    return min(high, max(low, low + (high - low) * delta / _CUTS))


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
    #: The agent takes no new requests (an operator drained it); those in flight finish.
    draining: bool = False


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
    """Progress of long work (a model pull): ``completed`` of ``total`` units, when known.

    The last event of a task has ``outcome`` set: ``"success"`` or ``"error"`` (``status`` then says
    why); ``None`` while it runs.
    """

    TYPE: ClassVar[str] = "progress"
    provider: str
    task: str
    status: str
    completed: int | None = None
    total: int | None = None
    outcome: str | None = None


class ControlAction(str, enum.Enum):
    """What an operator control does (docs/signals.md, *Operator controls*)."""

    BREAKER_RESET = "breaker_reset"
    BREAKER_FORCE_OPEN = "breaker_force_open"
    BREAKER_DISABLE = "breaker_disable"
    DRAIN = "drain"
    RESUME = "resume"
    MODELS_LIST = "models_list"
    MODEL_LOAD = "model_load"
    MODEL_UNLOAD = "model_unload"
    MODEL_PULL = "model_pull"
    #: Not sent to an agent: the tree re-read its configuration (reported by a ``control_reply``).
    RELOAD = "reload"


#: Actions that name a model.
MODEL_ACTIONS: frozenset[ControlAction] = frozenset(
    {ControlAction.MODEL_LOAD, ControlAction.MODEL_UNLOAD, ControlAction.MODEL_PULL}
)


@attrs.frozen
class ProviderControl:
    """An operator's control addressed to one agent. ``principal`` says who asked: a gateway token's
    name (``token:<ENV VAR>``, never the token), ``"api"`` (Python), ``"cli"``, ``"sighup"``, ``"reload"``."""

    TYPE: ClassVar[str] = "provider_control"
    request_id: str
    provider: str
    action: ControlAction
    principal: str
    model: str | None = None


@attrs.frozen
class ModelEntry:
    """A model an agent offers, in the reply to ``models_list`` (sizes in bytes, when known)."""

    name: str
    loaded: bool | None = None
    size: int | None = None
    size_vram: int | None = None
    context_window: int | None = None


@attrs.frozen
class ControlReply:
    """The outcome of an operator control: who (``principal``) did what (``action``) to which agent
    (``provider``; None for a reload), and how it went (``ok``, ``message``). Published by the agent that
    applied a ``provider_control`` (with its breaker state and draining flag after it), and by the router
    for a reload. Every control gets exactly one."""

    TYPE: ClassVar[str] = "control_reply"
    request_id: str
    action: ControlAction
    principal: str
    ok: bool
    message: str = ""
    provider: str | None = None
    breaker_state: str | None = None
    draining: bool | None = None
    models: tuple[ModelEntry, ...] = ()
    detail: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class FleetDegraded:
    """This replica lost the fleet's Redis (unreachable, or slower than ``[fleet] timeout``): until it
    re-joins, its rate limits are its share of the fleet's (limit / ``expected_replicas``), its breakers
    its own, its budgets its share, and its signals reach only its own gateway's clients."""

    TYPE: ClassVar[str] = "fleet_degraded"
    #: The replica (``[fleet] instance``).
    instance: str
    #: The Redis operation that failed and why (never a password).
    reason: str
    expected_replicas: int = 1


@attrs.frozen
class FleetRejoined:
    """This replica reaches the fleet's Redis again: shared limits, breakers, budgets and stream decide."""

    TYPE: ClassVar[str] = "fleet_rejoined"
    instance: str
    #: Seconds it was degraded.
    degraded_for: float = 0.0
    #: Signals it could not append to the fleet's stream since it degraded (lost for other replicas'
    #: clients; its own gateway's clients saw them).
    dropped_signals: int = 0


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
    | ProviderControl
    | ControlReply
    | FleetDegraded
    | FleetRejoined
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
        ProviderControl,
        ControlReply,
        FleetDegraded,
        FleetRejoined,
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
    #: The fleet replica it comes from (``[fleet] instance``), set on signals read from the fleet's
    #: stream; None in one process. A CloudEvents extension attribute.
    instance: str | None = None

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
