"""The router agent: chooses a provider agent per request, retries and fails over, one final result.

Its picture of the agents comes from signals only (``provider_status``, ``feature_reply``,
``supervisor_event`` and the terminals of attempts; :mod:`._board`, :mod:`._views`, kept current by the
signal loop of :mod:`._router_loop`). Each caller request becomes a :class:`~._runs.Run`, driven
(:mod:`._drive`) by the caller's own task for :meth:`RouterAgent.complete` and by a task of the router
for :meth:`~RouterAgent.stream` and :meth:`~RouterAgent.submit`; attempts go out as
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

import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ..bus import Overflow, SignalBus, SignalFilter, Subscription
from ..config import ProviderConfig, RouterConfig
from ..errors import ErrorKind, ProviderError
from ..messages import Message
from ..signals import (
    FeatureReply,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    Signal,
)
from ..supervision import Actor
from ._agent_view import AgentView
from ._drive import attempt_subject, drive, open_run
from ._feature_checks import ask_features
from ._request import Final, Run, build_request
from ._router_loop import INBOX_TYPES, serve_signals, stop_router
from ._state import AGENT_CHILD_PREFIX, DISPATCH, OWN_SOURCES, SOURCE, RouterBoard
from ._strategies import RoutingStrategy, make_strategy
from ._stream import ChunkQueue, ResponseStream

__all__ = ["AGENT_CHILD_PREFIX", "DISPATCH", "SOURCE", "RouterAgent", "attempt_subject", "is_final"]

def is_final(signal: Signal) -> bool:
    """True for the one final (caller-level) terminal signal of a routed request."""
    return signal.is_terminal and signal.source == SOURCE


class RouterAgent(Actor):
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
        self.board.on_agent_seen = functools.partial(ask_features, self)
        #: Extra time an agent gets past an attempt's deadline before the router answers for it.
        self.terminal_grace = terminal_grace
        #: Chunks a ``stream()`` caller may fall behind by before its request is cancelled.
        self.stream_buffer = stream_buffer
        self.inbox_buffer = inbox_buffer
        self.max_in_flight = max_in_flight
        self.ready_timeout = ready_timeout
        self.publish_timeout = publish_timeout
        super().__init__()
        self._inbox: Subscription | None = None

    @property
    def views(self) -> dict[str, AgentView]:
        """The router's view of each agent, by name."""
        return self.board.views

    @property
    def runs(self) -> dict[str, Run]:
        """Requests between intake and final result, by request id."""
        return self.board.runs

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
        # A caller cancelled already gets no request at all (no intake, no final result).
        await trio.lowlevel.checkpoint_if_cancelled()
        request = build_request(
            prompt, model=model, provider=provider, required_features=required_features, stream=False,
            options=options, timeout=timeout,
        )
        # Driven in this task: no spawn, and the caller wakes straight from the attempt's terminal.
        run = self._open_run(request, inline=True)
        await drive(self, run)
        # Two scheduler turns, so tasks woken by the final result (bus subscribers) have seen it before
        # the caller goes on, as when another task published it: the final went out without one (see
        # publish_nowait), and the tasks of one turn run in an order Trio chooses at random.
        await trio.lowlevel.cancel_shielded_checkpoint()
        await trio.lowlevel.cancel_shielded_checkpoint()
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
        :class:`~._stream.ResponseStream`); ``s.response`` holds the final response afterwards."""
        request = build_request(
            prompt, model=model, provider=provider, required_features=required_features, stream=True,
            options=options, timeout=timeout,
        )
        return ResponseStream(self, request)

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
        if self.running:
            raise RuntimeError("the router is already running")
        self.board.closing = False
        loop_scope = trio.CancelScope(shield=True)
        loop_done = trio.Event()
        # The router's own signals (final results, terminals on an agent's behalf) tell it nothing new:
        # left out, they do not wake its loop once per request.
        inbox_filter = SignalFilter(types=INBOX_TYPES, exclude_sources=OWN_SOURCES)
        with self.bus.subscribe(inbox_filter, buffer=self.inbox_buffer, overflow=Overflow.BLOCK) as inbox:
            self._inbox = inbox
            try:
                async with self._serving() as nursery:
                    nursery.start_soon(serve_signals, self, inbox, loop_scope, loop_done)
                    for view in self.views.values():
                        ask_features(self, view)
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:
                        with trio.CancelScope(shield=True):
                            await stop_router(self, inbox, loop_scope, loop_done)
            finally:
                self._inbox = None

    def _on_crash(self) -> None:
        """A bug stops every run (each publishes its final result)."""
        for run in list(self.runs.values()):
            run.stop(ErrorKind.AGENT_CRASHED, "the router crashed")

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the router's nursery, under the crash guard."""
        if not self.running:
            raise ProviderError(ErrorKind.SHUTDOWN, "the router is not running")
        super()._spawn(fn, *args)

    # --- the view ----------------------------------------------------------------------------------

    async def _wait_for(self, condition: Callable[[], bool], within: float | None = None) -> bool:
        with trio.move_on_after(self.ready_timeout if within is None else within):
            while not condition():
                await self.board.changed.wait()
        return condition()

    # --- routing -----------------------------------------------------------------------------------

    def _open_run(
        self, request: ProviderRequest, *, chunks_out: ChunkQueue | None = None, inline: bool = False
    ) -> Run:
        """Accept ``request`` (see :func:`~._drive.open_run`)."""
        return open_run(self, request, chunks_out=chunks_out, inline=inline)

    def inbox_position(self) -> float:
        """Where a signal published now falls in the router's inbox: signals handled plus buffered."""
        inbox = self._inbox
        return math.inf if inbox is None else self.board.position + inbox.pending

    async def publish(
        self, payload: Final | ProviderRequest, source: str, subject: str | None = None
    ) -> None:
        """Publish a payload as the router (``subject`` overrides the envelope's, which is the request
        id); a closed bus is ignored. Delivered at once when nobody's buffer is full (no scheduler round
        trip), so this is a cancellation point only when it has to wait."""
        signal = Signal(
            payload.TYPE, source, payload, subject=subject or payload.request_id, provider=payload.provider
        )
        await self.bus.deliver(signal)

    async def publish_shielded(
        self, payload: Final | ProviderRequest, source: str, subject: str | None = None
    ) -> None:
        """:meth:`publish` that no cancellation interrupts, bounded by ``publish_timeout``: for results that
        must go out. The shielded scope is only entered when the bus makes us wait (rarely)."""
        signal = Signal(
            payload.TYPE, source, payload, subject=subject or payload.request_id, provider=payload.provider
        )
        await self.bus.deliver(signal, shielded_for=self.publish_timeout)


