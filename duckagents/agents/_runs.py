"""A routed request's state inside the router (:class:`Run`), and the caller's stream object.

A run lives from intake until its final result; it has at most one attempt outstanding at a time. The
router's signal loop fills in the attempt's terminal (:meth:`Run.end_attempt`); the run's own task decides
what to do next. Kept apart from :mod:`.router` so the router module reads as the routing logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import attrs
import trio

from ..errors import ErrorKind, ProviderError
from ..messages import Message, RequestOptions, ToolSpec
from ..signals import ProviderChunk, ProviderFailure, ProviderRequest, ProviderResponse, new_id
from ._views import Needs

if TYPE_CHECKING:
    from .router import RouterAgent

__all__ = ["ResponseStream", "Run", "build_request"]

Final = ProviderResponse | ProviderFailure


@attrs.define(eq=False)
class Run:
    """One routed request (the caller's), from intake to final result."""

    request: ProviderRequest
    needs: Needs
    deadline: float
    #: Where chunks go for a ``stream()`` caller (bounded); None for complete() and submit().
    chunks_out: trio.MemorySendChannel[ProviderChunk] | None = None
    #: Shielded from the router's own cancellation: the router stops runs one by one, in order.
    scope: trio.CancelScope = attrs.field(factory=lambda: trio.CancelScope(shield=True))
    done: trio.Event = attrs.field(factory=trio.Event)
    tried: list[str] = attrs.field(factory=list)
    #: The current attempt: its number, agent, whether it awaits a terminal, and the terminal.
    attempt: int = 0
    agent: str | None = None
    outstanding: bool = False
    #: The router's signal loop has seen the attempt's request go by on the bus.
    dispatched: bool = False
    attempt_done: trio.Event = attrs.field(factory=trio.Event)
    result: Final | None = None
    #: ``result`` was made up by the router (agent crashed / hung) and must still be published.
    on_behalf_pending: bool = False
    #: Chunks delivered for this request; > 0 forbids retrying.
    chunks: int = 0
    #: Why the run was stopped from outside (cancel, shutdown, slow consumer), if it was.
    stop_kind: ErrorKind | None = None
    stop_message: str = ""
    final: Final | None = None

    @property
    def request_id(self) -> str:
        """The caller's request id (shared by every attempt)."""
        return self.request.request_id

    def begin_attempt(self, agent: str, number: int) -> None:
        """A new attempt goes to ``agent``."""
        self.attempt = number
        self.agent = agent
        self.outstanding = True
        self.dispatched = False
        self.result = None
        self.on_behalf_pending = False
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
        self.scope.cancel()
        return True

    def may_retry(self, failure: ProviderFailure, now: float) -> bool:
        """Is another attempt allowed after ``failure``? Never once chunks were delivered (a stream is
        not idempotent) or past the deadline. (The router also stops retrying while closing.)"""
        if self.chunks > 0 or failure.partial or now >= self.deadline:
            return False
        # An agent stopped while the tree keeps running is like a crash: another agent can serve.
        return failure.retryable or failure.kind is ErrorKind.SHUTDOWN

    def attempt_failure(self, kind: ErrorKind, message: str) -> ProviderFailure:
        """The terminal of the current attempt, made up by the router on the agent's behalf."""
        return ProviderFailure(
            request_id=self.request_id,
            kind=kind,
            message=message,
            retryable=kind in (ErrorKind.AGENT_CRASHED, ErrorKind.TIMEOUT),
            provider=self.agent,
            model=self.request.model,
            attempt=self.attempt,
            partial=self.chunks > 0,
        )

    def router_failure(self, kind: ErrorKind, message: str) -> ProviderFailure:
        """A final failure decided by the router itself (no provider, shutdown, cancelled...)."""
        return ProviderFailure(
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
) -> ProviderRequest:
    """A caller's request from ``complete()`` / ``stream()`` arguments.

    ``options`` are :class:`RequestOptions` fields (``max_tokens``, ``temperature``, ``tools``...);
    an unknown one raises ``ProviderError(invalid_request)``.
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
        provider=provider,
        required_features=tuple(required_features),
    )


class ResponseStream:
    """The chunks of one streamed request; async-iterable and an async context manager.

    ::

        async with router.stream("hello") as stream:
            async for chunk in stream:
                print(chunk.delta, end="")
        print(stream.response.usage)

    Iteration yields :class:`ProviderChunk` items and, when the request failed, raises its
    :class:`ProviderError` at the end (``partial=True`` if chunks were delivered). Afterwards
    :attr:`response` holds the final :class:`ProviderResponse`. Leaving the ``async with`` block early
    cancels the request. Iterating without ``async with`` works too (the request starts on the first
    ``__anext__``), but then an early ``break`` leaves the request running until it ends.
    """

    def __init__(self, router: RouterAgent, request: ProviderRequest) -> None:
        self.request = request
        #: The final response, once iteration ended without error.
        self.response: ProviderResponse | None = None
        #: The error iteration raised, if it did.
        self.error: ProviderError | None = None
        self._router = router
        self._run: Run | None = None
        self._chunks: trio.MemoryReceiveChannel[ProviderChunk] | None = None

    @property
    def request_id(self) -> str:
        """The request's id (to cancel it, or to match its signals on the bus)."""
        return self.request.request_id

    def _start(self) -> tuple[Run, trio.MemoryReceiveChannel[ProviderChunk]]:
        if self._run is None or self._chunks is None:
            send, receive = trio.open_memory_channel[ProviderChunk](self._router.stream_buffer)
            self._run = self._router._open_run(self.request, chunks_out=send)
            self._chunks = receive
        return self._run, self._chunks

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ProviderChunk:
        run, chunks = self._start()
        try:
            return await chunks.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            pass
        await run.done.wait()
        final = run.final
        if isinstance(final, ProviderFailure):
            self.error = final.to_error()
            raise self.error
        self.response = final
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the request if it is still running and wait (briefly) for its final result."""
        run = self._run
        if run is None:
            return
        if not run.done.is_set():
            self._router.cancel(run.request_id)
            with trio.CancelScope(shield=True), trio.move_on_after(self._router.publish_timeout):
                await run.done.wait()
        if self._chunks is not None:
            self._chunks.close()
        if self.response is None and isinstance(run.final, ProviderResponse):
            self.response = run.final
