"""The OpenAI Chat Completions provider (also any OpenAI-compatible server: vLLM, LM Studio, ...).

HTTP only, on :class:`~._client.HTTPProvider`: the model table is :mod:`._openai_models`, the wire format
:mod:`._openai_wire`, error replies and rate-limit headers :mod:`._openai_errors`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx

from ..errors import Secret
from ..messages import Features, Message
from ..signals import ProviderRequest
from . import _openai_errors
from . import _openai_wire as wire
from ._base import (
    HealthProbe,
    ModelInfo,
    TokenCount,
    heuristic_token_count,
)
from ._client import ChatFormat, ErrorFormat, HTTPProvider
from ._openai_models import (
    MODEL_FAMILIES,
    UNKNOWN_MODEL_FEATURES,
    OpenAIModelFamily,
    features_for,
    is_reasoning_model,
    model_family,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"


class OpenAIProvider(HTTPProvider):
    """OpenAI Chat Completions over httpx. ``base_url`` includes the version path (``.../v1``).

    For reasoning models ``max_tokens`` is sent as ``max_completion_tokens`` and ``temperature``/``top_p``
    are left out (the API rejects them). Streams ask for ``stream_options.include_usage`` unless
    ``stream_usage=False`` (for compatible servers that reject it).
    """

    errors: ClassVar[ErrorFormat] = _openai_errors
    chat_path = "chat/completions"
    chat: ClassVar[ChatFormat] = wire

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: Secret | str | None = None,
        default_model: str = DEFAULT_MODEL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float | None = None,
        *,
        organization: str | None = None,
        project: str | None = None,
        stream_usage: bool = True,
        model_features: Mapping[str, Features] | None = None,
        name: str = "openai",
    ) -> None:
        self.name = name
        headers = {"accept": "application/json"}
        if organization:
            headers["openai-organization"] = organization
        if project:
            headers["openai-project"] = project
        super().__init__(base_url.rstrip("/"), api_key, default_model, transport, timeout, headers=headers)
        self.stream_usage = stream_usage
        self._model_features = dict(model_features or {})

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, base_url={self.base_url!r}, model={self.default_model!r})"

    # --- completions -----------------------------------------------------------------------------

    def _build(
        self, request: ProviderRequest, model: str, *, stream: bool
    ) -> functools.partial[dict[str, Any]]:
        return functools.partial(
            wire.build_body,
            request,
            model,
            stream=stream,
            reasoning=is_reasoning_model(model),
            stream_usage=self.stream_usage,
        )

    # --- the rest of the protocol ----------------------------------------------------------------

    def features(self, model: str | None = None) -> Features:
        """Per-model features: ``model_features`` overrides, then the family table, then the fallback."""
        model = model or self.default_model
        if model in self._model_features:
            return self._model_features[model]
        return features_for(model)

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """The API has no token-counting endpoint: a local heuristic estimate."""
        return TokenCount(heuristic_token_count(messages), exact=False)

    async def list_models(self) -> list[ModelInfo]:
        """``GET /models``; context windows come from the family table where known."""
        names = await self._decode("GET", "models", None, lambda body, _: wire.parse_model_ids(body))
        families = [(name, model_family(name)) for name in names]
        return [ModelInfo(n, context_window=f.features.context_window if f else None) for n, f in families]

    async def health(self) -> HealthProbe:
        """``GET /models`` as a probe; ``ok=False`` (never an exception) when unreachable or refused."""

        async def check() -> dict[str, str]:
            response = await self._send("GET", "models", None)
            return {"status": str(response.status_code)}

        return await self._probe(check, report_status=True)

    # --- errors ----------------------------------------------------------------------------------




__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "MODEL_FAMILIES",
    "UNKNOWN_MODEL_FEATURES",
    "OpenAIModelFamily",
    "OpenAIProvider",
    "is_reasoning_model",
    "model_family",
]
