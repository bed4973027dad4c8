"""The Anthropic provider: the Messages API (``POST /v1/messages``) over httpx.

HTTP only, on :class:`~._client.HTTPProvider`: the model table is :mod:`._anthropic_models`, the wire
format (request encoding, reply and stream decoding) :mod:`._anthropic_wire`, error replies and rate-limit
headers :mod:`._anthropic_errors`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx

from ..errors import ProviderError, Secret
from ..messages import Features, Message
from ..signals import ProviderRequest
from . import _anthropic_errors
from . import _anthropic_wire as wire
from ._anthropic_errors import PROVIDER
from ._anthropic_models import features_for, model_family
from ._anthropic_wire import MAX_IMAGE_BYTES, MEDIA_TYPES, image_problem
from ._base import (
    HealthProbe,
    ModelInfo,
    TokenCount,
    WireFormatError,
    heuristic_token_count,
)
from ._client import ChatFormat, ErrorFormat, HTTPProvider, StreamParser
from ._streams import SSEParser

__all__ = [
    "API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "MAX_IMAGE_BYTES",
    "MEDIA_TYPES",
    "AnthropicProvider",
    "features_for",
    "image_problem",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MODEL = "claude-sonnet-4-6"
#: ``max_tokens`` is required by the API; without an option we ask for this much, capped by the model.
DEFAULT_MAX_TOKENS = 4096
# Streams ask for SSE; the client's default accept header is JSON.
_STREAM_HEADERS = {"accept": "text/event-stream"}
# Pagination of GET /v1/models is bounded: a misbehaving upstream must not loop us forever.
MAX_MODEL_PAGES = 50


class AnthropicProvider(HTTPProvider):
    """Anthropic's Messages API as a :class:`~duckagents.providers._base.Provider`.

    Use as ``async with AnthropicProvider(api_key=...) as provider:``. ``media_types`` and
    ``max_image_bytes`` let callers validate images before sending (see :func:`image_problem`). A request
    setting both ``temperature`` and ``top_p`` for a model that refuses both sends ``temperature`` only
    (:class:`~._anthropic_models.AnthropicModelFamily`).
    """

    errors: ClassVar[ErrorFormat] = _anthropic_errors
    chat_path = "/v1/messages"
    chat: ClassVar[ChatFormat] = wire
    stream_headers = _STREAM_HEADERS

    name = PROVIDER
    #: Image media types the API accepts.
    media_types: frozenset[str] = MEDIA_TYPES
    #: The per-image size limit (decoded bytes) the API documents.
    max_image_bytes: int = MAX_IMAGE_BYTES

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: Secret | str | None = None,
        default_model: str = DEFAULT_MODEL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float | None = None,
        *,
        api_version: str = API_VERSION,
        default_max_tokens: int | None = None,
    ) -> None:
        headers = {"anthropic-version": api_version, "accept": "application/json"}
        super().__init__(base_url.rstrip("/"), api_key, default_model, transport, timeout, headers=headers)
        self._default_max_tokens = default_max_tokens

    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    # --- capabilities ----------------------------------------------------------------------------

    def features(self, model: str | None = None) -> Features:
        """What ``model`` (default: the provider's default model) supports."""
        return features_for(model or self.default_model)

    def max_tokens_for(self, model: str) -> int:
        """The ``max_tokens`` sent when the request does not set one."""
        return min(self._default_max_tokens or DEFAULT_MAX_TOKENS, features_for(model).max_output_tokens)

    # --- completions -----------------------------------------------------------------------------

    def _build(
        self, request: ProviderRequest, model: str, *, stream: bool
    ) -> functools.partial[dict[str, Any]]:
        return functools.partial(
            wire.build_body,
            request,
            model,
            stream=stream,
            max_tokens=self.max_tokens_for(model),
            exclusive_sampling=model_family(model).exclusive_sampling,
        )

    def _stream_parser(self) -> StreamParser:
        """Server-sent events with their event names (the Messages API's stream types them)."""
        return SSEParser()

    # --- tokens, models, health ------------------------------------------------------------------

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """Count input tokens with ``POST /v1/messages/count_tokens`` (exact), else estimate locally."""
        model = model or self.default_model
        try:
            system, turns = wire.encode_messages(messages)
            body: dict[str, Any] = {"model": model, "messages": turns}
            if system:
                body["system"] = system
            data, _ = await self._json("POST", "/v1/messages/count_tokens", model, body)
            count = data.get("input_tokens") if isinstance(data, dict) else None
            if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                return TokenCount(count, exact=True)
        except (ProviderError, WireFormatError):
            pass  # the endpoint is a refinement; an estimate is still a useful answer
        return TokenCount(heuristic_token_count(messages), exact=False)

    async def list_models(self) -> list[ModelInfo]:
        """Every model ``GET /v1/models`` lists, following its pagination."""
        models: list[ModelInfo] = []
        params: dict[str, Any] = {"limit": 1000}
        for _ in range(MAX_MODEL_PAGES):
            page, data = await self._decode(
                "GET", "/v1/models", None, lambda page, _: (page, wire.parse_model_page(page)), params=params
            )
            for item in data:
                window = item.get("max_input_tokens")
                if not isinstance(window, int):
                    window = features_for(item["id"]).context_window
                models.append(ModelInfo(name=item["id"], context_window=window))
            if not page.get("has_more") or not isinstance(page.get("last_id"), str):
                break
            params = {"limit": 1000, "after_id": page["last_id"]}
        return models

    async def health(self) -> HealthProbe:
        """Probe ``GET /v1/models?limit=1``; never raises for an unreachable or refusing upstream."""

        async def check() -> dict[str, str]:
            _, response = await self._json("GET", "/v1/models", None, params={"limit": 1})
            return {"status": str(response.status_code)}

        return await self._probe(check, report_status=True)

    # --- errors ----------------------------------------------------------------------------------


