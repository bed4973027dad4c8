"""The router's view of one provider agent, built from signals only, and the eligibility rules.

An :class:`AgentView` is updated from ``provider_status``, ``feature_reply``, ``supervisor_event``,
``control_reply`` and the terminal signals of attempts; :meth:`AgentView.eligibility` says whether a
request for a model may go to the agent now, later (and from when), or never. Each clause of it is one
reason to skip the agent.

Out of rotation, by these fields: ``up`` False (crashed, or not started yet: wait), ``draining`` (an
operator drained it: wait, another agent or its replacement may come), ``breaker_state`` ``"open"`` (wait
until ``breaker_retry_at``) or ``"forced_open"`` (never, until an operator resets it). ``"disabled"``
(the breaker switched off) is in rotation like ``"closed"``.

The view also counts what the agent answered (:meth:`AgentView.metrics`), from the terminals the router
sees anyway: that is what keeps ``router.status()`` current to the last request, between the agent's own
(periodic) reports, with no extra signal per request.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import attrs

from ..config import ProviderConfig
from ..costs import ModelPrice
from ..errors import ErrorKind
from ..messages import FEATURE_NAMES, Features, Message, RequestOptions, implied_features
from ..providers import heuristic_token_count
from ..signals import (
    ControlAction,
    ControlReply,
    FeatureReply,
    LatencySummary,
    MetricsSnapshot,
    ProviderErrorData,
    ProviderResponse,
    ProviderStatus,
)
from ._strategies import Candidate

__all__ = ["AgentView", "Eligibility", "Needs", "needs_of"]

#: Weight of the newest sample in the router's moving average of an agent's latency.
LATENCY_ALPHA = 0.3
#: Models an agent said it does not have (``not_found``), remembered until its next status (bounded).
MAX_MISSING_MODELS = 256
#: Provider kinds whose missing models ``duckagents pull`` fetches.
PULLABLE_KINDS = frozenset({"ollama"})
#: Latencies of an agent's recent answers the view keeps for its percentiles.
RECENT_LATENCIES = 256
#: The breaker state an operator holds an agent out of rotation with, until it resets the breaker.
FORCED_OPEN = "forced_open"
_SWITCHES = frozenset(
    {ControlAction.BREAKER_RESET, ControlAction.BREAKER_FORCE_OPEN, ControlAction.BREAKER_DISABLE,
     ControlAction.DRAIN, ControlAction.RESUME}
)
_KNOWN_FEATURES = frozenset(FEATURE_NAMES)


@attrs.frozen
class Needs:
    """What a request needs from a provider."""

    features: frozenset[str] = frozenset()
    #: Estimated input tokens plus ``max_tokens``: must fit the context window.
    tokens: int = 0
    input_tokens: int = 0
    max_tokens: int | None = None
    model: str | None = None


def needs_of(
    messages: Sequence[Message], options: RequestOptions, required: Sequence[str], model: str | None
) -> Needs:
    """The features a request implies (tools, vision, json_mode) plus those it names, and its size.

    Raises ``ValueError`` for an unknown feature name.
    """
    features = set(required)
    unknown = features - _KNOWN_FEATURES
    if unknown:
        known = ", ".join(FEATURE_NAMES)
        raise ValueError(f"unknown feature(s) {', '.join(sorted(unknown))}; known: {known}")
    features |= implied_features(messages, options)
    input_tokens = heuristic_token_count(_untrimmable(messages) if options.allow_trim else messages)
    return Needs(
        frozenset(features), input_tokens + (options.max_tokens or 0), input_tokens, options.max_tokens, model
    )


def _untrimmable(messages: Sequence[Message]) -> list[Message]:
    """What an agent that trims (``allow_trim``) must still send: the system prompt and the last user
    turn. The window check is against these, so the request reaches an agent that can make it fit."""
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    return [m for m in messages if m.role in ("system", "developer") or m is last_user]


@attrs.frozen
class Eligibility:
    """``ok``; or not now but maybe at ``retry_at`` (``inf``: when the view changes); or never."""

    ok: bool
    retry_at: float | None = None
    reason: str = ""
    #: Why it must wait (lets the router say "rate limited" rather than "no provider"), or why never
    #: (``unsupported``, ``context_length``, ``not_found``: they decide which fallback chain applies).
    kind: ErrorKind = ErrorKind.NO_PROVIDER


_ELIGIBLE = Eligibility(True)


@attrs.define(eq=False)
class AgentView:
    """What the router believes about one agent."""

    config: ProviderConfig
    order: int
    status: ProviderStatus | None = None
    #: Features per model, from ``feature_reply``; key ``None`` is the agent's default model.
    features: dict[str | None, Features] = attrs.field(factory=dict)
    default_reply: FeatureReply | None = None
    #: False from a crash until the agent reports again (status or a supervisor's restarted).
    up: bool = False
    breaker_state: str = "closed"
    breaker_retry_at: float | None = None
    #: No requests before this time (upstream said retry-after, or the limiter refuses).
    cooldown_until: float = -math.inf
    #: Attempts in flight on this agent, dispatched by the router.
    active: int = 0
    latency: float | None = None
    features_asked: bool = False
    #: Models the agent answered ``not_found`` for since its last status: it cannot serve them now.
    missing: set[str] = attrs.field(factory=set)
    #: Drained by an operator: no new attempts; those in flight finish (from the agent's control replies,
    #: and set by the router as it sends a drain).
    draining: bool = False
    #: Why its supervisor marked it down (``crashed: ...``, ``gave_up: ...``), until it is started again.
    down: str | None = None
    #: What the agent answered, counted from its terminals (see :meth:`metrics`).
    answered: int = 0
    succeeded: int = 0
    tokens: int = 0
    latency_sum: float = 0.0
    recent_latencies: deque[float] = attrs.field(factory=lambda: deque(maxlen=RECENT_LATENCIES))
    recent_first_chunks: deque[float] = attrs.field(factory=lambda: deque(maxlen=RECENT_LATENCIES))

    @property
    def name(self) -> str:
        """The agent's (provider config's) name."""
        return self.config.name

    @property
    def healthy(self) -> bool:
        """False while the agent's last health probe failed (``provider_status.reachable``)."""
        status = self.status
        return status is None or status.reachable

    def serves(self, model: str | None) -> bool:
        """Does this agent serve ``model`` (None: its default model)? See ``ProviderConfig.serves``."""
        return model is None or self.config.serves(model)

    def features_for(self, model: str | None) -> Features | None:
        """Known features of ``model`` (falling back to the default model's), or None before a reply."""
        return self.features.get(model, self.features.get(None))

    @property
    def disabled(self) -> str | None:
        """Why the agent can never serve (its status' ``detail.disabled``, e.g. a missing API key)."""
        return None if self.status is None else self.status.detail.get("disabled")

    def eligibility(self, needs: Needs, model: str, now: float) -> Eligibility:
        """May a request with ``needs`` for ``model`` go to this agent at ``now``?"""
        if self.disabled:
            return Eligibility(False, reason=f"{self.name}: disabled ({self.disabled})")
        if not self.serves(model):
            return Eligibility(False, reason=f"{self.name}: does not serve model {model}")
        if model in self.missing:
            hint = f" (run `duckagents pull {model}`)" if self.config.kind in PULLABLE_KINDS else ""
            return Eligibility(
                False, reason=f"{self.name}: model {model} not found there{hint}", kind=ErrorKind.NOT_FOUND
            )
        features = self.features_for(model)
        if features is not None:
            lacking = sorted(f for f in needs.features if not features.supports(f))
            if lacking:
                return Eligibility(
                    False, reason=f"{self.name}: lacks {', '.join(lacking)}", kind=ErrorKind.UNSUPPORTED
                )
            if needs.tokens > features.context_window:
                return Eligibility(
                    False,
                    reason=f"{self.name}: context window {features.context_window} < {needs.tokens} tokens",
                    kind=ErrorKind.CONTEXT_LENGTH,
                )
        if not self.up:
            return Eligibility(False, math.inf, f"{self.name}: not running", ErrorKind.AGENT_CRASHED)
        if self.draining:
            return Eligibility(False, math.inf, f"{self.name}: draining", ErrorKind.NO_PROVIDER)
        if self.breaker_state == FORCED_OPEN:
            return Eligibility(
                False, reason=f"{self.name}: circuit forced open by an operator", kind=ErrorKind.CIRCUIT_OPEN
            )
        if self.breaker_state == "open":
            retry = self.breaker_retry_at
            if retry is None or now < retry:
                return Eligibility(
                    False, math.inf if retry is None else retry, f"{self.name}: circuit open",
                    ErrorKind.CIRCUIT_OPEN,
                )
        if now < self.cooldown_until:
            return Eligibility(
                False, self.cooldown_until,
                f"{self.name}: rate limited for {self.cooldown_until - now:.3g} s", ErrorKind.RATE_LIMITED,
            )
        return _ELIGIBLE

    def fits(self, model: str, tokens: int) -> bool:
        """Does a request of ``tokens`` (input + output) fit ``model``'s window here (yes if unknown)?"""
        features = self.features_for(model)
        return features is None or tokens <= features.context_window

    def candidate(self, price: ModelPrice | None) -> Candidate:
        """This agent as a strategy sees it, for a model of ``price`` (None: unknown, counted as 0)."""
        latency = self.latency
        if latency is None and self.status is not None and self.status.metrics.latency.samples:
            latency = self.status.metrics.latency.p50
        config = self.config
        return Candidate(
            name=self.name,
            order=self.order,
            priority=config.priority,
            cost_per_1k_input=price.input / 1000 if price is not None else 0.0,
            cost_per_1k_output=price.output / 1000 if price is not None else 0.0,
            active=self.active,
            latency=latency,
            health=self.status.health if self.status is not None else 1.0,
            weight=config.weight,
        )

    # --- updates from signals ----------------------------------------------------------------------

    def observe_status(self, status: ProviderStatus) -> None:
        """A ``provider_status``: the agent is up; adopt its breaker state and limiter block (its limiter's
        word now: also an earlier end of a block, as when a fleet replica re-joins the shared limits).
        Models it reported missing are tried again (one may have been pulled since)."""
        self.status = status
        self.up = True
        self.missing.clear()
        self.breaker_state = status.breaker_state
        retry = status.detail.get("breaker_retry_at")
        try:
            self.breaker_retry_at = float(retry) if retry is not None else None
        except ValueError:
            self.breaker_retry_at = None
        retry_at = status.headroom.retry_at
        self.cooldown_until = retry_at if retry_at is not None else -math.inf

    def observe_features(self, reply: FeatureReply, default: bool) -> None:
        """A ``feature_reply`` for ``reply.model`` (``default``: asked for the default model)."""
        self.features[reply.model] = reply.features
        if default:
            self.features[None] = reply.features
            self.default_reply = reply
        self.up = True

    def observe_terminal(self, payload: ProviderResponse | ProviderErrorData, now: float) -> None:
        """An attempt ended: count it; learn latency, breaker state and retry-after from it."""
        self.answered += 1
        if isinstance(payload, ProviderResponse):
            sample = payload.latency
            self.latency = sample if self.latency is None else (
                LATENCY_ALPHA * sample + (1 - LATENCY_ALPHA) * self.latency
            )
            self.succeeded += 1
            self.tokens += payload.usage.total_tokens
            self.latency_sum += sample
            self.recent_latencies.append(sample)
            if payload.time_to_first_chunk is not None:
                self.recent_first_chunks.append(payload.time_to_first_chunk)
            return
        if payload.kind is ErrorKind.NOT_FOUND and payload.model is not None:
            if len(self.missing) >= MAX_MISSING_MODELS:
                self.missing.clear()
            self.missing.add(payload.model)
        if payload.breaker_state is not None:
            if payload.breaker_state == "open" and self.breaker_state != "open":
                self.breaker_retry_at = None  # a new open period: its end comes with the next status
            self.breaker_state = payload.breaker_state
        if payload.retry_after is not None:
            if payload.kind is ErrorKind.RATE_LIMITED:
                self.cooldown_until = max(self.cooldown_until, now + payload.retry_after)
            elif payload.kind is ErrorKind.CIRCUIT_OPEN:
                self.breaker_state = "open"
                self.breaker_retry_at = now + payload.retry_after

    def observe_control(self, reply: ControlReply) -> None:
        """A ``control_reply`` of this agent: a breaker switch or drain/resume takes effect here now (the
        agent's next status says the same). Only switch replies count: they are sent in the order the
        agent applied the switches, so the last one read is the agent's state."""
        if not reply.ok or reply.action not in _SWITCHES:
            return
        if reply.breaker_state is not None and reply.breaker_state != self.breaker_state:
            self.breaker_state = reply.breaker_state
            self.breaker_retry_at = None  # a reset or forced state has no retry time
        if reply.draining is not None:
            self.draining = reply.draining

    def metrics(self) -> MetricsSnapshot:
        """What the agent answered, as the router counted it: attempts ended (its own terminals),
        answers and failures, tokens, latency of its answers (mean, and percentiles over the last
        :data:`RECENT_LATENCIES`), and the attempts in flight on it now."""
        return MetricsSnapshot(
            total_requests=self.answered,
            successful_requests=self.succeeded,
            failed_requests=self.answered - self.succeeded,
            total_tokens=self.tokens,
            avg_latency=self.latency_sum / self.succeeded if self.succeeded else 0.0,
            latency=LatencySummary.of(self.recent_latencies),
            time_to_first_chunk=LatencySummary.of(self.recent_first_chunks),
            in_flight=self.active,
        )
