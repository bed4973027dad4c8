"""Which models the tree serves, from the configuration: ``GET /v1/models`` and unknown-model answers.

A provider offers the models it lists plus its default model; a provider that names neither takes any
model name (the router applies the same rule when it chooses an agent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import ProviderConfig

__all__ = ["ModelCatalogue"]

#: ``created`` of every model object: the API wants an integer, and we do not know when a model was made.
CREATED = 0


class ModelCatalogue:
    """The models offered by the configured providers."""

    def __init__(self, providers: Sequence[ProviderConfig]) -> None:
        self._offered: dict[str, list[str]] = {}  # model -> providers offering it, in config order
        self._defaults: dict[str, str | None] = {}
        self.open = False  # some provider takes any model name
        for provider in providers:
            self._defaults[provider.name] = provider.default_model
            listed = (*provider.models, *((provider.default_model,) if provider.default_model else ()))
            if not listed:
                self.open = True
            for model in listed:
                owners = self._offered.setdefault(model, [])
                if provider.name not in owners:
                    owners.append(provider.name)

    def unknown(self, model: str | None) -> bool:
        """True when no provider offers ``model`` (so no agent could ever serve it)."""
        return model is not None and not self.open and model not in self._offered

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
