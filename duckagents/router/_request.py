"""A routed request's state inside the router (:class:`Run`), and how a caller's request is built.

A run lives from intake until its final result; it has at most one attempt outstanding at a time. The
router's signal loop fills in the attempt's terminal (:meth:`Run.end_attempt`); the run's driver (the
caller's own task for ``complete()``, a task in the router's nursery otherwise) decides what to do next.
Kept apart from :mod:`.router` so the router module reads as the routing logic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..errors import ErrorKind, ProviderError
from ..messages import Message, RequestOptions, ToolSpec
from ..signals import ProviderErrorData, ProviderRequest, ProviderResponse, new_id
from ._agent_view import Needs

if TYPE_CHECKING:
    from ._stream import ChunkQueue

__all__ = ["Final", "Run", "build_request"]

Final = ProviderResponse | ProviderErrorData


@attrs.define(eq=False)
class Run:
    """One routed request (the caller's), from intake to final result."""

    request: ProviderRequest
    needs: Needs
    deadline: float
    #: Where chunks go for a ``stream()`` caller (bounded); None for complete() and submit().
    chunks_out: ChunkQueue | None = None
    #: Cancelled to stop the run. Shielded when a router task drives the run (the router stops runs one
    #: by one, in order); not when the caller's task does, so cancelling the caller reaches it.
    scope: trio.CancelScope = attrs.field(factory=lambda: trio.CancelScope(shield=True))
    #: Driven by the caller's task (``complete()``), not by a task of the router.
    inline: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    tried: list[str] = attrs.field(factory=list)
    #: The current attempt: its number, agent, whether it awaits a terminal, and the terminal.
    attempt: int = 0
    agent: str | None = None
    outstanding: bool = False
    #: Position in the router's inbox when the attempt went on the bus (see ``RouterBoard.position``):
    #: a crash reported at a later position may have hit the attempt.
    dispatch_mark: float = math.inf
    attempt_done: trio.Event = attrs.field(factory=trio.Event)
    result: Final | None = None
    #: ``result`` was made up by the router (agent crashed / hung) and must still be published.
    on_behalf_pending: bool = False
    #: Chunks delivered for this request; > 0 forbids retrying.
    chunks: int = 0
    #: The intake is on the bus: from then on a stop cancels :attr:`scope` (before, the driver does it
    #: once the intake is out, so a final result never answers a request nobody saw).
    intake_sent: bool = False
    #: Why the run was stopped from outside (cancel, shutdown, slow consumer), if it was.
    stop_kind: ErrorKind | None = None
    stop_message: str = ""
    final: Final | None = None

    @property
    def request_id(self) -> str:
        """The caller's request id (shared by every attempt)."""
        return self.request.request_id

    @property
    def intake(self) -> ProviderRequest:
        """The request as published at intake: unaddressed, so no agent executes it."""
        request = self.request
        if request.provider is None:
            return request
        return attrs.evolve(request, provider=None)

    def attempt_request(self, agent: str, number: int, deadline: float) -> ProviderRequest:
        """The ``provider_request`` of attempt ``number`` on ``agent``."""
        r = self.request
        # Built field by field: this is on every request's path, and attrs.evolve introspects each time.
        return ProviderRequest(
            r.request_id, r.messages, r.model, r.options, deadline, agent, number, r.required_features
        )

    def begin_attempt(self, agent: str, number: int) -> None:
        """A new attempt goes to ``agent``."""
        self.attempt = number
        self.agent = agent
        self.outstanding = True
        self.dispatch_mark = math.inf
        self.result = None
        self.on_behalf_pending = False
        if self.attempt_done.is_set():
            self.attempt_done = trio.Event()
        self.tried.append(agent)

    def end_attempt(self, result: Final, *, on_behalf: bool) -> bool:
        """Record the terminal of the outstanding attempt; False if it was already ended."""
        if not self.outstanding:
            return False
        self.outstanding = False
        self.result = result
        self.on_behalf_pending = on_behalf
        self.attempt_done.set()
        return True

    def stop(self, kind: ErrorKind, message: str) -> bool:
        """Stop the run from outside; False if it already ended or was stopped."""
        if self.final is not None or self.stop_kind is not None:
            return False
        self.stop_kind = kind
        self.stop_message = message
        if self.intake_sent:
            self.scope.cancel()
        return True

    def may_retry(self, failure: ProviderErrorData, now: float) -> bool:
        """Is another attempt allowed after ``failure``? Never once chunks were delivered (a stream is
        not idempotent) or past the deadline. (The router also stops retrying while closing.)"""
        if self.chunks > 0 or failure.partial or now >= self.deadline:
            return False
        # An agent stopped while the tree keeps running is like a crash: another agent can serve.
        return failure.retryable or failure.kind is ErrorKind.SHUTDOWN

    def attempt_failure(self, kind: ErrorKind, message: str) -> ProviderErrorData:
        """The terminal of the current attempt, made up by the router on the agent's behalf."""
        return ProviderErrorData(
            request_id=self.request_id,
            kind=kind,
            message=message,
            retryable=kind in (ErrorKind.AGENT_CRASHED, ErrorKind.TIMEOUT),
            provider=self.agent,
            model=self.request.model,
            attempt=self.attempt,
            partial=self.chunks > 0,
        )

    def router_failure(self, kind: ErrorKind, message: str) -> ProviderErrorData:
        """A final failure decided by the router itself (no provider, shutdown, cancelled...)."""
        return ProviderErrorData(
            request_id=self.request_id,
            kind=kind,
            message=message,
            retryable=ProviderError(kind, message).retryable,
            provider=self.agent,
            model=self.request.model,
            attempt=self.attempt,
            partial=self.chunks > 0,
        )

    def stopped_final(self) -> Final:
        """The final result of a run stopped from outside (or whose task failed)."""
        if self.result is not None and not self.outstanding and self.stop_kind is not ErrorKind.CANCELLED:
            return self.result  # its attempt had already ended: that is the answer
        kind = self.stop_kind or ErrorKind.AGENT_CRASHED
        return self.router_failure(kind, self.stop_message or "the router failed while routing the request")


def build_request(
    prompt: str | Sequence[Message],
    *,
    model: str | None,
    provider: str | None,
    required_features: Sequence[str],
    stream: bool,
    options: dict[str, Any],
    timeout: float | None = None,
) -> ProviderRequest:
    """A caller's request from ``complete()`` / ``stream()`` arguments.

    ``options`` are :class:`RequestOptions` fields (``max_tokens``, ``temperature``, ``tools``...);
    an unknown one raises ``ProviderError(invalid_request)``. ``timeout`` (seconds from now) becomes the
    deadline; None leaves it to the router's ``request_timeout``.
    """
    messages = (Message.user(prompt),) if isinstance(prompt, str) else tuple(prompt)
    if not messages:
        raise ProviderError(ErrorKind.INVALID_REQUEST, "a request needs at least one message")
    opts = dict(options)
    request_id = opts.pop("request_id", None) or new_id()
    for key in ("stop", "tools"):
        if key in opts and opts[key] is not None:
            opts[key] = tuple(opts[key])
    if "tools" in opts:
        opts["tools"] = tuple(t if isinstance(t, ToolSpec) else ToolSpec(**t) for t in opts["tools"])
    try:
        request_options = RequestOptions(stream=stream, **opts)
    except TypeError as exc:
        raise ProviderError(ErrorKind.INVALID_REQUEST, f"bad request option: {exc}") from None
    return ProviderRequest(
        request_id=request_id,
        messages=messages,
        model=model,
        options=request_options,
        deadline=None if timeout is None else trio.current_time() + timeout,
        provider=provider,
        required_features=tuple(required_features),
    )
