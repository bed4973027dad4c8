"""The router agent: chooses a provider agent per request, retries and fails over, one final result.

Its picture of the agents comes from signals only (``provider_status``, ``feature_reply``,
``supervisor_event`` and the terminals of attempts), read by its signal loop into a
:class:`~._state.RouterState`. Each caller request becomes a :class:`~._request.RoutedRequest`, which
routes itself in the caller's own task for :meth:`RouterAgent.complete` and in a task of the router for
:meth:`~RouterAgent.stream` and :meth:`~RouterAgent.submit`; attempts go out as ``provider_request``
signals addressed to one agent (same ``request_id``, ``attempt`` = 1, 2, ...) and each gets exactly one
terminal signal: the agent's, or, when the agent crashed, hung past the deadline or the request was
cancelled, one the router publishes on the agent's behalf. docs/signals.md describes the protocol and the
sources.

Two levels of signals, told apart by the envelope ``subject``:

* caller level, subject = the request id: the intake ``provider_request`` (``provider`` unset, source
  :data:`SOURCE`), the chunks, and the one *final* terminal (source :data:`SOURCE`). So a subscriber to
  a request id, or ``bus.expect(request_id)``, sees exactly one terminal: the final result;
* attempt level, subject = :func:`attempt_subject` (``<request id>#<attempt>``): each attempt's
  ``provider_request`` (source :data:`DISPATCH`) and its one terminal (the agent's, or the router's on
  its behalf, source :data:`DISPATCH`).

The router itself keeps the intake (the table of requests in flight), its signal loop (the only reader
of its inbox: it hands each signal, in bus order, to the state or to the request it concerns, never
awaiting anything but the next signal), the feature checks it sends, and the order in which it stops.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from ..bus import Overflow, SignalBus, SignalFilter, Subscription
from ..config import ModelConfig, ProviderConfig, RouterConfig
from ..costs import BudgetLedger, BudgetSpend, PriceTable
from ..errors import BusClosed, ErrorKind, ProviderError
from ..messages import Message
from ..signals import (
    ControlReply,
    FeatureReply,
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    Signal,
    SupervisorEvent,
    make_signal,
)
from ..supervision import Actor, FaultLog
from ..validation import DEFAULT_LIMITS, MAX_ERROR_CHARS, InvalidValue, ValidationLimits, check_request
from ._agent_view import AgentView, needs_of
from ._chunk_queue import ChunkQueue
from ._controls import CONTROL_SOURCE, OperatorControls
from ._report import StatusReport
from ._request import DISPATCH, SOURCE, RoutedRequest, RoutingContext, build_request
from ._state import RouterState
from ._strategies import RoutingStrategy, make_strategy
from ._stream import ResponseStream

__all__ = ["DRAIN_BATCH", "INBOX_TYPES", "OWN_SOURCES", "RouterAgent", "is_final"]

#: The router's own sources; its inbox leaves them out.
OWN_SOURCES = frozenset({SOURCE, DISPATCH, CONTROL_SOURCE})
# Not provider_request: the router knows its own requests. Where an attempt falls in the order of the
# inbox (which decides whether an agent's crash can have lost it) is noted when it is published.
INBOX_TYPES = frozenset(
    {"provider_chunk", "provider_response", "provider_error", "provider_status", "feature_reply",
     "supervisor_event", "control_reply"}
)
#: Signals the loop handles per scheduler turn at most (so other tasks still get to run).
DRAIN_BATCH = 512


def is_final(signal: Signal) -> bool:
    """True for the one final (caller-level) terminal signal of a routed request."""
    return signal.is_terminal and signal.source == SOURCE


class RouterAgent(Actor):
    """Routes requests to provider agents; see the module docstring and docs/signals.md.

    Public API: :meth:`complete`, :meth:`stream`, :meth:`submit`, :meth:`cancel`, :meth:`status`,
    :meth:`status_report` / :meth:`status_document`, :meth:`features`, :attr:`controls` (the operator's
    switches and reload), :attr:`bus`. Run it with ``await nursery.start(router.run)``.
    """

    def __init__(
        self,
        bus: SignalBus,
        providers: Sequence[ProviderConfig],
        config: RouterConfig = RouterConfig(),
        *,
        strategy: RoutingStrategy | None = None,
        terminal_grace: float = 1.0,
        stream_buffer: int = 4096,
        inbox_buffer: int = 4096,
        max_in_flight: int = 10_000,
        ready_timeout: float = 5.0,
        publish_timeout: float = 10.0,
        models: Mapping[str, ModelConfig] | None = None,
        prices: PriceTable | None = None,
        budgets: BudgetLedger | None = None,
        limits: ValidationLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__()
        self.bus = bus
        #: What every request must satisfy at intake (``[validation]``): see :func:`check_request`.
        self.limits = limits
        #: What the router knows about its agents, kept current from signals; and the model routes
        #: (``models``: the config's ``[models."name"]`` tables) and prices.
        self.state = RouterState(
            providers, on_agent_seen=self._ask_features, models=models, config=config, prices=prices
        )
        #: Where spend is held against budgets (None: no budgets).
        self.budgets = budgets
        #: Chunks a ``stream()`` caller may fall behind by before its request is cancelled.
        self.stream_buffer = stream_buffer
        self.inbox_buffer = inbox_buffer
        self.max_in_flight = max_in_flight
        self.ready_timeout = ready_timeout
        self._inbox: Subscription | None = None
        self._requests: dict[str, RoutedRequest] = {}
        #: Set by :meth:`drain`: new requests are refused (across restarts), those in flight go on.
        self._draining = False
        #: Set when a request ends while draining (replaced by the drain each time it waits).
        self._request_ended = trio.Event()
        #: The operator's switches (breakers, drain, models) and reload; see :class:`OperatorControls`.
        self.controls = OperatorControls(bus, self.state, running=lambda: self.running)
        self._context = RoutingContext(
            state=self.state,
            bus=bus,
            strategy=strategy or make_strategy(config.strategy),
            config=config,
            terminal_grace=terminal_grace,
            publish_timeout=publish_timeout,
            inbox_position=self._inbox_position,
            faults=FaultLog(logging.getLogger("duckagents.router")),
            budgets=budgets,
        )

    @property
    def config(self) -> RouterConfig:
        """How the router chooses agents and retries."""
        return self._context.config

    @property
    def strategy(self) -> RoutingStrategy:
        """How the router ranks the eligible agents."""
        return self._context.strategy

    @property
    def terminal_grace(self) -> float:
        """Extra time an agent gets past an attempt's deadline before the router answers for it."""
        return self._context.terminal_grace

    @property
    def publish_timeout(self) -> float:
        """Longest wait for room on the bus for a result that must go out."""
        return self._context.publish_timeout

    @property
    def views(self) -> dict[str, AgentView]:
        """The router's view of each agent, by name."""
        return self.state.views

    @property
    def requests(self) -> dict[str, RoutedRequest]:
        """Requests between intake and final result, by request id."""
        return self._requests

    @property
    def in_flight(self) -> int:
        """Requests between intake and final result."""
        return len(self._requests)

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` was called: new requests are refused."""
        return self._draining

    @property
    def pending_signals(self) -> int:
        """Signals buffered in the router's inbox, not handled yet (diagnostics)."""
        return self._inbox.pending if self._inbox is not None else 0

    def __repr__(self) -> str:
        return f"RouterAgent(agents={list(self.views)}, in_flight={len(self._requests)})"

    # --- public API --------------------------------------------------------------------------------

    async def complete(
        self,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        provider: str | None = None,
        # The contract's name: it becomes the request's deadline, which the agents honour too.
        timeout: float | None = None,  # noqa: ASYNC109
        required_features: Sequence[str] = (),
        principal: str | None = None,
        **options: Any,
    ) -> ProviderResponse:
        """One completion; raises :class:`ProviderError` with the final failure.

        ``model`` (a name some provider serves; None: the default model) decides the candidates and the
        fallback chains (docs/routing.md); ``provider`` pins the request to one agent (no fallbacks);
        ``timeout`` (seconds) defaults to the router config's ``request_timeout``; ``principal`` names
        who asks, for per-token budgets; ``options`` are ``RequestOptions`` fields (``max_tokens``...).
        Cancelling the caller cancels the request.
        """
        # A caller cancelled already gets no request at all (no intake, no final result).
        await trio.lowlevel.checkpoint_if_cancelled()
        request = build_request(
            prompt, model=model, provider=provider, required_features=required_features, stream=False,
            options=options, timeout=self.config.request_timeout if timeout is None else timeout,
            principal=principal,
        )
        # Routed in this task: no spawn, and the caller wakes straight from the attempt's terminal.
        routed = self._accept(request, inline=True)
        try:
            await routed.route()
        finally:
            self._forget(routed)
        # Two scheduler turns, so tasks woken by the final result (bus subscribers) have seen it before
        # the caller goes on, as when another task published it: the final went out without one (see
        # publish_nowait), and the tasks of one turn run in an order Trio chooses at random.
        await trio.lowlevel.cancel_shielded_checkpoint()
        await trio.lowlevel.cancel_shielded_checkpoint()
        final = routed.final
        if isinstance(final, ProviderResponse):
            return final
        assert final is not None
        raise final.to_error()

    def stream(
        self,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        provider: str | None = None,
        timeout: float | None = None,
        required_features: Sequence[str] = (),
        principal: str | None = None,
        **options: Any,
    ) -> ResponseStream:
        """A streamed completion: ``async with router.stream(...) as s: async for chunk in s`` (see
        :class:`~._stream.ResponseStream`); ``s.response`` holds the final response afterwards. The
        arguments are :meth:`complete`'s. A stream fails over to another agent or model only until its
        first chunk reached the caller."""
        request = build_request(
            prompt, model=model, provider=provider, required_features=required_features, stream=True,
            options=options, timeout=timeout, principal=principal,
        )
        return ResponseStream(
            request, self._open_stream, buffer=self.stream_buffer, close_timeout=self.publish_timeout
        )

    async def submit(self, request: ProviderRequest) -> None:
        """Route ``request`` in the background; its chunks and one final terminal (source ``/router``,
        see :func:`is_final`) go to the bus. ``request.provider`` pins it; ``request.deadline`` (absolute,
        Trio clock) defaults to now + ``request_timeout``. Raises ``ProviderError`` if not accepted."""
        await trio.lowlevel.checkpoint()
        self._accept(request)

    def cancel(self, request_id: str) -> bool:
        """Cancel a request: it ends with a ``cancelled`` final result. False if unknown or ended."""
        routed = self._requests.get(request_id)
        return routed is not None and routed.cancel()

    async def status(self) -> list[ProviderStatus]:
        """The status of every agent (waiting up to ``ready_timeout`` for a first report): its latest
        report, current to the last signal the router read: ``breaker_state`` and ``draining`` follow
        control replies and terminals too, and ``metrics`` are the router's count of the attempts the
        agent answered (:meth:`AgentView.metrics`), so a request shows as soon as it ended."""
        await self._wait_for(lambda: all(v.status is not None for v in self.views.values()))
        return [
            attrs.evolve(v.status, breaker_state=v.breaker_state, draining=v.draining, metrics=v.metrics())
            for v in self.views.values()
            if v.status is not None
        ]

    def status_report(self) -> StatusReport:
        """What the router knows about each agent now (no waiting): see :class:`StatusReport`."""
        now = trio.current_time()
        return StatusReport.of(self.views.values(), len(self._requests), self.state.closing, now)

    def status_document(self) -> dict[str, Any]:
        """:meth:`status_report` as JSON: the one status document of a running server, returned by the
        gateway's ``status`` op and the HTTP ``GET /v1/status`` (docs/gateway.md, *Status document*)."""
        return self.status_report().to_json()

    def configure(
        self,
        config: RouterConfig,
        *,
        providers: Sequence[ProviderConfig] | None = None,
        models: Mapping[str, ModelConfig] | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        """Route new requests by ``config`` (strategy, attempts, backoff, timeouts) and, given
        ``providers``, by their default model and ``models``' fallback chains and prices; requests in
        flight keep theirs. Used by a reload (the views follow: :meth:`add_view`, :meth:`remove_view`)."""
        if config != self.config:
            same = config.strategy == self.config.strategy
            strategy = self.strategy if same else make_strategy(config.strategy)
            self._context = attrs.evolve(self._context, config=config, strategy=strategy)
        if providers is not None:
            self.state.reconfigure(providers, models or {}, config, prices)

    def add_view(self, config: ProviderConfig) -> AgentView:
        """Follow a new agent (or replace the view of the one with that name); used by a reload."""
        return self.state.add_view(config)

    def remove_view(self, name: str) -> None:
        """Stop following an agent; used by a reload once it stopped."""
        self.state.remove_view(name)

    async def spend(self) -> list[BudgetSpend]:
        """Every budget with its spend and holds in the current day or month (empty without budgets).
        What each agent spent per model since it started is in its status (``metrics.cost_by_model``)."""
        return [] if self.budgets is None else await self.budgets.spend()

    async def features(self) -> list[FeatureReply]:
        """Every agent's features for its default model (waiting up to ``ready_timeout``)."""
        await self._wait_for(lambda: all(v.default_reply is not None for v in self.views.values()))
        return [v.default_reply for v in self.views.values() if v.default_reply is not None]

    async def wait_ready(self, within: float | None = None) -> bool:
        """Wait until every agent reported its status and features; False if ``within`` seconds (default
        ``ready_timeout``) passed first."""
        return await self._wait_for(
            lambda: all(v.status is not None and v.features for v in self.views.values()), within
        )

    def close_intake(self) -> None:
        """Refuse new requests and stop retrying: what is in flight ends with what it gets."""
        self.state.closing = True
        self.state.notify()

    # Not a deadline for the call: when it passes, the requests still in flight are stopped.
    async def drain(self, timeout: float) -> int:  # noqa: ASYNC109
        """The first half of a graceful stop: refuse new requests (``shutdown``), let those in flight
        finish (retries and failover included) for up to ``timeout`` seconds, then stop the rest, each
        with a ``shutdown`` final result. Returns how many were stopped.

        Cancelled (a second signal: stop at once), it stops the rest right away, their final results
        still go out. The router keeps running and refusing; leaving the tree stops it.
        """
        self._draining = True
        stopped: list[RoutedRequest] = []
        message = f"the service is stopping: still in flight after the drain timeout ({timeout:g} s)"
        try:
            with trio.move_on_after(timeout):
                while self._requests:
                    self._request_ended = trio.Event()
                    await self._request_ended.wait()
        except trio.Cancelled:
            message = "the service is stopping at once"
            raise
        finally:
            for routed in list(self._requests.values()):
                if routed.stop(ErrorKind.SHUTDOWN, message):
                    stopped.append(routed)
        # Their final results are on their way (published shielded and bounded by each request).
        with trio.move_on_after(self.publish_timeout):
            for routed in stopped:
                await routed.done.wait()
        return len(stopped)

    async def _wait_for(self, condition: Callable[[], bool], within: float | None = None) -> bool:
        with trio.move_on_after(self.ready_timeout if within is None else within):
            while not condition():
                await self.state.changed.wait()
        return condition()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; then stop in order (see :meth:`_stop`)."""
        if self.running:
            raise RuntimeError("the router is already running")
        self.state.closing = False
        loop_scope = trio.CancelScope(shield=True)
        loop_done = trio.Event()
        # The router's own signals (final results, terminals on an agent's behalf) tell it nothing new:
        # left out, they do not wake its loop once per request.
        inbox_filter = SignalFilter(types=INBOX_TYPES, exclude_sources=OWN_SOURCES)
        with self.bus.subscribe(inbox_filter, buffer=self.inbox_buffer, overflow=Overflow.BLOCK) as inbox:
            self._inbox = inbox
            try:
                async with self._serving() as nursery:
                    nursery.start_soon(self._serve_signals, inbox, loop_scope, loop_done)
                    for view in self.views.values():
                        self._ask_features(view)
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._stop(inbox, loop_scope, loop_done)
            finally:
                self._inbox = None

    async def _stop(self, inbox: Subscription, loop_scope: trio.CancelScope, loop_done: trio.Event) -> None:
        """Stop in order: intake, signal loop, what is still buffered, then every request (each publishes
        its final result; those routed by their callers' tasks are waited for, bounded)."""
        self.close_intake()
        loop_scope.cancel()
        with trio.move_on_after(self.publish_timeout):
            await loop_done.wait()
        self._drain(inbox)  # every terminal already published is taken into account
        inbox.close()  # from here on nobody waits for us on the bus
        crashed = self.crashed
        kind = ErrorKind.AGENT_CRASHED if crashed else ErrorKind.SHUTDOWN
        requests = list(self._requests.values())
        for routed in requests:
            routed.stop(kind, "the router crashed" if crashed else "the router shut down")
        # The router's nursery waits for the requests it routes; these are for the ones routed by
        # callers, so that no final result comes after the router stopped.
        with trio.move_on_after(self.publish_timeout):
            for routed in requests:
                await routed.done.wait()

    def _on_crash(self) -> None:
        """A bug stops every request (each publishes its final result)."""
        for routed in list(self._requests.values()):
            routed.stop(ErrorKind.AGENT_CRASHED, "the router crashed")

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the router's nursery, under the crash guard."""
        if not self.running:
            raise ProviderError(ErrorKind.SHUTDOWN, "the router is not running")
        super()._spawn(fn, *args)

    # --- intake ------------------------------------------------------------------------------------

    def _accept(
        self, request: ProviderRequest, *, chunks_out: ChunkQueue | None = None, inline: bool = False
    ) -> RoutedRequest:
        """Accept ``request``: routed by a new task in the router's nursery, or by the caller (who then
        awaits :meth:`RoutedRequest.route` itself) when ``inline``. Raises ``ProviderError`` when it is
        refused."""
        if not self.running or self.state.closing or self._draining:
            raise ProviderError(ErrorKind.SHUTDOWN, "the router is not accepting requests")
        try:  # the door of every request: what no agent can take is refused here, naming the field
            check_request(request, self.limits)
        except InvalidValue as exc:
            raise exc.to_error(request.request_id) from None
        requests = self._requests
        if request.request_id in requests:
            message = f"request id {request.request_id!r} is already in flight"
            raise ProviderError(ErrorKind.INVALID_REQUEST, message)
        if len(requests) >= self.max_in_flight:
            raise ProviderError(ErrorKind.OVERLOADED, f"{len(requests)} requests in flight", retry_after=1.0)
        views = self.views
        if request.provider is not None and request.provider not in views:
            raise ProviderError(
                ErrorKind.NO_PROVIDER, f"unknown provider {request.provider!r}; known: {', '.join(views)}"
            )
        try:
            needs = needs_of(request.messages, request.options, request.required_features, request.model)
        except ValueError as exc:
            raise ProviderError(ErrorKind.INVALID_REQUEST, str(exc)[:MAX_ERROR_CHARS]) from None
        deadline = request.deadline
        if deadline is None:
            deadline = trio.current_time() + self.config.request_timeout
        if request.deadline != deadline or request.attempt != 1:
            request = attrs.evolve(request, deadline=deadline, attempt=1)
        routed = RoutedRequest(request, needs, deadline, self._context, chunks_out=chunks_out, inline=inline)
        requests[routed.request_id] = routed
        if not inline:
            self._spawn(self._route, routed)
        return routed

    def _open_stream(self, request: ProviderRequest, chunks_out: ChunkQueue) -> RoutedRequest:
        """Accept a ``stream()`` caller's request, its chunks going to ``chunks_out``."""
        return self._accept(request, chunks_out=chunks_out)

    async def _route(self, routed: RoutedRequest) -> None:
        """Route ``routed`` in a task of the router, then forget it."""
        try:
            await routed.route()
        finally:
            self._forget(routed)

    def _forget(self, routed: RoutedRequest) -> None:
        """``routed`` ended: off the table (and a drain waiting for the table to empty looks again)."""
        self._requests.pop(routed.request_id, None)
        if self._draining:
            self._request_ended.set()

    # --- the signal loop ---------------------------------------------------------------------------

    async def _serve_signals(self, inbox: Subscription, scope: trio.CancelScope, done: trio.Event) -> None:
        """Run the signal loop (under the crash guard) until ``scope`` is cancelled; then set ``done``."""
        try:
            with scope:
                await self._guard(self._read_inbox, inbox)
        finally:
            done.set()

    async def _read_inbox(self, inbox: Subscription) -> None:
        while True:
            try:
                signal = await inbox.receive()
            except BusClosed:
                await trio.sleep_forever()  # the bus closed: nothing to do until we are stopped
            self._handle(signal)
            self._drain(inbox, DRAIN_BATCH)

    def _drain(self, inbox: Subscription, limit: float = math.inf) -> None:
        """Handle buffered signals (at most ``limit``) without yielding."""
        handled = 0
        while handled < limit:
            try:
                signal = inbox.receive_nowait()
            except (trio.WouldBlock, BusClosed):
                return
            self._handle(signal)
            handled += 1

    def _handle(self, signal: Signal) -> None:
        """Take one signal into account: what it says about an agent goes to the state, what concerns a
        request in flight to that request. Synchronous, so the bus never waits on the router."""
        state = self.state
        state.position += 1
        if signal.source in OWN_SOURCES:
            return  # the router's own (its inbox leaves them out; a router fed otherwise may see them)
        data = signal.data
        if isinstance(data, ProviderChunk):
            routed = self._requests.get(data.request_id)
            if routed is not None:
                routed.take_chunk(data)
        elif isinstance(data, ProviderResponse | ProviderErrorData):
            state.observe_terminal(data)
            routed = self._requests.get(data.request_id)
            if routed is not None:
                routed.take_terminal(data)
        elif isinstance(data, ProviderStatus):
            state.observe_status(data)
        elif isinstance(data, FeatureReply):
            state.observe_features(data)
        elif isinstance(data, ControlReply):
            state.observe_control(data)  # first: when the caller wakes, the router routes by it
            self.controls.take_reply(data)
        elif isinstance(data, SupervisorEvent):
            gone = state.observe_supervisor_event(data)
            if gone is not None:
                for routed in self._requests.values():
                    routed.agent_gone(gone)

    def _inbox_position(self) -> float:
        """Where a signal published now falls in the router's inbox: signals handled plus buffered."""
        inbox = self._inbox
        return math.inf if inbox is None else self.state.position + inbox.pending

    # --- feature checks ----------------------------------------------------------------------------

    def _ask_features(self, view: AgentView) -> None:
        """Ask ``view``'s agent what it supports (``feature_check``), unless that is known or being asked.

        Asked when the router starts and whenever an agent with unknown features shows up (a status, or a
        supervisor's ``started`` / ``restarted``), since a check sent while the agent was down is lost.
        """
        if view.features or view.features_asked or not self.running:
            return
        view.features_asked = True
        self._spawn(self._send_feature_checks, view)

    async def _send_feature_checks(self, view: AgentView) -> None:
        """One check for the default model and one per configured model (the replies reach the state)."""
        try:
            for check in self.state.new_feature_checks(view):
                await self.bus.publish(make_signal(check, DISPATCH))
        except BusClosed:
            pass
        finally:
            view.features_asked = False
