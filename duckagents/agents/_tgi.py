"""The Hugging Face TGI agent: the server's ``/info`` limits drive features, fail-fast and concurrency.

TGI serves one model and says what it accepts in ``GET /info``:

* ``max_input_tokens`` / ``max_total_tokens``: :meth:`TGIAgent.prepare` fails a request fast with
  ``context_length`` when its input (counted by the server's ``/tokenize`` when it must be) exceeds the
  first, or input plus ``max_tokens`` the second; :meth:`TGIAgent.features` reports the window;
* ``max_concurrent_requests``: the agent keeps at most that many requests in flight (or its configured
  ``max_concurrency``, if lower), since TGI refuses the excess with 429 ``overloaded``.

``/info`` is fetched before the agent first reports started (so the router's first feature check sees
the real window), then refreshed every ``health_interval``. Health is the base agent's probe, which for
TGI is ``GET /health`` (200 once the model is warmed up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn, Protocol, runtime_checkable

import attrs
import trio

from ..bus import SignalBus
from ..config import ProviderConfig
from ..errors import ErrorKind, ProviderError
from ..messages import Features, Message
from ..providers import Provider, TGIInfo, heuristic_token_count
from ..signals import ProviderRequest
from ._agent import ProviderAgent

__all__ = ["STARTUP_INFO_TIMEOUT", "TGIAgent"]

#: How long the first start waits for ``/info`` before reporting started with default features.
STARTUP_INFO_TIMEOUT = 5.0
# A chat template adds a few special tokens per message; a token is at least one UTF-8 byte.
_TEMPLATE_TOKENS = 8


@runtime_checkable
class ServerInfo(Protocol):
    """What the agent needs from its provider beyond :class:`Provider`: TGI's ``/info``."""

    async def info(self, *, refresh: bool = False) -> TGIInfo:
        """``GET /info``."""
        ...


def _bytes_bound(messages: Sequence[Message]) -> int | None:
    """An upper bound of the input tokens, or None when images make it unknowable."""
    if any(m.images for m in messages):
        return None
    return sum(len(m.text.encode()) + _TEMPLATE_TOKENS for m in messages) + _TEMPLATE_TOKENS


class TGIAgent(ProviderAgent):
    """The provider agent for a TGI server; see the module docstring."""

    def __init__(
        self,
        config: ProviderConfig,
        bus: SignalBus,
        provider: Provider | None = None,
        **agent_options: Any,
    ) -> None:
        super().__init__(config, bus, provider, **agent_options)
        #: ``max_concurrency`` as configured; :attr:`config` carries the effective one (capped by /info).
        self.configured_concurrency = config.max_concurrency
        #: The last ``/info`` (kept across restarts: it describes the server, not this task).
        self.info: TGIInfo | None = None
        self._info_error: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """As the base agent's, fetching ``/info`` first on the first start (bounded)."""
        # Only on the first start: after a crash the provider is re-created inside the base run, and the
        # background refresh fetches /info again there.
        if self.incarnation == 0 and self.info is None:
            with trio.move_on_after(min(self.probe_timeout, STARTUP_INFO_TIMEOUT)):
                await self.refresh_info()
        await super().run(task_status=task_status)

    async def background(self) -> None:
        """Refresh ``/info`` every ``health_interval`` (a redeployed server may serve another model)."""
        if self.info is not None:  # fetched just before the start
            await trio.sleep(self.health_interval)
        while True:
            before = self.info
            with trio.move_on_after(self.probe_timeout):
                await self.refresh_info()
            if self.info != before:
                self.poke_status()
            await trio.sleep(self.health_interval)

    async def refresh_info(self) -> TGIInfo | None:
        """Fetch ``/info`` now and apply its limits; the last known info (maybe None) when it fails."""
        provider = self.provider
        if not isinstance(provider, ServerInfo):
            return self.info
        try:
            info = await provider.info(refresh=True)
        except ProviderError as exc:
            self._info_error = self.redact(exc.message)
            return self.info
        self.info, self._info_error = info, None
        self._apply_concurrency()
        return info

    def _apply_concurrency(self) -> None:
        """Bound concurrency by ``max_concurrent_requests``. The slots semaphore is only replaced while
        nobody holds or waits for it (else the bound applies at a later call): swapping it under
        holders would let old and new holders together exceed the bound."""
        bound = self.configured_concurrency
        if self.info is not None and self.info.max_concurrent_requests:
            bound = min(bound, self.info.max_concurrent_requests)
        if bound == self.config.max_concurrency:
            return
        slots = self.slots
        if slots.value != self.config.max_concurrency or slots.statistics().tasks_waiting:
            return
        # The base agent makes a new semaphore of config.max_concurrency at each (re)start.
        self.config = attrs.evolve(self.config, max_concurrency=bound)
        self.slots = trio.Semaphore(bound)

    # --- hooks -------------------------------------------------------------------------------------

    def features(self, model: str | None = None) -> Features:
        """From ``/info`` (window = ``max_total_tokens``) once known, else the provider's defaults."""
        if self.info is not None:
            return self.info.features()
        return super().features(model)

    async def prepare(self, request: ProviderRequest) -> ProviderRequest:
        """Fail fast with ``context_length`` when the request exceeds the server's token limits."""
        info = self.info if self.info is not None else await self.refresh_info()
        self._apply_concurrency()  # a bound learnt while requests were in flight
        if info is None:
            return request  # limits unknown: the server will judge
        model = request.model or self.model
        max_new = request.options.max_tokens
        total_budget = info.max_total_tokens - (max_new or 0)
        bound = _bytes_bound(request.messages)
        if bound is not None and bound <= min(info.max_input_tokens, total_budget):
            return request  # surely fits: no need to ask the tokenizer
        try:
            tokens = (await self.provider.estimate_tokens(request.messages, model)).tokens
        except ProviderError:
            tokens = heuristic_token_count(request.messages)
        if tokens > info.max_input_tokens:
            self._too_long(
                f"the input has {tokens} tokens, more than the server's max_input_tokens "
                f"({info.max_input_tokens})", model,
            )
        if max_new is not None and tokens + max_new > info.max_total_tokens:
            self._too_long(
                f"{tokens} input tokens + {max_new} max_tokens exceed the server's max_total_tokens "
                f"({info.max_total_tokens})", model,
            )
        return request

    async def resources(self) -> dict[str, str]:
        """The served model and the limits from ``/info``, and the effective concurrency."""
        detail = {"max_concurrency": str(self.config.max_concurrency)}
        info = self.info
        if info is not None:
            detail.update(
                model_id=info.model_id,
                max_input_tokens=str(info.max_input_tokens),
                max_total_tokens=str(info.max_total_tokens),
            )
            if info.max_concurrent_requests is not None:
                detail["max_concurrent_requests"] = str(info.max_concurrent_requests)
            if info.version is not None:
                detail["tgi_version"] = info.version
        if self._info_error is not None:
            detail["info_error"] = self._info_error
        return detail

    def _too_long(self, message: str, model: str) -> NoReturn:
        raise ProviderError(ErrorKind.CONTEXT_LENGTH, message, provider=self.name, model=model)
