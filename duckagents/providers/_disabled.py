"""A provider that cannot run (e.g. its API key variable is not set): it reports why and serves nothing.

Its agent runs like any other, so the provider shows in ``status`` as down with the reason (the health
probe's ``detail`` carries ``disabled``), while the router never sends it a request and every other
provider serves as usual.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ..errors import ErrorKind, ProviderError, Secret
from ..messages import Features, Message
from ..signals import ProviderRequest
from ._base import Completion, HealthProbe, ModelInfo, StreamEvent, TokenCount, heuristic_token_count

__all__ = ["DisabledProvider"]


class DisabledProvider:
    """Stands in for a provider of kind ``name`` that cannot start, for ``reason``."""

    def __init__(self, name: str, reason: str, default_model: str | None = None) -> None:
        self.name = name
        self.reason = reason
        self.default_model = default_model or ""

    def __repr__(self) -> str:
        return f"DisabledProvider({self.name!r}, {self.reason!r})"

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """None: it holds no secret."""
        return ()

    async def complete(self, request: ProviderRequest) -> Completion:
        """Never serves: raises ``auth`` with the reason."""
        raise ProviderError(ErrorKind.AUTH, f"provider disabled: {self.reason}", retryable=False)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        """Never serves: raises ``auth`` with the reason."""
        raise ProviderError(ErrorKind.AUTH, f"provider disabled: {self.reason}", retryable=False)
        yield  # pragma: no cover - makes this an async generator

    def features(self, model: str | None = None) -> Features:
        """The neutral defaults (nothing is asked of it)."""
        return Features()

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """The heuristic count."""
        return TokenCount(heuristic_token_count(messages))

    async def health(self) -> HealthProbe:
        """Down, with the reason (``detail.disabled``)."""
        return HealthProbe(False, 0.0, {"error": self.reason, "disabled": self.reason})

    async def list_models(self) -> list[ModelInfo]:
        """None."""
        return []

    async def aclose(self) -> None:
        """Nothing to release."""
