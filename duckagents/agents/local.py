"""The local (Ollama) agent: loaded-model monitoring, load/unload, model pulls with progress signals.

* Resources: :meth:`LocalAgent.background` polls ``/api/ps`` (the provider's ``running_models()``) every
  ``ps_interval`` seconds and reports a change at once; :meth:`LocalAgent.resources` puts the loaded
  models, their sizes and VRAM use in the health report's ``detail``.
* :meth:`LocalAgent.load` / :meth:`LocalAgent.unload` load a model into memory or evict it (Ollama's
  ``keep_alive``).
* :meth:`LocalAgent.pull` downloads a model, publishing Ollama's progress as ``progress`` signals
  (:class:`~duckagents.signals.ProgressEvent`) on the bus. With ``auto_pull`` on, a request that fails
  with ``not_found`` for its model starts that pull and is retried once when it completes (pulls run in
  the agent's nursery, shared by every request that needs the model); a request whose deadline comes
  first fails with a retryable ``not_found`` while the pull goes on.
* One local GPU serves few generations at once: ``max_concurrency`` defaults to
  :data:`LOCAL_MAX_CONCURRENCY` when the config leaves it at the general default.

Config options (``[providers.options]``): ``auto_pull`` (bool, default false), ``ps_interval`` (seconds,
default 15). The provider's own options (``keep_alive``, ``num_ctx``) go to the provider.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any, Protocol, cast, runtime_checkable

import attrs
import trio

from ..bus import SignalBus
from ..config import ProviderConfig
from ..errors import BusClosed, ConfigError, ErrorKind, ProviderError
from ..messages import Features, Message
from ..providers.base import Completion, HealthProbe, ModelInfo, Provider, StreamEvent, TokenCount
from ..providers.ollama import canonical_model_name
from ..signals import ProgressEvent, ProviderRequest
from .provider_agent import ProviderAgent

__all__ = ["LOCAL_MAX_CONCURRENCY", "LocalAgent", "PullState"]

#: ``max_concurrency`` of a local agent whose config leaves the general default (one GPU: Ollama runs
#: one or a few generations in parallel and queues the rest, so more in flight only adds latency).
LOCAL_MAX_CONCURRENCY = 2
DEFAULT_PS_INTERVAL = 15.0
#: Distinct models pulled at once, at most; a pull beyond fails as ``overloaded``.
MAX_CONCURRENT_PULLS = 4
#: A request waiting for an automatic pull gives up this long before its deadline, so its failure is a
#: quick ``not_found`` ("still pulling") rather than a timeout counted against the upstream's health.
PULL_WAIT_MARGIN = 1.0
_GENERAL_DEFAULT_CONCURRENCY = attrs.fields(ProviderConfig).max_concurrency.default


@runtime_checkable
class LocalModels(Protocol):
    """The model management a local provider offers beyond :class:`Provider` (Ollama's does)."""

    async def running_models(self) -> list[ModelInfo]:
        """Models loaded in memory."""
        ...

    def pull(self, model: str) -> AsyncIterator[dict[str, Any]]:
        """Download ``model``, yielding progress objects up to ``{"status": "success"}``."""
        ...

    async def load(self, model: str | None = None, keep_alive: str | float | None = None) -> None:
        """Load ``model`` into memory."""
        ...

    async def unload(self, model: str | None = None) -> None:
        """Evict ``model`` from memory."""
        ...


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


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _residency(models: list[ModelInfo] | None) -> list[tuple[str, int | None, int | None]] | None:
    # What a change is reported for: expiry times move with every request and are not news.
    return None if models is None else [(m.name, m.size, m.size_vram) for m in models]


def _model_missing(error: ProviderError) -> bool:
    # A 404 also answers a wrong base URL; only a "model ... not found" is worth a pull.
    message = error.message.lower()
    return error.kind is ErrorKind.NOT_FOUND and not error.partial and "model" in message


class LocalAgent(ProviderAgent):
    """The provider agent for a local Ollama server; see the module docstring."""

    def __init__(
        self,
        config: ProviderConfig,
        bus: SignalBus,
        provider: Provider | None = None,
        *,
        provider_factory: Callable[[], Provider] | None = None,
        **agent_options: Any,
    ) -> None:
        options = config.options
        auto_pull = options.get("auto_pull", False)
        interval = options.get("ps_interval", DEFAULT_PS_INTERVAL)
        if not isinstance(auto_pull, bool):
            raise ConfigError(f"provider {config.name!r}: options.auto_pull must be true or false")
        if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
            raise ConfigError(f"provider {config.name!r}: options.ps_interval must be a positive number")
        if config.max_concurrency == _GENERAL_DEFAULT_CONCURRENCY:
            config = attrs.evolve(config, max_concurrency=LOCAL_MAX_CONCURRENCY)
        #: Pull a missing model when a request fails with ``not_found`` for it, then retry once.
        self.auto_pull = auto_pull
        #: Seconds between two ``/api/ps`` polls.
        self.ps_interval = float(interval)
        #: The last ``/api/ps`` answer and when it came (Trio clock); None before the first poll.
        self.loaded: list[ModelInfo] | None = None
        self.loaded_at: float | None = None
        self._ps_error: str | None = None
        self._pulls: dict[str, PullState] = {}
        self._tasks: trio.Nursery | None = None
        if auto_pull:
            # Wrapped at construction and at every re-creation after a restart (the factory runs again).
            if provider is not None:
                provider = _AutoPulling(provider, self)
            if provider_factory is not None:
                provider_factory = _auto_pulling_factory(provider_factory, self)
        super().__init__(config, bus, provider, provider_factory=provider_factory, **agent_options)

    @property
    def local(self) -> LocalModels:
        """The provider's model management (the provider itself, unwrapped)."""
        provider: object = self.provider
        if isinstance(provider, _AutoPulling):
            provider = provider.inner
        if not isinstance(provider, LocalModels):
            raise ProviderError(
                ErrorKind.UNSUPPORTED, f"provider {type(provider).__name__} cannot manage local models",
                provider=self.name,
            )
        return provider

    # --- hooks -------------------------------------------------------------------------------------

    async def resources(self) -> dict[str, str]:
        """Loaded models, their total size and VRAM use, and pulls in progress (from ``/api/ps``)."""
        now = trio.current_time()
        if self.loaded_at is None or now - self.loaded_at >= self.ps_interval:
            await self.refresh_resources(report=False)
        detail: dict[str, str] = {}
        if self.loaded is not None:
            detail["loaded_models"] = ",".join(m.name for m in self.loaded)
            detail["size_bytes"] = str(sum(m.size or 0 for m in self.loaded))
            detail["vram_bytes"] = str(sum(m.size_vram or 0 for m in self.loaded))
            for m in self.loaded:
                expiry = f" expires_at={m.expires_at}" if m.expires_at else ""
                detail[f"model:{m.name}"] = f"size={m.size or 0} size_vram={m.size_vram or 0}{expiry}"
        if self._ps_error is not None:
            detail["ps_error"] = self._ps_error
        if self._pulls:
            detail["pulling"] = ",".join(f"{s.model} ({s.describe()})" for s in self._pulls.values())
        return detail

    async def background(self) -> None:
        """Poll ``/api/ps``; also the nursery automatic and requested pulls run in."""
        async with trio.open_nursery() as nursery:
            self._tasks = nursery
            try:
                while True:
                    await self.refresh_resources()
                    await trio.sleep(self.ps_interval)
            finally:
                self._tasks = None

    # --- resources, load, unload -------------------------------------------------------------------

    async def refresh_resources(self, *, report: bool = True) -> list[ModelInfo] | None:
        """Ask ``/api/ps`` now; with ``report``, a change is published as a status at once."""
        before = (_residency(self.loaded), self._ps_error)
        models: list[ModelInfo] | None = None
        try:
            with trio.move_on_after(self.probe_timeout):
                models = await self.local.running_models()
            if models is None:
                self._ps_error = f"/api/ps gave no answer within {self.probe_timeout:g} s"
        except ProviderError as exc:
            self._ps_error = self.redact(exc.message)
        if models is not None:
            self.loaded, self.loaded_at, self._ps_error = models, trio.current_time(), None
        if report and (_residency(self.loaded), self._ps_error) != before:
            self.poke_status()
        return self.loaded

    async def load(self, model: str | None = None, keep_alive: str | float | None = None) -> None:
        """Load ``model`` (default: the agent's) into memory for ``keep_alive`` (the provider's default
        when None); with ``auto_pull``, a missing model is pulled first."""
        name = model or self.model
        try:
            await self.local.load(name, keep_alive)
        except ProviderError as exc:
            if not (self.auto_pull and _model_missing(exc)):
                raise
            await self.pull(name)
            await self.local.load(name, keep_alive)
        await self.refresh_resources()

    async def unload(self, model: str | None = None) -> None:
        """Evict ``model`` (default: the agent's) from memory now."""
        await self.local.unload(model or self.model)
        await self.refresh_resources()

    # --- pulls -------------------------------------------------------------------------------------

    async def pull(self, model: str) -> None:
        """Download ``model``, publishing ``progress`` signals; returns once it succeeded, raises its
        ``ProviderError`` otherwise. A pull of the same model already under way is joined, not repeated.
        While the agent runs, the pull belongs to the agent: cancelling the caller does not stop it."""
        state = self.start_pull(model)
        await self._wait(state)
        if state.error is not None:
            raise state.error

    def start_pull(self, model: str) -> PullState:
        """The pull of ``model`` in progress, started now (in the agent's nursery) if there is none."""
        key = canonical_model_name(model)
        state = self._pulls.get(key)
        if state is not None:
            return state
        if len(self._pulls) >= MAX_CONCURRENT_PULLS:
            raise ProviderError(
                ErrorKind.OVERLOADED, f"{len(self._pulls)} model pulls are already in progress",
                provider=self.name, model=model, retry_after=self.ps_interval,
            )
        state = PullState(model)
        self._pulls[key] = state
        if self._tasks is not None:
            self._tasks.start_soon(self._run_pull, key, state)
        else:
            state.unowned = True
        return state

    async def _wait(self, state: PullState, deadline: float = math.inf) -> None:
        if state.unowned:
            state.unowned = False
            await self._run_pull(canonical_model_name(state.model), state)
            return
        with trio.move_on_at(deadline):
            await state.done.wait()

    async def _run_pull(self, key: str, state: PullState) -> None:
        task = f"pull {key}"  # the canonical name: callers may spell the model either way
        succeeded = False
        try:
            progress = cast(AsyncGenerator[dict[str, Any], None], self.local.pull(state.model))
            async with aclosing(progress) as items:
                async for item in items:
                    status = item.get("status")
                    state.status = status if isinstance(status, str) else "downloading"
                    state.completed = _opt_int(item.get("completed"))
                    state.total = _opt_int(item.get("total"))
                    await self._progress(
                        ProgressEvent(self.name, task, state.status, state.completed, state.total)
                    )
            succeeded = True
        except ProviderError as exc:
            state.error = exc
            await self._progress(ProgressEvent(self.name, task, f"error: {self.redact(exc.message)}"))
        finally:
            if not succeeded and state.error is None:  # cancelled: the agent is stopping
                state.error = ProviderError(
                    ErrorKind.SHUTDOWN, f"the pull of {state.model} was interrupted", provider=self.name,
                    model=state.model,
                )
            self._pulls.pop(key, None)
            state.done.set()

    async def _progress(self, event: ProgressEvent) -> None:
        try:
            await self.publish(event)
        except BusClosed:
            pass  # nobody can listen any more; the pull itself goes on

    async def pull_for(self, request: ProviderRequest, error: ProviderError, model: str) -> None:
        """After ``error`` failed ``request``: return when it is worth retrying because its missing
        model was pulled; otherwise raise (``error`` itself when no pull applies)."""
        if not (self.auto_pull and _model_missing(error)):
            raise error
        try:
            state = self.start_pull(model)
        except ProviderError as busy:  # too many pulls: still a missing model, not an overloaded upstream
            raise ProviderError(
                ErrorKind.NOT_FOUND, f"model {model} is not available: {busy.message}",
                provider=self.name, model=model, retryable=True, retry_after=busy.retry_after,
            ) from None
        deadline = math.inf if request.deadline is None else request.deadline - PULL_WAIT_MARGIN
        await self._wait(state, deadline)
        if not state.done.is_set():
            raise ProviderError(
                ErrorKind.NOT_FOUND,
                f"model {model} is not available yet: pulling it ({state.describe()})",
                provider=self.name, model=model, retryable=True,
            )
        if state.error is not None:
            raise ProviderError(
                ErrorKind.NOT_FOUND,
                f"model {model} was not found and pulling it failed: {state.error.message}",
                provider=self.name, model=model,
            )


def _auto_pulling_factory(make: Callable[[], Provider], agent: LocalAgent) -> Callable[[], Provider]:
    return lambda: _AutoPulling(make(), agent)


class _AutoPulling:
    """The agent's provider with automatic pulls: a request failing with ``not_found`` for its model
    waits for the model's pull (see :meth:`LocalAgent.pull_for`) and is sent once more. Everything else
    is the wrapped provider's."""

    def __init__(self, inner: Provider, agent: LocalAgent) -> None:
        self.inner = inner
        self.agent = agent
        self.name = inner.name
        self.default_model = inner.default_model

    @property
    def secrets(self) -> tuple[Any, ...]:
        """The wrapped provider's secrets."""
        return self.inner.secrets

    async def complete(self, request: ProviderRequest) -> Completion:
        """Complete, pulling the model and retrying once when it was missing."""
        try:
            return await self.inner.complete(request)
        except ProviderError as exc:
            await self.agent.pull_for(request, exc, request.model or self.default_model)
        return await self.inner.complete(request)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream, pulling the model and retrying once when it was missing (before anything streamed)."""
        started = False
        try:
            async with aclosing(self._events(request)) as events:
                async for event in events:
                    started = True
                    yield event
            return
        except ProviderError as exc:
            if started:
                raise
            await self.agent.pull_for(request, exc, request.model or self.default_model)
        async with aclosing(self._events(request)) as events:
            async for event in events:
                yield event

    def _events(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        return cast(AsyncGenerator[StreamEvent, None], self.inner.stream(request))

    def features(self, model: str | None = None) -> Features:
        """The wrapped provider's features."""
        return self.inner.features(model)

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """The wrapped provider's count."""
        return await self.inner.estimate_tokens(messages, model)

    async def health(self) -> HealthProbe:
        """The wrapped provider's probe."""
        return await self.inner.health()

    async def list_models(self) -> list[ModelInfo]:
        """The wrapped provider's models."""
        return await self.inner.list_models()

    async def aclose(self) -> None:
        """Close the wrapped provider."""
        await self.inner.aclose()
