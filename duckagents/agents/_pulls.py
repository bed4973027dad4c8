"""Model pulls of the local (Ollama) agent: :class:`ModelPulls`.

One pull per model at a time (by canonical name, so ``mistral`` and ``mistral:latest`` are one pull),
shared by everyone who needs that model, at most :data:`MAX_CONCURRENT_PULLS` models at once. Ollama's
progress becomes ``progress`` signals (:class:`~duckagents.signals.ProgressEvent`) on the bus. While the
agent runs, pulls run in its nursery, so cancelling a caller does not stop a pull others may wait for.

The pulls know the agent only through what they use: its name, a function that downloads a model
(yielding Ollama's progress objects), one that publishes an event, one that redacts a message.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, cast

import attrs
import trio

from ..errors import BusClosed, ErrorKind, ProviderError
from ..providers import ollama_canonical_model_name
from ..signals import ProgressEvent, ProviderRequest

__all__ = ["MAX_CONCURRENT_PULLS", "PULL_WAIT_MARGIN", "ModelPulls", "PullState", "model_missing"]

#: Distinct models pulled at once, at most; a pull beyond fails as ``overloaded``.
MAX_CONCURRENT_PULLS = 4
#: A request waiting for an automatic pull gives up this long before its deadline, so its failure is a
#: quick ``not_found`` ("still pulling") rather than a timeout counted against the upstream's health.
PULL_WAIT_MARGIN = 1.0


@attrs.define(eq=False)
class PullState:
    """One model pull in progress (shared by everyone waiting for that model)."""

    model: str
    done: trio.Event = attrs.field(factory=trio.Event)
    status: str = "queued"
    completed: int | None = None
    total: int | None = None
    #: Set when the pull ended without success.
    error: ProviderError | None = None
    #: No task runs it yet (the agent is not running): the first waiter runs it.
    unowned: bool = False

    def describe(self) -> str:
        """``status`` with a percentage when the upstream gave sizes."""
        if self.total and self.completed is not None:
            return f"{self.status} {100 * self.completed // self.total}%"
        return self.status


def model_missing(error: ProviderError) -> bool:
    """Is ``error`` the upstream saying the model is not there (so a pull may cure it)?"""
    # A 404 also answers a wrong base URL; only a "model ... not found" is worth a pull.
    message = error.message.lower()
    return error.kind is ErrorKind.NOT_FOUND and not error.partial and "model" in message


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class ModelPulls:
    """The pulls of one local agent (see the module docstring).

    ``download(model)`` yields Ollama's progress objects up to ``{"status": "success"}``; ``publish``
    puts a ``progress`` event on the bus; ``redact`` cleans an upstream message of secrets.
    ``busy_retry_after`` is the ``retry_after`` of a pull refused because too many are under way.
    """

    def __init__(
        self,
        provider: str,
        *,
        download: Callable[[str], AsyncIterator[dict[str, Any]]],
        publish: Callable[[ProgressEvent], Awaitable[None]],
        redact: Callable[[str], str],
        busy_retry_after: float,
    ) -> None:
        #: The agent's name, for progress events and errors.
        self.provider = provider
        self._download = download
        self._publish = publish
        self._redact = redact
        self.busy_retry_after = busy_retry_after
        #: Pulls in progress by canonical model name.
        self.in_progress: dict[str, PullState] = {}
        #: Where pulls run: the agent's background nursery while the agent runs, else None.
        self.nursery: trio.Nursery | None = None

    def describe(self) -> str:
        """The pulls in progress, for the health report (empty when none)."""
        return ",".join(f"{s.model} ({s.describe()})" for s in self.in_progress.values())

    async def pull(self, model: str) -> None:
        """Download ``model``; returns once it succeeded, raises its ``ProviderError`` otherwise."""
        state = self.start(model)
        await self._wait(state)
        if state.error is not None:
            raise state.error

    def start(self, model: str) -> PullState:
        """The pull of ``model`` in progress, started now (in the agent's nursery) if there is none."""
        key = ollama_canonical_model_name(model)
        state = self.in_progress.get(key)
        if state is not None:
            return state
        if len(self.in_progress) >= MAX_CONCURRENT_PULLS:
            raise ProviderError(
                ErrorKind.OVERLOADED, f"{len(self.in_progress)} model pulls are already in progress",
                provider=self.provider, model=model, retry_after=self.busy_retry_after,
            )
        state = PullState(model)
        self.in_progress[key] = state
        if self.nursery is not None:
            self.nursery.start_soon(self._run, key, state)
        else:
            state.unowned = True
        return state

    async def after_failure(self, request: ProviderRequest, error: ProviderError, model: str) -> None:
        """After ``error`` failed ``request``: return when it is worth retrying because its missing
        model was pulled; otherwise raise (``error`` itself when no pull applies)."""
        if not model_missing(error):
            raise error
        try:
            state = self.start(model)
        except ProviderError as busy:  # too many pulls: still a missing model, not an overloaded upstream
            raise ProviderError(
                ErrorKind.NOT_FOUND, f"model {model} is not available: {busy.message}",
                provider=self.provider, model=model, retryable=True, retry_after=busy.retry_after,
            ) from None
        deadline = math.inf if request.deadline is None else request.deadline - PULL_WAIT_MARGIN
        await self._wait(state, deadline)
        if not state.done.is_set():
            raise ProviderError(
                ErrorKind.NOT_FOUND,
                f"model {model} is not available yet: pulling it ({state.describe()})",
                provider=self.provider, model=model, retryable=True,
            )
        if state.error is not None:
            raise ProviderError(
                ErrorKind.NOT_FOUND,
                f"model {model} was not found and pulling it failed: {state.error.message}",
                provider=self.provider, model=model,
            )

    async def _wait(self, state: PullState, deadline: float = math.inf) -> None:
        if state.unowned:
            state.unowned = False
            await self._run(ollama_canonical_model_name(state.model), state)
            return
        with trio.move_on_at(deadline):
            await state.done.wait()

    async def _run(self, key: str, state: PullState) -> None:
        provider = self.provider
        task = f"pull {key}"  # the canonical name: callers may spell the model either way
        succeeded = False
        try:
            progress = cast(AsyncGenerator[dict[str, Any], None], self._download(state.model))
            async with aclosing(progress) as items:
                async for item in items:
                    status = item.get("status")
                    state.status = status if isinstance(status, str) else "downloading"
                    state.completed = _opt_int(item.get("completed"))
                    state.total = _opt_int(item.get("total"))
                    # Ollama's stream ends with {"status": "success"}: that is the pull's last event.
                    outcome = "success" if state.status == "success" else None
                    await self._progress(
                        ProgressEvent(provider, task, state.status, state.completed, state.total, outcome)
                    )
            succeeded = True
        except ProviderError as exc:
            state.error = exc
            await self._progress(
                ProgressEvent(provider, task, f"error: {self._redact(exc.message)}", outcome="error")
            )
        finally:
            if not succeeded and state.error is None:  # cancelled: the agent is stopping
                state.error = ProviderError(
                    ErrorKind.SHUTDOWN, f"the pull of {state.model} was interrupted", provider=provider,
                    model=state.model,
                )
            self.in_progress.pop(key, None)
            state.done.set()

    async def _progress(self, event: ProgressEvent) -> None:
        try:
            await self._publish(event)
        except BusClosed:
            pass  # nobody can listen any more; the pull itself goes on
