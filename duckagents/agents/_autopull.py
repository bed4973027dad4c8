"""The local agent's provider with automatic model pulls (``auto_pull``): :class:`AutoPulling`.

A request failing with ``not_found`` for its model waits for that model's pull (shared with every other
request that needs it, see :mod:`._pulls`) and is sent once more; a stream is retried only when nothing
had streamed yet. Everything else is the wrapped provider's. What "waits for the pull" means is the
agent's: it hands in that step as a function (:data:`Recovery`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, cast

from ..errors import ProviderError
from ..messages import Features, Message
from ..providers import Completion, HealthProbe, ModelInfo, Provider, StreamEvent, TokenCount
from ..signals import ProviderRequest

__all__ = ["AutoPulling", "Recovery", "auto_pulling_factory"]

#: ``recover(request, error, model)``: after ``error`` failed ``request`` for ``model``, return when a
#: retry is worth it (the missing model was pulled), else raise (``error`` itself when no pull applies).
Recovery = Callable[[ProviderRequest, ProviderError, str], Awaitable[None]]


def auto_pulling_factory(make: Callable[[], Provider], recover: Recovery) -> Callable[[], Provider]:
    """``make`` with each provider it builds wrapped (it runs again after every restart)."""
    return lambda: AutoPulling(make(), recover)


class AutoPulling:
    """The agent's provider with automatic pulls: a request failing with ``not_found`` for its model
    waits for the model's pull (``recover``, the local agent's ``pull_for``) and is sent once more.
    Everything else is the wrapped provider's."""

    def __init__(self, inner: Provider, recover: Recovery) -> None:
        self.inner = inner
        self._recover = recover
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
            await self._recover(request, exc, request.model or self.default_model)
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
            await self._recover(request, exc, request.model or self.default_model)
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
