"""What the router knows, and how signals update it: agent views, runs in flight, the choice of agent.

Everything here is synchronous: the router's signal loop calls :meth:`RouterBoard.handle` for each
signal, in bus order, and never waits on anything else (so the bus never waits on the router).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs
import trio

from ..config import ProviderConfig
from ..errors import ErrorKind
from ..signals import (
    FeatureReply,
    ProviderChunk,
    ProviderErrorData,
    ProviderResponse,
    ProviderStatus,
    Signal,
    SupervisorEvent,
)
from ._agent_view import AgentView
from ._request import Final, Run
from ._strategies import RequestShape, RoutingStrategy

__all__ = ["AGENT_CHILD_PREFIX", "DISPATCH", "OWN_SOURCES", "SOURCE", "NoneFits", "RouterBoard", "Wait"]

#: Source of caller-level signals: the intake request and the final result.
SOURCE = "/router"
#: Source of attempt-level signals: attempts, terminals on an agent's behalf, feature checks.
DISPATCH = "/router/dispatch"
#: Supervisor child ids of provider agents are ``agent:<name>``.
AGENT_CHILD_PREFIX = "agent:"
#: The router's own sources; its inbox leaves them out.
OWN_SOURCES = frozenset({SOURCE, DISPATCH})
_GONE_EVENTS = frozenset({"crashed", "exited", "shutdown", "killed", "gave_up"})
_BACK_EVENTS = frozenset({"started", "restarted"})


@attrs.frozen
class Wait:
    """No agent now; the earliest may be back at ``until`` (``inf``: when the view changes)."""

    until: float
    kind: ErrorKind
    reasons: tuple[str, ...]


@attrs.frozen
class NoneFits:
    """No agent can ever serve the request; ``reasons`` says why, per agent."""

    reasons: tuple[str, ...]


class RouterBoard:
    """The router's picture of the agents and of its runs, kept current from signals."""

    def __init__(self, providers: Sequence[ProviderConfig], stream_buffer: int) -> None:
        self.views: dict[str, AgentView] = {p.name: AgentView(p, i) for i, p in enumerate(providers)}
        #: Runs by request id: every request between intake and its final result.
        self.runs: dict[str, Run] = {}
        #: Feature checks awaiting a reply: check id -> (agent, asked for its default model).
        self.feature_checks: dict[str, tuple[str, bool]] = {}
        #: Set (and replaced) whenever the view changes; waiters re-check their condition.
        self.changed = trio.Event()
        #: The router takes no requests and retries nothing any more.
        self.closing = False
        self.stream_buffer = stream_buffer
        #: Called when an agent shows up (status, restart) so the router can ask for its features.
        self.on_agent_seen: Callable[[AgentView], None] = lambda view: None
        #: Signals handled so far: the position in the router's inbox of the one being handled.
        self.position = 0

    def notify(self) -> None:
        """Wake everyone waiting for the view to change."""
        self.changed.set()
        self.changed = trio.Event()

    def end_attempt(self, run: Run, result: Final, *, on_behalf: bool) -> None:
        """Record the terminal of ``run``'s outstanding attempt (once) and free the agent's slot."""
        if run.end_attempt(result, on_behalf=on_behalf) and run.agent in self.views:
            view = self.views[run.agent]
            view.active = max(0, view.active - 1)

    # --- signals ---------------------------------------------------------------------------------

    def handle(self, signal: Signal) -> None:
        """Take one signal into account."""
        self.position += 1
        if signal.source in OWN_SOURCES:
            return  # the router's own (its inbox leaves them out; a board fed otherwise may see them)
        data = signal.data
        if isinstance(data, ProviderChunk):
            self._on_chunk(data)
        elif isinstance(data, ProviderResponse | ProviderErrorData):
            self._on_terminal(data)
        elif isinstance(data, ProviderStatus):
            view = self.views.get(data.provider)
            if view is not None:
                view.observe_status(data)
                self.on_agent_seen(view)
                self.notify()
        elif isinstance(data, FeatureReply):
            asked = self.feature_checks.pop(data.request_id, None)
            view = self.views.get(data.provider)
            if view is not None and asked is not None:
                view.observe_features(data, asked[1])
                self.notify()
        elif isinstance(data, SupervisorEvent):
            self._on_supervisor_event(data)

    def _on_chunk(self, chunk: ProviderChunk) -> None:
        run = self.runs.get(chunk.request_id)
        # Chunks carry no attempt number; only the outstanding attempt's agent can be sending them.
        if run is None or not run.outstanding or chunk.provider != run.agent:
            return
        run.chunks += 1
        if run.chunks_out is None:
            return
        try:
            run.chunks_out.put(chunk)
        except trio.WouldBlock:
            run.stop(ErrorKind.CANCELLED, f"the stream consumer fell {self.stream_buffer} chunks behind")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            run.stop(ErrorKind.CANCELLED, "the stream consumer went away")

    def _on_terminal(self, payload: ProviderResponse | ProviderErrorData) -> None:
        view = self.views.get(payload.provider) if payload.provider is not None else None
        if view is not None:
            view.observe_terminal(payload, trio.current_time())
            if isinstance(payload, ProviderErrorData) and payload.retry_after is not None:
                self.notify()
        run = self.runs.get(payload.request_id)
        if (
            run is not None
            and run.outstanding
            and payload.attempt == run.attempt
            and payload.provider == run.agent
        ):
            self.end_attempt(run, payload, on_behalf=False)
        # Anything else is late (its attempt was already answered) and is ignored.

    def _on_supervisor_event(self, event: SupervisorEvent) -> None:
        if not event.child.startswith(AGENT_CHILD_PREFIX):
            return
        view = self.views.get(event.child[len(AGENT_CHILD_PREFIX) :])
        if view is None:
            return
        if event.event in _BACK_EVENTS:
            view.up = True
            self.on_agent_seen(view)
        elif event.event in _GONE_EVENTS:
            view.up = False
            stopped = event.event in ("shutdown", "killed") and self.closing
            kind = ErrorKind.SHUTDOWN if stopped else ErrorKind.AGENT_CRASHED
            reason = f": {event.reason}" if event.reason else ""
            message = f"provider agent {view.name} {event.event}{reason}"
            position = self.position
            for run in self.runs.values():
                # Only attempts on the bus before the event can have been lost with the agent. One
                # published after it (the router had not seen the event yet) went to the next
                # incarnation, or to nobody while the agent was down; its deadline covers that.
                if run.outstanding and run.dispatch_mark < position and run.agent == view.name:
                    self.end_attempt(run, run.attempt_failure(kind, message), on_behalf=True)
        self.notify()

    # --- choosing --------------------------------------------------------------------------------

    def pick(self, run: Run, strategy: RoutingStrategy, now: float) -> str | Wait | NoneFits:
        """The agent for ``run``'s next attempt: the strategy's best among the eligible ones, untried
        ones first; else how long to wait; else why nobody fits."""
        pinned = run.request.provider
        views = [self.views[pinned]] if pinned is not None else list(self.views.values())
        eligible: list[AgentView] = []
        waits: list[tuple[float, ErrorKind]] = []
        reasons: list[str] = []
        for view in views:
            verdict = view.eligibility(run.needs, now)
            if verdict.ok:
                eligible.append(view)
            else:
                reasons.append(verdict.reason)
                if verdict.retry_at is not None:
                    waits.append((verdict.retry_at, verdict.kind))
        if eligible:
            shape = RequestShape(run.needs.input_tokens, run.needs.max_tokens)
            ranked = strategy.rank([v.candidate() for v in eligible], shape)
            fresh = [c for c in ranked if c.name not in run.tried]
            return (fresh or ranked)[0].name
        if not waits:
            return NoneFits(tuple(reasons))
        until, kind = min(waits, key=lambda w: w[0])
        return Wait(until, kind, tuple(reasons))

    def wait_bound(self, wait: Wait, deadline: float, now: float) -> float | None:
        """When to look again for a waiting run, or None if waiting cannot help before ``deadline``."""
        if now >= deadline or (wait.until > deadline and wait.until != math.inf):
            return None
        return min(wait.until, deadline)
