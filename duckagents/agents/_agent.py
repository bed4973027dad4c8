"""The provider agent: one supervised Trio task around one provider.

It owns the provider and the resilience state in front of it (rate limiter, circuit breaker, metrics),
takes ``provider_request`` / ``feature_check`` / ``token_estimate`` signals addressed to it from the bus,
and answers every ``provider_request`` with chunks and exactly one terminal signal. Helpers: the inbox
and its tasks in :mod:`._inbox`, one attempt's execution in :mod:`._execution`, health reports in
:mod:`._status` (score formula in :mod:`._health`), feature and token answers in :mod:`._replies`.
docs/signals.md has the flows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from ..bus import Overflow, SignalBus, SignalFilter, Subscription
from ..config import ProviderConfig
from ..errors import ErrorKind, ProviderError, redact
from ..messages import FEATURE_NAMES, Features, implied_features
from ..providers import Completion, HealthProbe, Provider
from ..resilience import BreakerConfig, BreakerState, CircuitBreaker, RateLimiter, RateLimits
from ..signals import (
    Payload,
    ProviderErrorData,
    ProviderRequest,
    ProviderStatus,
    make_signal,
)
from ..supervision import Actor
from ._execution import Attempt
from ._health import RecentOutcomes
from ._inbox import serve_broadcasts, serve_inbox
from ._metrics import ProviderMetrics
from ._status import build_status, health_loop

__all__ = ["ProviderAgent"]

#: Signals an agent takes from its inbox (all addressed to it by the envelope's ``provider``).
INBOX_TYPES = frozenset({"provider_request", "feature_check", "token_estimate", "provider_error"})
PROBE_TIMEOUT = 10.0


class ProviderAgent(Actor):
    """Runs one provider behind a rate limiter, a circuit breaker and metrics; see the module docstring.

    Start it with ``await nursery.start(agent.run)`` (a supervisor does). A crash (an unexpected
    exception in any of its tasks) ends :meth:`run` with that exception, so the supervisor restarts it;
    the breaker, limiter and metrics survive restarts (they describe the upstream, not this task), the
    provider is re-created from ``provider_factory`` when one was given.

    Hooks for provider-specific subclasses (all optional):

    * :meth:`default_limits` — per-model rate limits used where the config sets none;
    * :meth:`prepare` — validate or transform a request before it is sent; raise ``ProviderError`` to
      fail it fast (it then never reaches the limiter, breaker or upstream);
    * :meth:`classify` — inspect a finished completion; return it (possibly changed, e.g. a finish reason
      of ``refusal``) or raise ``ProviderError`` to turn it into a failure;
    * :meth:`features` — what a model supports (default: the provider's table);
    * :meth:`resources` — extra ``detail`` for health reports (e.g. loaded models, VRAM);
    * :meth:`background` — a task run inside the agent's nursery for its lifetime (e.g. polling).
    """

    def __init__(
        self,
        config: ProviderConfig,
        bus: SignalBus,
        provider: Provider | None = None,
        *,
        provider_factory: Callable[[], Provider] | None = None,
        health_interval: float = 30.0,
        max_pending: int | None = None,
        publish_timeout: float = 10.0,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        if provider is None:
            if provider_factory is None:
                raise ValueError("a ProviderAgent needs a provider or a provider_factory")
            provider = provider_factory()
        super().__init__()
        self.name = config.name
        self.config = config
        self.bus = bus
        self.provider: Provider = provider
        self._factory = provider_factory
        self.source = f"/agents/{self.name}"
        self.health_interval = health_interval
        #: Requests received but not finished; more are refused as ``overloaded``.
        self.max_pending = max_pending or max(256, 16 * config.max_concurrency)
        self.publish_timeout = publish_timeout
        self.probe_timeout = probe_timeout
        settings = config.breaker
        self.breaker = CircuitBreaker(
            BreakerConfig(settings.failure_threshold, settings.open_timeout, settings.half_open_trials)
        )
        self.limits = self._limits(self.model)
        self.limiter = RateLimiter(self.limits)
        self.metrics = ProviderMetrics()
        self.recent = RecentOutcomes()
        #: In-flight attempts by ``(request_id, attempt)``.
        self.active_requests: dict[tuple[str, int], Attempt] = {}
        #: Runs of :meth:`run` so far (1 for the first); part of :attr:`agent_id`.
        self.incarnation = 0
        self.last_probe = HealthProbe(True, 0.0, {"probe": "not yet run"})
        #: Upstream calls in flight at most (``max_concurrency``); more wait for a slot.
        self.slots = trio.Semaphore(config.max_concurrency)
        self._inbox: Subscription | None = None
        #: Inbox tasks waiting for their turn to read (see :mod:`._inbox`).
        self._followers = trio.lowlevel.ParkingLot()
        self._owns_provider = False
        self._reported_breaker: BreakerState | None = None
        #: Set to make the health task publish a status now (see :meth:`poke_status`).
        self.status_wakeup = trio.Event()

    # --- identity ----------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model requests use unless they name one."""
        return self.config.default_model or self.provider.default_model

    @property
    def agent_id(self) -> str:
        """``<name>#<incarnation>``: tells restarts apart in errors."""
        return f"{self.name}#{self.incarnation}"

    @property
    def pending_signals(self) -> int:
        """Signals buffered in the agent's inbox, not handled yet (diagnostics)."""
        return self._inbox.pending if self._inbox is not None else 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, active={len(self.active_requests)})"

    # --- hooks -------------------------------------------------------------------------------------

    def default_limits(self, model: str) -> RateLimits:
        """Rate limits for ``model`` where the config sets none (per minute). Base: unlimited."""
        return RateLimits()

    async def prepare(self, request: ProviderRequest) -> ProviderRequest:
        """Validate or transform a request before sending; raise ``ProviderError`` to fail it fast."""
        return request

    def classify(self, request: ProviderRequest, completion: Completion) -> Completion:
        """Inspect a finished completion; return it (maybe changed) or raise ``ProviderError``."""
        return completion

    def features(self, model: str | None = None) -> Features:
        """What ``model`` (default: :attr:`model`) supports."""
        return self.provider.features(model or self.model)

    def require_features(self, request: ProviderRequest, model: str, features: Features) -> None:
        """Fail fast (``unsupported``, before any upstream call) when ``model`` lacks a needed feature."""
        lacking = missing_features(request, features)
        if lacking:
            raise ProviderError(
                ErrorKind.UNSUPPORTED,
                f"model {model} does not support {', '.join(lacking)}, which this request needs",
                provider=self.name,
                model=model,
            )

    async def resources(self) -> dict[str, str]:
        """Extra health detail (strings). Base: none."""
        return {}

    async def background(self) -> None:
        """Runs in the agent's nursery for as long as the agent runs. Base: nothing."""

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Reports started once subscribed, so no addressed signal is missed."""
        if self.running:
            raise RuntimeError(f"agent {self.name!r} is already running")
        self.incarnation += 1
        self.slots = trio.Semaphore(self.config.max_concurrency)
        if self.incarnation > 1 and self._owns_provider and self._factory is not None:
            self.provider = self._factory()  # the previous run closed it
        self._owns_provider = self._factory is not None
        inbox_filter = SignalFilter(types=INBOX_TYPES, providers=frozenset({self.name}))
        broadcast_filter = SignalFilter(types=frozenset({"feature_check", "token_estimate"}))
        try:
            with (
                self.bus.subscribe(inbox_filter, overflow=Overflow.BLOCK) as inbox,
                self.bus.subscribe(broadcast_filter, buffer=64, overflow=Overflow.DROP_OLDEST) as broadcast,
            ):
                self._inbox = inbox
                self._followers = trio.lowlevel.ParkingLot()
                # A crash (an unexpected exception in any task) leaves the terminals of the other tasks'
                # requests, now cancelled, to the router: see ``crashed``.
                async with self._serving() as nursery:
                    nursery.start_soon(self._guard, health_loop, self)
                    nursery.start_soon(self._guard, self.background)
                    nursery.start_soon(self._guard, serve_broadcasts, self, broadcast)
                    task_status.started()
                    await self._guard(serve_inbox, self, inbox)
        finally:
            self._inbox = None
            if self._owns_provider:
                with trio.CancelScope(shield=True), trio.move_on_after(self.publish_timeout):
                    await self.provider.aclose()

    # --- replies and publishing --------------------------------------------------------------------

    def failure(self, attempt: Attempt, error: ProviderError) -> ProviderErrorData:
        """The ``provider_error`` payload for ``error``, enriched with this agent's context."""
        now = trio.current_time()
        request = attempt.request
        return ProviderErrorData(
            request_id=request.request_id,
            kind=error.kind,
            message=self.redact(error.message),
            retryable=error.retryable,
            provider=self.name,
            model=error.model or attempt.model or request.model or self.model,
            retry_after=error.retry_after,
            upstream_status=error.status,
            attempt=request.attempt,
            agent_id=self.agent_id,
            breaker_state=self.breaker.state(now).value,
            partial=error.partial or attempt.chunks > 0,
        )

    def redact(self, text: str) -> str:
        """``text`` with this provider's secrets (and key-shaped tokens) removed."""
        return redact(text, self.provider.secrets)

    async def publish(self, payload: Payload) -> None:
        """Publish a payload from this agent (waits while a BLOCK subscriber is full)."""
        await self.bus.publish(make_signal(payload, self.source))

    # --- health ------------------------------------------------------------------------------------

    def breaker_changed(self) -> None:
        """Call after every breaker verdict: a state change is reported at once (the router needs it)."""
        if self.breaker.state(trio.current_time()) is not self._reported_breaker:
            self.poke_status()

    def poke_status(self) -> None:
        """Ask the health task to publish a status report now."""
        self.status_wakeup.set()

    async def status(self) -> ProviderStatus:
        """A status report now (last probe, breaker, limiter headroom, metrics, health score)."""
        return await build_status(self)

    def _reported(self, status: ProviderStatus) -> None:
        """The health task published ``status``: later breaker changes are compared with it."""
        self._reported_breaker = BreakerState(status.breaker_state)

    # --- limits ------------------------------------------------------------------------------------

    def _limits(self, model: str) -> RateLimits:
        """The config's per-minute limits, falling back to :meth:`default_limits` per dimension."""
        configured = self.config.limits
        defaults = self.default_limits(model)
        if configured.requests_per_minute is None and configured.tokens_per_minute is None:
            return defaults
        per_minute = math.isclose(defaults.period, 60.0)
        return RateLimits(
            requests=configured.requests_per_minute
            if configured.requests_per_minute is not None
            else (defaults.requests if per_minute else None),
            tokens=configured.tokens_per_minute
            if configured.tokens_per_minute is not None
            else (defaults.tokens if per_minute else None),
            period=60.0,
        )


def missing_features(request: ProviderRequest, features: Features) -> list[str]:
    """The features ``request`` needs (by its content, options and ``required_features``) that
    ``features`` lacks, sorted."""
    needed = {name for name in request.required_features if name in FEATURE_NAMES}
    needed |= implied_features(request.messages, request.options)
    # Streaming is never a hard need: the base agent delivers a non-streaming answer as one chunk.
    needed.discard("streaming")
    return sorted(name for name in needed if not features.supports(name))
