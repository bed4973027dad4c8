"""Which models the tree serves, from the configuration: ``GET /v1/models`` and unknown-model answers.

A provider serves the models its ``models`` list matches (names or glob patterns) plus its default model
(the router's rule, docs/routing.md). The listing names what is served by name; a model only a pattern
matches is served all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import ProviderConfig, is_pattern

__all__ = ["ModelCatalogue"]

#: ``created`` of every model object: the API wants an integer, and we do not know when a model was made.
CREATED = 0


class ModelCatalogue:
    """The models offered by the configured providers."""

    def __init__(self, providers: Sequence[ProviderConfig]) -> None:
        self._providers = tuple(providers)
        self._offered: dict[str, list[str]] = {}  # model -> providers offering it, in config order
        self._defaults: dict[str, str | None] = {}
        #: Some provider takes any model name (``models = ["*"]``).
        self.open = any("*" in provider.models for provider in providers)
        for provider in providers:
            self._defaults[provider.name] = provider.default_model
            named = [m for m in (*provider.models, provider.model) if not is_pattern(m)]
            for model in named:
                owners = self._offered.setdefault(model, [])
                for other in providers:  # a name listed by one provider may match another's pattern
                    if other.name not in owners and other.serves(model):
                        owners.append(other.name)

    def unknown(self, model: str | None) -> bool:
        """True when no provider serves ``model`` (so no agent could ever serve it)."""
        if model is None or model in self._offered:
            return False
        return not any(provider.serves(model) for provider in self._providers)

    def default_for(self, provider: str) -> str | None:
        """The default model of a provider agent, if it has one."""
        return self._defaults.get(provider)

    def model_object(self, model: str) -> dict[str, Any] | None:
        """OpenAI's model object (plus the ``providers`` offering it), or None when not offered."""
        owners = self._offered.get(model)
        if owners is None:
            return None
        return {
            "id": model,
            "object": "model",
            "created": CREATED,
            "owned_by": owners[0],
            "providers": owners,
        }

    def listing(self) -> dict[str, Any]:
        """``GET /v1/models``: every model offered by name."""
        return {"object": "list", "data": [self.model_object(m) for m in self._offered]}
