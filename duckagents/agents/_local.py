"""The local (Ollama) agent: loaded-model monitoring, load/unload, model pulls with progress signals.

* Resources: :meth:`LocalAgent.background` polls ``/api/ps`` (the provider's ``running_models()``) every
  ``ps_interval`` seconds and reports a change at once; :meth:`LocalAgent.resources` puts the loaded
  models, their sizes and VRAM use in the health report's ``detail``.
* :meth:`LocalAgent.load` / :meth:`LocalAgent.unload` load a model into memory or evict it (Ollama's
  ``keep_alive``).
* :meth:`LocalAgent.pull` downloads a model, publishing Ollama's progress as ``progress`` signals
  (:class:`~duckagents.signals.ProgressEvent`) on the bus (:class:`._pulls.ModelPulls`). With
  ``auto_pull`` on, a request that fails with ``not_found`` for its model starts that pull and is retried
  once when it completes (the provider is wrapped in :class:`._autopull.AutoPulling`; pulls run in the
  agent's nursery, shared by every request that needs the model); a request whose deadline comes first
  fails with a retryable ``not_found`` while the pull goes on.
* Operators reach these through ``provider_control`` signals (``models_list``, ``model_load``,
  ``model_unload``, ``model_pull``): the hooks :meth:`LocalAgent.model_entries`,
  :meth:`~LocalAgent.load_model`, :meth:`~LocalAgent.unload_model` and
  :meth:`~LocalAgent.start_model_pull`. A pull started so runs in the agent, bound to no request's deadline
  and to no client: whoever asked may leave, it goes on.
* One local GPU serves few generations at once: ``max_concurrency`` defaults to
  :data:`LOCAL_MAX_CONCURRENCY` when the config leaves it at the general default.

Config options (``[providers.options]``): ``auto_pull`` (bool, default false), ``ps_interval`` (seconds,
default 15). The provider's own options (``keep_alive``, ``num_ctx``) go to the provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, runtime_checkable

import attrs
import trio

from ..bus import SignalBus
from ..config import ProviderConfig
from ..errors import ConfigError, ErrorKind, ProviderError
from ..providers import ModelInfo, Provider, ollama_canonical_model_name
from ..signals import ModelEntry, ProviderRequest
from ._agent import ProviderAgent
from ._autopull import AutoPulling, auto_pulling_factory
from ._pulls import MAX_CONCURRENT_PULLS, PULL_WAIT_MARGIN, ModelPulls, PullState, model_missing

__all__ = [
    "LOCAL_MAX_CONCURRENCY",
    "MAX_CONCURRENT_PULLS",
    "PULL_WAIT_MARGIN",
    "LocalAgent",
    "LocalModels",
    "PullState",
]

#: ``max_concurrency`` of a local agent whose config leaves the general default (one GPU: Ollama runs
#: one or a few generations in parallel and queues the rest, so more in flight only adds latency).
LOCAL_MAX_CONCURRENCY = 2
DEFAULT_PS_INTERVAL = 15.0
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


def _residency(models: list[ModelInfo] | None) -> list[tuple[str, int | None, int | None]] | None:
    # What a change is reported for: expiry times move with every request and are not news.
    return None if models is None else [(m.name, m.size, m.size_vram) for m in models]


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
        #: Model pulls in progress (see :mod:`._pulls`).
        self.pulls = ModelPulls(
            config.name,
            download=self._download,
            publish=self.publish,
            redact=self.redact,
            busy_retry_after=self.ps_interval,
        )
        if auto_pull:
            # Wrapped at construction and at every re-creation after a restart (the factory runs again).
            if provider is not None:
                provider = AutoPulling(provider, self.pull_for)
            if provider_factory is not None:
                provider_factory = auto_pulling_factory(provider_factory, self.pull_for)
        super().__init__(config, bus, provider, provider_factory=provider_factory, **agent_options)

    @property
    def local(self) -> LocalModels:
        """The provider's model management (the provider itself, unwrapped)."""
        provider: object = self.provider
        if isinstance(provider, AutoPulling):
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
        pulling = self.pulls.describe()
        if pulling:
            detail["pulling"] = pulling
        return detail

    async def background(self) -> None:
        """Poll ``/api/ps``; also the nursery automatic and requested pulls run in."""
        async with trio.open_nursery() as nursery:
            self.pulls.nursery = nursery
            try:
                while True:
                    await self.refresh_resources()
                    await trio.sleep(self.ps_interval)
            finally:
                self.pulls.nursery = None

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
            if not (self.auto_pull and model_missing(exc)):
                raise
            await self.pull(name)
            await self.local.load(name, keep_alive)
        await self.refresh_resources()

    async def unload(self, model: str | None = None) -> None:
        """Evict ``model`` (default: the agent's) from memory now."""
        await self.local.unload(model or self.model)
        await self.refresh_resources()

    # --- operator controls (hooks of ProviderAgent) --------------------------------------------------

    async def model_entries(self) -> tuple[ModelEntry, ...]:
        """The models on the server (``/api/tags``), marked loaded when ``/api/ps`` lists them."""
        listed: list[ModelInfo] | None = None
        with trio.move_on_after(self.probe_timeout):
            listed = await self.provider.list_models()
        if listed is None:
            message = f"/api/tags gave no answer within {self.probe_timeout:g} s"
            raise ProviderError(ErrorKind.TIMEOUT, message, provider=self.name)
        loaded = {ollama_canonical_model_name(m.name): m for m in await self.refresh_resources() or []}
        entries = []
        for info in listed:
            running = loaded.get(ollama_canonical_model_name(info.name))
            entries.append(
                ModelEntry(
                    info.name,
                    loaded=running is not None,
                    size=info.size,
                    size_vram=running.size_vram if running is not None else None,
                    context_window=info.context_window or (running.context_window if running else None),
                )
            )
        return tuple(entries)

    async def load_model(self, model: str | None) -> str:
        """:meth:`load` ``model``."""
        name = model or self.model
        await self.load(name)
        return f"loaded {name}"

    async def unload_model(self, model: str | None) -> str:
        """:meth:`unload` ``model``."""
        name = model or self.model
        await self.unload(name)
        return f"unloaded {name}"

    def start_model_pull(self, model: str) -> dict[str, str]:
        """:meth:`start_pull` ``model`` (or join the pull under way); its progress signals carry ``task``."""
        state = self.start_pull(model)
        return {"task": f"pull {ollama_canonical_model_name(model)}", "status": state.describe()}

    # --- pulls (see :mod:`._pulls`) ----------------------------------------------------------------

    async def pull(self, model: str) -> None:
        """Download ``model``, publishing ``progress`` signals; returns once it succeeded, raises its
        ``ProviderError`` otherwise. A pull of the same model already under way is joined, not repeated.
        While the agent runs, the pull belongs to the agent: cancelling the caller does not stop it."""
        await self.pulls.pull(model)

    def start_pull(self, model: str) -> PullState:
        """The pull of ``model`` in progress, started now (in the agent's nursery) if there is none."""
        return self.pulls.start(model)

    async def pull_for(self, request: ProviderRequest, error: ProviderError, model: str) -> None:
        """After ``error`` failed ``request``: return when it is worth retrying because its missing
        model was pulled; otherwise raise (``error`` itself when no pull applies)."""
        if not self.auto_pull:
            raise error
        await self.pulls.after_failure(request, error, model)

    def _download(self, model: str) -> AsyncIterator[dict[str, Any]]:
        return self.local.pull(model)
