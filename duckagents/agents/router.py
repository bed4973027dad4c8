"""The router agent: chooses a provider agent per request, retries and fails over, one final result.

Its picture of the agents comes from signals only (``provider_status``, ``feature_reply``,
``supervisor_event`` and the terminals of attempts; :mod:`._board`, :mod:`._views`). Each caller request
becomes a :class:`~._runs.Run` driven by its own task (:mod:`._drive`); attempts go out as
``provider_request`` signals addressed to one agent (same ``request_id``, ``attempt`` = 1, 2, ...) and
each gets exactly one terminal signal: the agent's, or, when the agent crashed, hung past the deadline or
the request was cancelled, one the router publishes on the agent's behalf. docs/signals.md describes the
protocol and the sources.

Two levels of signals, told apart by the envelope ``subject``:

* caller level, subject = the request id: the intake ``provider_request`` (``provider`` unset, source
  :data:`SOURCE`), the chunks, and the one *final* terminal (source :data:`SOURCE`). So a subscriber to
  a request id, or ``bus.expect(request_id)``, sees exactly one terminal: the final result;
* attempt level, subject = :func:`attempt_subject` (``<request id>#<attempt>``): each attempt's
  ``provider_request`` (source :data:`DISPATCH`) and its one terminal (the agent's, or the router's on
  its behalf, source :data:`DISPATCH`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from ..bus import Overflow, SignalBus, SignalFilter, Subscription
from ..config import ProviderConfig, RouterConfig
from ..errors import BusClosed, ErrorKind, ProviderError
from ..messages import Message
from ..signals import (
    FeatureCheck,
    FeatureReply,
    Payload,
    ProviderChunk,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    Signal,
    make_signal,
    new_id,
)
from ._board import AGENT_CHILD_PREFIX, DISPATCH, SOURCE, RouterBoard
from ._drive import attempt_subject, drive
from ._runs import ResponseStream, Run, build_request
from ._views import AgentView, needs_of
from .strategies import RoutingStrategy, make_strategy

__all__ = ["AGENT_CHILD_PREFIX", "DISPATCH", "SOURCE", "RouterAgent", "attempt_subject", "is_final"]

# provider_request too: the router sees its own attempts go by, which orders them against supervisor
# events (an agent's crash only ends the attempts that were on the bus before the crash was).
_INBOX_TYPES = frozenset(
    {"provider_request", "provider_chunk", "provider_response", "provider_error", "provider_status",
     "feature_reply", "supervisor_event"}
)
#: Signals the loop handles per scheduler turn at most (so other tasks still get to run).
DRAIN_BATCH = 512


def is_final(signal: Signal) -> bool:
    """True for the one final (caller-level) terminal signal of a routed request."""
    return signal.is_terminal and signal.source == SOURCE


class RouterAgent:
    """Routes requests to provider agents; see the module docstring and docs/signals.md.

    Public API: :meth:`complete`, :meth:`stream`, :meth:`submit`, :meth:`cancel`, :meth:`status`,
    :meth:`features`, :attr:`bus`. Run it with ``await nursery.start(router.run)``.
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
    ) -> None:
        self.bus = bus
        self.config = config
        self.strategy = strategy or make_strategy(config.strategy)
        #: What the router knows (agent views, runs in flight), kept current from signals.
        self.board = RouterBoard(providers, stream_buffer)
        self.board.on_agent_seen = self._ask_features
        #: Extra time an agent gets past an attempt's deadline before the router answers for it.
        self.terminal_grace = terminal_grace
        #: Chunks a ``stream()`` caller may fall behind by before its request is cancelled.
        self.stream_buffer = stream_buffer
        self.inbox_buffer = inbox_buffer
        self.max_in_flight = max_in_flight
        self.ready_timeout = ready_timeout
        self.publish_timeout = publish_timeout
        self._nursery: trio.Nursery | None = None
        self._inbox: Subscription | None = None
        self._crashed = False

    @property
    def views(self) -> dict[str, AgentView]:
        """The router's view of each agent, by name."""
        return self.board.views

    @property
    def runs(self) -> dict[str, Run]:
        """Requests between intake and final result, by request id."""
        return self.board.runs

    @property
    def running(self) -> bool:
        """True while :meth:`run` serves."""
        return self._nursery is not None

    @property
    def in_flight(self) -> int:
        """Requests between intake and final result."""
        return len(self.runs)

    @property
    def pending_signals(self) -> int:
        """Signals buffered in the router's inbox, not handled yet (diagnostics)."""
        return self._inbox.pending if self._inbox is not None else 0

    def __repr__(self) -> str:
        return f"RouterAgent(agents={list(self.views)}, in_flight={len(self.runs)})"

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
        **options: Any,
    ) -> ProviderResponse:
        """One completion; raises :class:`ProviderError` with the final failure.

        ``provider`` pins the request to one agent; ``timeout`` (seconds) defaults to the router
        config's ``request_timeout``; ``options`` are ``RequestOptions`` fields (``max_tokens``...).
        Cancelling the caller cancels the request.
        """
        request = build_request(
            prompt, model=model, provider=provider, required_features=required_features, stream=False,
            options=options,
        )
        run = self._open_run(_with_timeout(request, timeout))
        try:
            await run.done.wait()
        finally:
            if not run.done.is_set():
                self.cancel(run.request_id)
        final = run.final
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
        **options: Any,
    ) -> ResponseStream:
        """A streamed completion: ``async with router.stream(...) as s: async for chunk in s`` (see
        :class:`~._runs.ResponseStream`); ``s.response`` holds the final response afterwards."""
        request = build_request(
            prompt, model=model, provider=provider, required_features=required_features, stream=True,
            options=options,
        )
        return ResponseStream(self, _with_timeout(request, timeout))

    async def submit(self, request: ProviderRequest) -> None:
        """Route ``request`` in the background; its chunks and one final terminal (source ``/router``,
        see :func:`is_final`) go to the bus. ``request.provider`` pins it; ``request.deadline`` (absolute,
        Trio clock) defaults to now + ``request_timeout``. Raises ``ProviderError`` if not accepted."""
        await trio.lowlevel.checkpoint()
        self._open_run(request)

    def cancel(self, request_id: str) -> bool:
        """Cancel a request: it ends with a ``cancelled`` final result. False if unknown or ended."""
        run = self.runs.get(request_id)
        return run is not None and run.stop(ErrorKind.CANCELLED, "cancelled by the caller")

    async def status(self) -> list[ProviderStatus]:
        """The latest status of every agent (waiting up to ``ready_timeout`` for a first report)."""
        await self._wait_for(lambda: all(v.status is not None for v in self.views.values()))
        return [v.status for v in self.views.values() if v.status is not None]

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
        self.board.closing = True
        self.board.notify()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; then stop in order: intake, signal loop, drain, runs (each run
        publishes its final result)."""
        if self._nursery is not None:
            raise RuntimeError("the router is already running")
        self.board.closing = False
        self._crashed = False
        loop_scope = trio.CancelScope(shield=True)
        loop_done = trio.Event()
        inbox_filter = SignalFilter(types=_INBOX_TYPES)
        with self.bus.subscribe(inbox_filter, buffer=self.inbox_buffer, overflow=Overflow.BLOCK) as inbox:
            self._inbox = inbox
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._serve_inbox, inbox, loop_scope, loop_done)
                    for view in self.views.values():
                        self._ask_features(view)
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._stop(inbox, loop_scope, loop_done)
            finally:
                self._nursery = None
                self._inbox = None

    async def _stop(self, inbox: Subscription, loop_scope: trio.CancelScope, loop_done: trio.Event) -> None:
        self.close_intake()
        loop_scope.cancel()
        with trio.move_on_after(self.publish_timeout):
            await loop_done.wait()
        self._drain(inbox)  # every terminal already published is taken into account
        inbox.close()  # from here on nobody waits for us on the bus
        kind = ErrorKind.AGENT_CRASHED if self._crashed else ErrorKind.SHUTDOWN
        for run in list(self.runs.values()):
            run.stop(kind, "the router crashed" if self._crashed else "the router shut down")

    async def _serve_inbox(self, inbox: Subscription, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                await self._guard(self._loop, inbox)
        finally:
            done.set()

    async def _loop(self, inbox: Subscription) -> None:
        # Never awaits anything but receive, and handles whatever is buffered in one scheduler turn: the
        # router sees every signal of every request, so it must never be what the bus waits on.
        while True:
            try:
                signal = await inbox.receive()
            except BusClosed:
                await trio.sleep_forever()  # the bus closed: nothing to do until we are stopped
            self.board.handle(signal)
            self._drain(inbox, DRAIN_BATCH)

    def _drain(self, inbox: Subscription, limit: float = math.inf) -> None:
        """Handle buffered signals (at most ``limit``) without yielding."""
        handled = 0
        while handled < limit:
            try:
                signal = inbox.receive_nowait()
            except (trio.WouldBlock, BusClosed):
                return
            self.board.handle(signal)
            handled += 1

    async def _guard(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run one of the router's tasks; a bug stops every run (each publishes its final result)."""
        try:
            await fn(*args)
        except Exception:
            self._crashed = True
            for run in list(self.runs.values()):
                run.stop(ErrorKind.AGENT_CRASHED, "the router crashed")
            raise

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            raise ProviderError(ErrorKind.SHUTDOWN, "the router is not running")
        self._nursery.start_soon(self._guard, fn, *args)

    # --- the view ----------------------------------------------------------------------------------

    async def _wait_for(self, condition: Callable[[], bool], within: float | None = None) -> bool:
        with trio.move_on_after(self.ready_timeout if within is None else within):
            while not condition():
                await self.board.changed.wait()
        return condition()

    def _ask_features(self, view: AgentView) -> None:
        """Ask an agent for its features unless known or being asked. Called at start and whenever the
        agent shows up (status, supervisor started/restarted): a check sent while it was down is lost."""
        if view.features or view.features_asked or self._nursery is None:
            return
        view.features_asked = True
        self._spawn(self._send_feature_checks, view)

    async def _send_feature_checks(self, view: AgentView) -> None:
        checks = self.board.feature_checks
        # Forget the unanswered checks of an earlier ask, so the table stays bounded.
        for check_id in [c for c, (name, _) in checks.items() if name == view.name]:
            del checks[check_id]
        try:
            for model in dict.fromkeys([None, *view.config.models]):
                check_id = new_id()
                checks[check_id] = (view.name, model is None)
                check = FeatureCheck(check_id, provider=view.name, model=model)
                await self.bus.publish(make_signal(check, DISPATCH))
        except BusClosed:
            pass
        finally:
            view.features_asked = False

    # --- routing -----------------------------------------------------------------------------------

    def _open_run(
        self, request: ProviderRequest, *, chunks_out: trio.MemorySendChannel[ProviderChunk] | None = None
    ) -> Run:
        if self._nursery is None or self.board.closing:
            raise ProviderError(ErrorKind.SHUTDOWN, "the router is not accepting requests")
        if request.request_id in self.runs:
            raise ProviderError(
                ErrorKind.INVALID_REQUEST, f"request id {request.request_id!r} is already in flight"
            )
        if len(self.runs) >= self.max_in_flight:
            raise ProviderError(ErrorKind.OVERLOADED, f"{len(self.runs)} requests in flight", retry_after=1.0)
        if request.provider is not None and request.provider not in self.views:
            raise ProviderError(
                ErrorKind.NO_PROVIDER,
                f"unknown provider {request.provider!r}; known: {', '.join(self.views)}",
            )
        try:
            needs = needs_of(request.messages, request.options, request.required_features, request.model)
        except ValueError as exc:
            raise ProviderError(ErrorKind.INVALID_REQUEST, str(exc)) from None
        deadline = request.deadline
        if deadline is None:
            deadline = trio.current_time() + self.config.request_timeout
        run = Run(attrs.evolve(request, deadline=deadline, attempt=1), needs, deadline, chunks_out)
        self.runs[run.request_id] = run
        self._spawn(drive, self, run)
        return run

    async def publish(self, payload: Payload, source: str, subject: str | None = None) -> None:
        """Publish a payload as the router (``subject`` overrides the envelope's); a closed bus is ignored."""
        signal = make_signal(payload, source)
        if subject is not None:
            signal = attrs.evolve(signal, subject=subject)
        try:
            await self.bus.publish(signal)
        except BusClosed:
            pass


def _with_timeout(request: ProviderRequest, timeout: float | None) -> ProviderRequest:
    if timeout is None:
        return request
    return attrs.evolve(request, deadline=trio.current_time() + timeout)
