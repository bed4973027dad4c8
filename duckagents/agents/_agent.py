"""The provider agent: one supervised actor around one provider.

It owns the provider and the resilience state in front of it (rate limiter, circuit breaker, metrics),
takes ``provider_request`` / ``feature_check`` / ``token_estimate`` signals addressed to it from the bus,
and answers every ``provider_request`` with chunks and exactly one terminal signal. docs/signals.md has
the flows; the admission of upstream calls and their verdicts are :mod:`._admission`'s, the health score
formula is :mod:`._health`'s.

**The inbox.** Reading and answering share a small pool of tasks (leader/followers). One task at a time,
the *reader*, takes signals from the inbox and handles what is buffered in one scheduler turn, in bus
order. When that batch holds requests, the reader hands reading over to an idle follower (or a new task)
and answers the first request itself, so a request starts in the scheduler turn that delivered it,
without a spawn; any further requests of the batch get a task each. A task done with its request waits
as a follower, up to :data:`IDLE_WORKERS` of them; beyond that it ends. So the inbox always has a reader,
the bus never waits on the agent for long, and a steady stream of requests costs no task spawns.

**One request** (:meth:`ProviderAgent._perform`): prepare → a concurrency slot → the limiter → the breaker
→ the provider → classify → a verdict, all within the request's deadline; its terminal goes out through
``SignalBus.deliver`` (no scheduler turn unless a subscriber is full).

**Containment.** An unexpected exception while handling one request (from ``prepare`` to the verdict:
an encoding or parsing failure, a provider bug) fails *that request* with ``internal`` (not retryable),
logs its traceback with the request id (logger ``duckagents.agents``, once per kind of fault and minute:
see :class:`~duckagents.supervision.FaultLog`) and leaves the agent serving.
Only a fault of the agent's own machinery crashes it: an exception in its inbox, health or broadcast
tasks, or an :class:`~duckagents.errors.AgentFault` raised by the provider.

**A crash** cancels the agent's tasks; before its run ends, the agent answers every attempt it held or
had queued with ``agent_crashed`` (shielded, bounded by ``publish_timeout``): retryable (the router may try
another agent), except for the attempt whose own handling raised the crash, which may carry a poison
input. What it could not answer, the router answers on its behalf when the supervisor reports the crash.

**Operator controls.** A ``provider_control`` addressed to the agent is handled by its control task, in
the order the controls arrived: breaker switches (reset, force open, disable) and drain/resume are applied
at once, model management (list, load, unload, start a pull) runs in a task of its own; each control gets
exactly one ``control_reply`` saying who did what and how it went. A draining agent refuses new attempts
(a retryable ``shutdown``, so the router tries elsewhere) while those it holds finish.

**Health reports.** A task probes the provider every ``health_interval`` seconds (at once on start) and
publishes a ``provider_status`` after each probe, whenever the agent pokes it (a breaker change, an
upstream rate-limit block) and when an open breaker's timeout passes (the breaker's open -> half-open
move is lazy, so nothing else would report it).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..bus import Overflow, SignalBus, SignalFilter, Subscription
from ..config import ProviderConfig
from ..costs import ModelPrice, PriceTable
from ..errors import AgentFault, BusClosed, ErrorKind, ProviderError, StreamProtocolError, redact
from ..messages import FEATURE_NAMES, Features, Usage, implied_features
from ..providers import Completion, HealthProbe, Provider, StreamEnd, heuristic_token_count
from ..resilience import (
    BreakerConfig,
    BreakerState,
    BreakerSwitch,
    CircuitBreaker,
    Gate,
    RateLimiter,
    RateLimits,
)
from ..signals import (
    MODEL_ACTIONS,
    ControlAction,
    ControlReply,
    FeatureCheck,
    FeatureReply,
    ModelEntry,
    Payload,
    ProviderChunk,
    ProviderControl,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    Signal,
    TokenEstimate,
    TokenEstimateReply,
    ToolCallDelta,
    make_signal,
)
from ..supervision import Actor, FaultLog
from ._admission import AdmissionControl, SharedAdmissionControl
from ._health import RecentOutcomes, headroom_fraction, health_score
from ._metrics import ProviderMetrics

__all__ = [
    "CONTROL_BACKLOG", "DRAIN_BATCH", "IDLE_WORKERS", "INBOX_TYPES", "ActiveRequest", "GateFactory",
    "ProviderAgent",
    "missing_features",
]

#: Signals an agent takes from its inbox (all addressed to it by the envelope's ``provider``).
INBOX_TYPES = frozenset(
    {"provider_request", "feature_check", "token_estimate", "provider_error", "provider_control"}
)
#: Operator controls waiting for the control task, at most; more are refused at once.
CONTROL_BACKLOG = 32
# Applied by the control task itself, in arrival order (their replies carry the state the router follows).
_SWITCHES = frozenset(
    {ControlAction.BREAKER_RESET, ControlAction.BREAKER_FORCE_OPEN, ControlAction.BREAKER_DISABLE,
     ControlAction.DRAIN, ControlAction.RESUME}
)
# The breaker's operator switches, by control action (its method names).
_BREAKER_SWITCHES: dict[ControlAction, BreakerSwitch] = {
    ControlAction.BREAKER_RESET: "reset",
    ControlAction.BREAKER_FORCE_OPEN: "force_open",
    ControlAction.BREAKER_DISABLE: "disable",
}
PROBE_TIMEOUT = 10.0
#: Inbox signals handled per scheduler turn at most.
DRAIN_BATCH = 256
#: Idle inbox tasks kept waiting for their turn to read (more end when their request is done).
IDLE_WORKERS = 16
#: Model prices an agent keeps looked up (a ``models = ["*"]`` agent may see any number of names).
PRICE_CACHE = 256

log = logging.getLogger("duckagents.agents")
#: Builds an agent's shared limiter and breaker (fleet mode): ``(provider name, limits, breaker
#: settings, trial lease in seconds)`` -> a :class:`~duckagents.resilience.Gate`.
GateFactory = Callable[[str, RateLimits, BreakerConfig, float], Gate]


@attrs.define(eq=False)
class ActiveRequest:
    """A request in the agent, from its arrival to its terminal, keyed by ``(request_id, attempt)``
    (``attempt`` is the router's number for this try of the caller's request, see docs/signals.md)."""

    request: ProviderRequest
    #: Trio time the agent received it.
    received: float
    #: Its scope: the deadline is the request's; cancelled when it was answered elsewhere (the router
    #: published its terminal).
    scope: trio.CancelScope
    #: The envelope subject of the request signal; its terminal carries the same.
    subject: str | None = None
    model: str | None = None
    #: Chunks published so far; > 0 makes a failure ``partial`` (never retried).
    chunks: int = 0
    answered: bool = False
    published: bool = False


def _is_agent_fault(exc: BaseException) -> bool:
    """True for an :class:`AgentFault`, or an exception group holding one (a provider's own nursery)."""
    if isinstance(exc, AgentFault):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(AgentFault) is not None


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
    * :meth:`background` — a task run inside the agent's nursery for its lifetime (e.g. polling);
    * :meth:`model_entries`, :meth:`load_model`, :meth:`unload_model`, :meth:`start_model_pull` — the
      model management operators reach through ``provider_control`` (base: list only).

    With ``gate_factory`` (fleet mode) the limiter and breaker that decide are shared with other processes
    (a :class:`~duckagents.resilience.Gate`, built once here): :attr:`limiter` and :attr:`breaker` are then
    the gate's local fallbacks, and what the agent reports comes from the gate's views. Without it (the
    default) they are this agent's own machines, used directly.
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
        prices: PriceTable | None = None,
        gate_factory: GateFactory | None = None,
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
        #: Where the price of each model comes from (``usage.cost`` of every response).
        self.prices = prices or PriceTable()
        self._price_cache: dict[str, ModelPrice | None] = {}
        self.metrics = ProviderMetrics()
        self.recent = RecentOutcomes()
        self._admission: AdmissionControl | SharedAdmissionControl
        if gate_factory is None:
            self.breaker = CircuitBreaker(config.breaker)
            self.limiter = RateLimiter(self._limits(self.model))
            self._admission = AdmissionControl(
                self.limiter,
                self.breaker,
                self.metrics,
                self.recent,
                on_breaker_verdict=self.breaker_changed,
                on_upstream_block=self.poke_status,
            )
        else:
            gate = gate_factory(self.name, self._limits(self.model), config.breaker, config.timeout)
            self.breaker, self.limiter = gate.local_breaker, gate.local_limiter
            self._admission = SharedAdmissionControl(
                gate,
                self.metrics,
                self.recent,
                on_breaker_verdict=self.breaker_changed,
                on_upstream_block=self.poke_status,
            )
            # Another replica's breaker notice, a reply to a queued verdict, Redis leaving or coming back
            # (limits between the share and the fleet's): news for the router.
            gate.watch(self.poke_status)
        #: Requests in the agent by ``(request_id, attempt)``.
        self.active_requests: dict[tuple[str, int], ActiveRequest] = {}
        #: Runs of :meth:`run` so far (1 for the first); part of :attr:`agent_id`.
        self.incarnation = 0
        self.last_probe = HealthProbe(True, 0.0, {"probe": "not yet run"})
        #: Upstream calls in flight at most (``max_concurrency``); more wait for a slot.
        self.slots = trio.Semaphore(config.max_concurrency)
        self._inbox: Subscription | None = None
        #: Inbox tasks waiting for their turn to read (see the module docstring).
        self._followers = trio.lowlevel.ParkingLot()
        self._owns_provider = False
        self._reported_breaker: BreakerState | None = None
        #: Set to make the health task publish a status now (see :meth:`poke_status`).
        self._status_wakeup = trio.Event()
        #: Attempts a crash of this run left without a terminal, by key: (request, suspected of causing
        #: the crash). Answered with ``agent_crashed`` before the run ends (see :meth:`_report_crash`).
        self._casualties: dict[tuple[str, int], tuple[ActiveRequest, bool]] = {}
        #: Faults contained in one request each (logged, throttled per kind).
        self.faults = FaultLog(log)
        #: Drained by an operator: new attempts are refused, those in flight finish. Survives restarts.
        self.draining = False
        self._controls: trio.MemorySendChannel[ProviderControl] | None = None

    # --- identity ----------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model requests use unless they name one."""
        return self.config.default_model or self.provider.default_model

    @property
    def limits(self) -> RateLimits:
        """The limits in force: the config's, else the per-model defaults, plus any the upstream stated
        for a dimension left unlimited."""
        return self._admission.limits

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

    async def model_entries(self) -> tuple[ModelEntry, ...]:
        """The models this agent offers (``models_list``). Base: the provider's list, else the configured
        models."""
        infos = None
        with contextlib.suppress(ProviderError), trio.move_on_after(self.probe_timeout):
            infos = await self.provider.list_models()
        if infos:
            return tuple(
                ModelEntry(m.name, m.loaded, m.size, m.size_vram, m.context_window) for m in infos
            )
        names = dict.fromkeys((*((self.config.default_model,) if self.config.default_model else ()),
                               *self.config.models, self.model))
        return tuple(ModelEntry(name) for name in names)

    async def load_model(self, model: str | None) -> str:
        """Load ``model`` (default: the agent's) into memory (``model_load``); returns what was done.
        Base: unsupported."""
        raise self._no_local_models("load")

    async def unload_model(self, model: str | None) -> str:
        """Evict ``model`` (default: the agent's) from memory (``model_unload``). Base: unsupported."""
        raise self._no_local_models("unload")

    def start_model_pull(self, model: str) -> dict[str, str]:
        """Start downloading ``model`` in the agent (``model_pull``); returns ``task`` (the name its
        ``progress`` signals carry) and ``status``. Base: unsupported."""
        raise self._no_local_models("pull")

    def _no_local_models(self, verb: str) -> ProviderError:
        return ProviderError(
            ErrorKind.UNSUPPORTED,
            f"provider {self.name} (kind {self.config.kind}) has no local models to {verb}",
            provider=self.name,
        )

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
        self._casualties = {}
        inbox_filter = SignalFilter(types=INBOX_TYPES, providers=frozenset({self.name}))
        broadcast_filter = SignalFilter(types=frozenset({"feature_check", "token_estimate"}))
        try:
            with (
                self.bus.subscribe(inbox_filter, overflow=Overflow.BLOCK) as inbox,
                self.bus.subscribe(broadcast_filter, buffer=64, overflow=Overflow.DROP_OLDEST) as broadcast,
            ):
                self._inbox = inbox
                self._followers = trio.lowlevel.ParkingLot()
                controls_in, controls_out = trio.open_memory_channel[ProviderControl](CONTROL_BACKLOG)
                self._controls = controls_in
                try:
                    async with self._serving() as nursery:
                        nursery.start_soon(self._guard, self._report_health)
                        nursery.start_soon(self._guard, self.background)
                        nursery.start_soon(self._guard, self._serve_broadcasts, broadcast)
                        nursery.start_soon(self._guard, self._serve_controls, controls_out)
                        task_status.started()
                        await self._guard(self._serve_inbox, inbox)
                finally:
                    if self.crashed:
                        # Before the supervisor hears of the crash (so before the router answers on our
                        # behalf): our own answers, which say whether each attempt may be retried.
                        with trio.CancelScope(shield=True):
                            await self._report_crash(inbox)
        finally:
            self._inbox = None
            self._controls = None
            if self._owns_provider:
                with trio.CancelScope(shield=True), trio.move_on_after(self.publish_timeout):
                    await self.provider.aclose()

    # --- the inbox (see the module docstring) ------------------------------------------------------

    async def _serve_inbox(self, inbox: Subscription, permanent: bool = True) -> None:
        """Be one of the inbox tasks. The agent's own task is the ``permanent`` one; helpers started by
        a hand-over end when enough others are idle."""
        while True:
            active = await self._read(inbox)
            # Someone else reads while this task answers the request.
            followers = self._followers
            if followers:
                followers.unpark()
            else:
                self._spawn(self._serve_inbox, inbox, False)
            await self._answer(active)
            if not permanent and len(followers) >= IDLE_WORKERS:
                return
            await followers.park()  # woken when it is this task's turn to read

    async def _read(self, inbox: Subscription) -> ActiveRequest:
        """Handle inbox signals until a batch holds a request; return the first one, spawn the others."""
        while True:
            try:
                signal = await inbox.receive()
            except BusClosed:
                await trio.sleep_forever()  # the tree is shutting down; wait to be cancelled
            first = self._handle(signal)
            for _ in range(DRAIN_BATCH):
                try:
                    signal = inbox.receive_nowait()
                except (trio.WouldBlock, BusClosed):
                    break
                active = self._handle(signal)
                if active is None:
                    continue
                if first is None:
                    first = active
                else:
                    self._spawn(self._answer, active)
            if first is not None:
                return first

    def _handle(self, signal: Signal) -> ActiveRequest | None:
        """Take one inbox signal into account; a request to answer is returned, not started."""
        data = signal.data
        if isinstance(data, ProviderRequest):
            try:
                return self._accept(data, signal.subject)
            except Exception as exc:  # one odd request fails alone, the inbox goes on
                failed = ActiveRequest(data, trio.current_time(), trio.CancelScope(), signal.subject)
                self._spawn(self._publish_terminal, self._internal_failure(failed, exc), signal.subject)
                return None
        if isinstance(data, FeatureCheck):
            self._spawn(self._reply_features, data)
        elif isinstance(data, TokenEstimate):
            self._spawn(self._reply_tokens, data)
        elif isinstance(data, ProviderErrorData) and signal.source != self.source:
            self._answered_elsewhere(data, signal.subject)
        elif isinstance(data, ProviderControl):
            self._take_control(data)
        return None

    def _accept(self, request: ProviderRequest, subject: str | None) -> ActiveRequest | None:
        active = self.active_requests
        key = (request.request_id, request.attempt)
        if key in active:
            return None  # a duplicate delivery of a request already running: it gets one terminal only
        accepted = ActiveRequest(request, trio.current_time(), trio.CancelScope(), subject)
        if self.draining:
            # Another agent can take it: retryable, and neutral for this agent's health and breaker.
            message = f"provider agent {self.name} is draining: it takes no new requests"
            error = ProviderError(ErrorKind.SHUTDOWN, message, retryable=True)
            self._spawn(self._publish_terminal, self.failure(accepted, error), subject)
            return None
        if len(active) >= self.max_pending:
            error = ProviderError(
                ErrorKind.OVERLOADED, f"agent has {len(active)} requests pending", retry_after=1.0
            )
            self._spawn(self._publish_terminal, self.failure(accepted, error), subject)
            return None
        active[key] = accepted
        return accepted

    def _answered_elsewhere(self, failure: ProviderErrorData, subject: str | None) -> None:
        """Someone (the router) published the terminal of one of our requests: stop it, stay silent.
        The router took the attempt's claim to do so; taking it too settles it. (For a request not
        started yet the claim stays, and refuses our terminal when the request has run.)"""
        active = self.active_requests.get((failure.request_id, failure.attempt))
        if active is not None:
            active.answered = True
            active.scope.cancel()
            self.bus.claims.take(subject)

    async def _serve_broadcasts(self, broadcast: Subscription) -> None:
        """Answer the feature checks and token estimates addressed to every agent."""
        async for signal in broadcast:
            data = signal.data
            if signal.provider is not None:
                continue  # addressed ones arrive through the inbox
            if isinstance(data, FeatureCheck):
                self._spawn(self._reply_features, data)
            elif isinstance(data, TokenEstimate):
                self._spawn(self._reply_tokens, data)

    # --- operator controls (see the module docstring) ----------------------------------------------

    def _take_control(self, control: ProviderControl) -> None:
        """Queue a control for the control task; refuse it at once when too many are waiting."""
        controls = self._controls
        try:
            if controls is None:
                raise trio.WouldBlock
            controls.send_nowait(control)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            message = f"provider agent {self.name} has {CONTROL_BACKLOG} controls waiting; try again"
            self._spawn(self._publish_reply, self._control_reply(control, False, message))

    async def _serve_controls(self, controls: trio.MemoryReceiveChannel[ProviderControl]) -> None:
        """Apply the switches in arrival order and reply to each; model management gets a task each."""
        async for control in controls:
            if control.action in _SWITCHES:
                await self._publish_reply(await self._switch(control))
            else:
                self._spawn(self._manage_models, control)

    async def _switch(self, control: ProviderControl) -> ControlReply:
        """Apply a breaker switch (fleet-wide in fleet mode) or drain/resume now; the reply carries the
        state after it."""
        now = trio.current_time()
        action = control.action
        admission = self._admission
        where = ""
        if action in _BREAKER_SWITCHES:
            where = await admission.switch_breaker(now, _BREAKER_SWITCHES[action])
        elif action is ControlAction.DRAIN:
            self.draining = True
        elif action is ControlAction.RESUME:
            self.draining = False
        self.poke_status()  # the new state is news for every observer, not only the operator
        if action in (ControlAction.DRAIN, ControlAction.RESUME):
            message = (
                f"draining: {len(self.active_requests)} request(s) in the agent finish, no new ones"
                if self.draining else "taking requests again"
            )
        else:
            message = f"breaker {admission.breaker_state(trio.current_time()).value}{where}"
        return self._control_reply(control, True, message)

    async def _manage_models(self, control: ProviderControl) -> None:
        """List, load, unload or start pulling a model, and reply."""
        action = control.action
        models: tuple[ModelEntry, ...] = ()
        detail: dict[str, str] = {}
        try:
            if action is ControlAction.MODELS_LIST:
                models = await self.model_entries()
                message = f"{len(models)} model(s)"
            elif action is ControlAction.MODEL_LOAD:
                message = await self.load_model(control.model)
            elif action is ControlAction.MODEL_UNLOAD:
                message = await self.unload_model(control.model)
            elif action is ControlAction.MODEL_PULL and control.model:
                detail = self.start_model_pull(control.model)
                message = f"pulling {control.model}: {detail.get('status', '')}".rstrip(": ")
            else:
                kind = "needs a model" if action in MODEL_ACTIONS else "is not an agent's control"
                raise ProviderError(ErrorKind.INVALID_REQUEST, f"{action.value} {kind}")
        except ProviderError as exc:
            reply = self._control_reply(control, False, self.redact(f"{exc.kind.value}: {exc.message}"))
        except Exception as exc:  # a bug met by this control: it fails alone, the agent serves on
            what = f"agent {self.agent_id}: control {control.action.value} ({control.request_id})"
            description = self.faults.request_failed(exc, what, self.provider.secrets)
            reply = self._control_reply(control, False, f"internal error: {description}")
        else:
            reply = self._control_reply(control, True, message, models=models, detail=detail)
        await self._publish_reply(reply)

    def _control_reply(self, control: ProviderControl, ok: bool, message: str, **extra: Any) -> ControlReply:
        return ControlReply(
            request_id=control.request_id,
            action=control.action,
            principal=control.principal,
            ok=ok,
            message=message,
            provider=self.name,
            breaker_state=self._admission.breaker_state(trio.current_time()).value,
            draining=self.draining,
            **extra,
        )

    # --- one request -------------------------------------------------------------------------------

    async def _answer(self, active: ActiveRequest) -> None:
        """Run ``active`` and publish its one terminal (none when it was answered elsewhere)."""
        request = active.request
        key = (request.request_id, request.attempt)
        try:
            terminal = await self._outcome(active)
            if terminal is not None and not active.answered:
                active.published = True
                await self._publish_terminal(terminal, active.subject)
        except trio.Cancelled:
            # Shutdown: answer for the request ourselves. A crash (another task's): the answer waits for
            # the end of the run (_report_crash), when every task has stopped.
            if not active.answered and not active.published:
                if self.crashed:
                    self._casualties.setdefault(key, (active, False))
                else:
                    error = ProviderError(ErrorKind.SHUTDOWN, "the provider agent shut down")
                    await self._publish_terminal(self.failure(active, error), active.subject)
            raise
        except Exception as exc:
            # This request's own handling crashed the agent (past the containment of _outcome): unless
            # the provider declared its machinery broken, the request itself may be the cause.
            if not active.answered and not active.published:
                self._casualties[key] = (active, not _is_agent_fault(exc))
            raise
        finally:
            self.active_requests.pop(key, None)

    async def _outcome(self, active: ActiveRequest) -> ProviderResponse | ProviderErrorData | None:
        """Run ``active`` within its deadline and return its terminal payload, or None when it was
        answered elsewhere (then nothing must be published for it). Never raises ProviderError."""
        request = active.request
        deadline = request.deadline if request.deadline is not None else math.inf
        scope = active.scope
        scope.deadline = deadline  # one scope for both ways to end early: a hot-path saving
        try:
            with scope:
                return await self._perform(active, deadline)
        except ProviderError as error:
            return self.failure(active, error)
        except Exception as exc:
            if _is_agent_fault(exc):
                raise  # the agent's own machinery is broken: crash (the supervisor restarts it)
            return self._internal_failure(active, exc)
        # The scope caught its own cancellation: answered elsewhere, or the deadline passed.
        if active.answered:
            return None
        timeout = ProviderError(ErrorKind.TIMEOUT, "no answer before the request's deadline")
        return self.failure(active, timeout)

    async def _perform(self, active: ActiveRequest, deadline: float) -> ProviderResponse:
        """prepare → slot → limiter → breaker → provider → classify → verdict; see the module docstring."""
        request = await self.prepare(active.request)
        model = request.model or self.model
        active.model = model
        # Waiting for a slot holds nothing (no reservation, no breaker trial), and the deadline bounds it. A
        # free slot is taken without a scheduler round trip (the upstream call checkpoints soon enough), but
        # a request already cancelled stops here, before it takes anything.
        await trio.lowlevel.checkpoint_if_cancelled()
        slots = self.slots
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await slots.acquire()
        try:
            admission = self._admission
            reservation = await admission.admit(await self._estimate(request, model), deadline, model)
            sent = trio.current_time()
            verdict = False  # set once success or failure is recorded; otherwise the call was interrupted
            try:
                completion, first_chunk = await self._call_upstream(active, request, model, sent)
                completion = self.classify(request, completion)
                admission.succeeded(reservation, sent, completion, first_chunk)
                verdict = True
            except ProviderError as error:
                verdict = True
                admission.failed(reservation, sent, error)
                raise
            finally:
                if not verdict:  # cancelled (deadline, router, shutdown) or crashed
                    admission.interrupted(reservation, sent, deadline)
        finally:
            slots.release()
        original = active.request  # prepare() may rewrite the request, never its identity
        usage = self.cost_of(model, completion)
        if usage.cost is not None:
            self.metrics.record_cost(completion.model, usage.cost)
        return ProviderResponse(
            request_id=original.request_id,
            provider=self.name,
            model=completion.model,
            content=completion.content,
            tool_calls=completion.tool_calls,
            finish_reason=completion.finish_reason,
            usage=usage,
            latency=trio.current_time() - active.received,
            time_to_first_chunk=first_chunk,
            attempt=original.attempt,
        )

    def price(self, model: str) -> ModelPrice | None:
        """What ``model`` costs on this provider (see :class:`~duckagents.costs.PriceTable`)."""
        cache = self._price_cache
        try:
            return cache[model]
        except KeyError:
            pass
        if len(cache) >= PRICE_CACHE:
            cache.clear()
        found = cache[model] = self.prices.price(self.config.kind, model, self.config.price)
        return found

    def cost_of(self, model: str, completion: Completion) -> Usage:
        """``completion``'s usage with its cost: priced as the model asked for (the name the config
        knows), else as the model that answered (e.g. a dated snapshot); ``cost`` None if neither has a
        known price."""
        usage = completion.usage
        price = self.price(model)
        if price is None and completion.model != model:
            price = self.price(completion.model)
        if price is None:
            return usage
        prompt, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        return Usage(prompt, completion_tokens, price.cost(prompt, completion_tokens))

    async def _estimate(self, request: ProviderRequest, model: str) -> int:
        """Tokens to reserve: the input estimate plus the requested output budget (0 when tokens are not
        limited, so no counting call is made for nothing)."""
        if self.limits.tokens is None:
            return 0
        try:
            count = (await self.provider.estimate_tokens(request.messages, model)).tokens
        except ProviderError:  # a counting endpoint failing must not fail the request
            count = heuristic_token_count(request.messages)
        return count + (request.options.max_tokens or 0)

    async def _call_upstream(
        self, active: ActiveRequest, request: ProviderRequest, model: str, sent: float
    ) -> tuple[Completion, float | None]:
        """Run the request upstream; streamed deltas become ``provider_chunk`` signals as they arrive."""
        provider = self.provider
        if not request.options.stream:
            return await provider.complete(request), None
        if not self.features(model).streaming:
            # The upstream cannot stream: deliver the whole answer as one chunk, so stream consumers see it.
            completion = await provider.complete(request)
            first = trio.current_time() - sent
            await self._publish_chunk(active, completion.content, None)
            for index, call in enumerate(completion.tool_calls):
                delta = ToolCallDelta(index, call.id, call.name, call.arguments)
                await self._publish_chunk(active, "", delta)
            return completion, first
        completion_out: Completion | None = None
        first_chunk: float | None = None
        config = self.config
        idle = config.idle_chunk_timeout
        # One scope for the whole stream: its deadline is the first chunk's, then, after each chunk, the
        # next one's. Publishing does not count (a full subscriber is not the upstream's silence).
        watchdog = trio.CancelScope(deadline=sent + config.first_chunk_timeout)
        events: Any = provider.stream(request)
        async with contextlib.aclosing(events):
            with watchdog:
                async for event in events:
                    if isinstance(event, StreamEnd):
                        completion_out = event.completion
                        continue
                    if first_chunk is None:
                        first_chunk = trio.current_time() - sent
                    watchdog.deadline = math.inf
                    await self._publish_chunk(active, event.text, event.tool_call)
                    watchdog.deadline = trio.current_time() + idle
        if watchdog.cancelled_caught:
            if first_chunk is None:
                raise ProviderError(
                    ErrorKind.TIMEOUT,
                    f"no first chunk within {config.first_chunk_timeout:g} s (first_chunk_timeout)",
                    model=model,
                )
            raise ProviderError(
                ErrorKind.TIMEOUT,
                f"the stream stalled: no chunk for {idle:g} s (idle_chunk_timeout)",
                model=model,
                partial=True,
            )
        if completion_out is None:
            raise StreamProtocolError("the provider's stream ended without its final event", model=model)
        return completion_out, first_chunk

    async def _publish_chunk(self, active: ActiveRequest, text: str, tool_call: ToolCallDelta | None) -> None:
        index = active.chunks
        # Counted before publishing: once any subscriber may have it, a failure is partial.
        active.chunks += 1
        request_id = active.request.request_id
        chunk = ProviderChunk(request_id, self.name, index, text, tool_call)
        signal = Signal(ProviderChunk.TYPE, self.source, chunk, subject=request_id, provider=self.name)
        # Still a cancellation point per chunk (a request answered elsewhere stops streaming here), but the
        # chunk goes out without a scheduler turn unless a subscriber is full: the stream's reads yield
        # anyway.
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.bus.deliver(signal)

    # --- replies and publishing --------------------------------------------------------------------

    def failure(self, active: ActiveRequest, error: ProviderError) -> ProviderErrorData:
        """The ``provider_error`` payload for ``error``, enriched with this agent's context."""
        request = active.request
        now = trio.current_time()
        return ProviderErrorData.from_error(
            request.request_id,
            error,
            message=self.redact(error.message),
            provider=self.name,
            model=error.model or active.model or request.model or self.model,
            attempt=request.attempt,
            agent_id=self.agent_id,
            breaker_state=self._admission.breaker_state(now).value,
            partial=error.partial or active.chunks > 0,
            latency=now - active.received,
        )

    def _internal_failure(self, active: ActiveRequest, exc: Exception) -> ProviderErrorData:
        """The ``internal`` terminal of a request whose handling raised ``exc``; logs its traceback once."""
        request = active.request
        what = f"agent {self.agent_id}: request {request.request_id} (attempt {request.attempt})"
        description = self.faults.request_failed(exc, what, self.provider.secrets)
        message = f"internal error while handling the request: {description}"
        return self.failure(active, ProviderError(ErrorKind.INTERNAL, message))

    async def _report_crash(self, inbox: Subscription) -> None:
        """Answer, with ``agent_crashed``, every attempt this crashed run held or had queued (see the
        module docstring). Runs once every task has stopped; bounded by ``publish_timeout`` overall."""
        now = trio.current_time()
        casualties = self._casualties
        # Accepted but never started (their task never ran), or still unread in the inbox: not the cause.
        for key, active in self.active_requests.items():
            casualties.setdefault(key, (active, False))
        answered: set[tuple[str, int]] = set()
        while True:
            try:
                signal = inbox.receive_nowait()
            except (trio.WouldBlock, BusClosed):
                break
            data = signal.data
            if isinstance(data, ProviderRequest):
                key = (data.request_id, data.attempt)
                unread = ActiveRequest(data, now, trio.CancelScope(), signal.subject)
                casualties.setdefault(key, (unread, False))
            elif isinstance(data, ProviderErrorData) and signal.source != self.source:
                answered.add((data.request_id, data.attempt))  # the router answered it meanwhile
        self._casualties = {}
        # Suspects first: their answer (not retryable) matters most if the bus lets only some through.
        ordered = sorted(casualties.items(), key=lambda item: not item[1][1])
        give_up = trio.current_time() + self.publish_timeout
        for key, (active, suspect) in ordered:
            left = give_up - trio.current_time()
            if left <= 0:
                return  # the bus is stalled: the router answers the rest on our behalf
            if key in answered or active.answered:
                continue
            if suspect:
                message = f"provider agent {self.name} crashed while handling this request"
            else:
                message = f"provider agent {self.name} crashed (not because of this request)"
            error = ProviderError(ErrorKind.AGENT_CRASHED, message, retryable=not suspect)
            await self._publish_terminal(self.failure(active, error), active.subject, within=left)

    def redact(self, text: str) -> str:
        """``text`` with this provider's secrets (and key-shaped tokens) removed."""
        return redact(text, self.provider.secrets)

    async def publish(self, payload: Payload) -> None:
        """Publish a payload from this agent (waits while a BLOCK subscriber is full)."""
        await self.bus.publish(make_signal(payload, self.source))

    async def _publish_terminal(
        self, payload: Payload, subject: str | None, *, within: float | None = None
    ) -> None:
        """Publish the terminal of a request, with the subject of the ``provider_request`` it answers (the
        router gives each attempt its own).

        Shielded: a decided terminal must go out whole even when the agent is being stopped; bounded, so
        a stalled subscriber cannot hold a shutdown forever (the router then answers on the agent's
        behalf): ``within`` seconds, default ``publish_timeout``. Usually nobody's buffer is full and it goes
        out at once, with no cancel scope and no scheduler turn.

        Not published at all when the router already took the claim on it (it answered on the agent's
        behalf: see :class:`~duckagents.bus.TerminalClaims`); the claim is taken in the same step as the
        publish, with nothing in between that could yield.
        """
        subject = subject if subject is not None else getattr(payload, "request_id", None)
        if not self.bus.claims.take(subject):
            return
        provider = getattr(payload, "provider", None)
        signal = Signal(payload.TYPE, self.source, payload, subject=subject, provider=provider)
        await self.bus.deliver(signal, shielded_for=self.publish_timeout if within is None else within)

    async def _reply_features(self, check: FeatureCheck) -> None:
        """Publish what ``check.model`` (default: the agent's model) supports; unknown names are False."""
        model = check.model or self.model
        features = self.features(model)
        supported = {name: _supports(features, name) for name in check.features or FEATURE_NAMES}
        await self._publish_reply(FeatureReply(check.request_id, self.name, model, supported, features))

    async def _reply_tokens(self, query: TokenEstimate) -> None:
        """Publish the provider's token count of ``query.messages`` (the heuristic if counting fails)."""
        model = query.model or self.model
        try:
            count = await self.provider.estimate_tokens(query.messages, model)
            tokens, exact = count.tokens, count.exact
        except ProviderError:  # a counting endpoint failing must not cost the caller its estimate
            tokens, exact = heuristic_token_count(query.messages), False
        await self._publish_reply(TokenEstimateReply(query.request_id, self.name, model, tokens, exact))

    async def _publish_reply(self, payload: Payload) -> None:
        with contextlib.suppress(BusClosed):
            await self.publish(payload)

    # --- health ------------------------------------------------------------------------------------

    def breaker_changed(self) -> None:
        """Call after every breaker verdict: a state change is reported at once (the router needs it)."""
        if self._admission.breaker_state(trio.current_time()) is not self._reported_breaker:
            self.poke_status()

    def poke_status(self) -> None:
        """Ask the health task to publish a status report now."""
        self._status_wakeup.set()

    async def status(self) -> ProviderStatus:
        """A status report now (last probe, breaker, limiter headroom, metrics, health score). ``detail``
        holds the probe's detail, the :meth:`resources` hook's, ``agent_id``, ``active``,
        ``provider_kind`` and ``default_model``, ``limit_requests`` / ``limit_tokens`` (the rate
        limits the headroom is out of, when set) and, while the breaker is open, ``breaker_retry_at`` and
        ``breaker_retry_in`` (seconds from now: the status's own time plus these is when it half-opens)."""
        detail = {k: self.redact(v) for k, v in self.last_probe.detail.items()}
        try:
            detail.update(await self.resources())
        except ProviderError as exc:
            detail["resources_error"] = self.redact(exc.message)
        admission = self._admission
        now = trio.current_time()
        await admission.refresh(now)
        now = trio.current_time()
        breaker = admission.breaker_state(now)
        headroom = admission.headroom(now)
        metrics = self.metrics.snapshot()
        detail["agent_id"] = self.agent_id
        detail["active"] = str(len(self.active_requests))
        detail["provider_kind"] = self.config.kind
        detail["default_model"] = self.model
        if self.limits.requests is not None:
            detail["limit_requests"] = str(self.limits.requests)
        if self.limits.tokens is not None:
            detail["limit_tokens"] = str(self.limits.tokens)
        retry_at = admission.breaker_retry_at(now)
        if retry_at is not None:
            detail["breaker_retry_at"] = repr(retry_at)
            detail["breaker_retry_in"] = f"{max(0.0, retry_at - now):.3f}"
        score = health_score(
            breaker,
            self.last_probe.ok,
            self.recent.failure_rate,
            metrics.latency.p50 if metrics.latency.samples else None,
            headroom_fraction(headroom, self.limits),
        )
        return ProviderStatus(
            self.name, score, breaker.value, headroom, metrics, self.last_probe.ok, detail, self.draining
        )

    async def _report_health(self) -> None:
        """Probe and report until cancelled (see the module docstring)."""
        next_probe = trio.current_time()
        while True:
            now = trio.current_time()
            wake = next_probe
            breaker_retry = self._admission.breaker_retry_at(now)
            if breaker_retry is not None:
                wake = min(wake, breaker_retry)
            with trio.move_on_at(wake):
                await self._status_wakeup.wait()
            self._status_wakeup = trio.Event()
            if trio.current_time() >= next_probe:
                self.last_probe = await self._probe()
                next_probe = trio.current_time() + self.health_interval
            status = await self.status()
            try:
                await self.publish(status)
            except BusClosed:
                await trio.sleep_forever()  # the tree is shutting down; wait to be cancelled
            # Later breaker changes are compared with what was reported.
            self._reported_breaker = BreakerState(status.breaker_state)

    async def _probe(self) -> HealthProbe:
        """The provider's health probe, bounded by ``probe_timeout``."""
        result: HealthProbe | None = None
        with trio.move_on_after(self.probe_timeout):
            result = await self.provider.health()
        if result is None:
            return HealthProbe(False, self.probe_timeout, {"error": "health probe timed out"})
        return result

    # --- limits ------------------------------------------------------------------------------------

    def _limits(self, model: str) -> RateLimits:
        """The config's limits, falling back to :meth:`default_limits` per dimension the config leaves
        unset (when both count over the same period)."""
        configured = self.config.limits
        defaults = self.default_limits(model)
        if configured.requests is None and configured.tokens is None:
            return defaults
        if not math.isclose(defaults.period, configured.period):
            return configured  # defaults over another period do not mix with the config's
        return RateLimits(
            requests=configured.requests if configured.requests is not None else defaults.requests,
            tokens=configured.tokens if configured.tokens is not None else defaults.tokens,
            period=configured.period,
        )


def missing_features(request: ProviderRequest, features: Features) -> list[str]:
    """The features ``request`` needs (by its content, options and ``required_features``) that
    ``features`` lacks, sorted."""
    needed = {name for name in request.required_features if name in FEATURE_NAMES}
    needed |= implied_features(request.messages, request.options)
    # Streaming is never a hard need: the base agent delivers a non-streaming answer as one chunk.
    needed.discard("streaming")
    return sorted(name for name in needed if not features.supports(name))


def _supports(features: Features, name: str) -> bool:
    try:
        return features.supports(name)
    except ValueError:
        return False
