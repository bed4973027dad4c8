"""Hugging Face text-generation-inference (TGI): the Messages API for chat, plus TGI's native endpoints.

``complete``/``stream`` use ``POST /v1/chat/completions`` (OpenAI-shaped, SSE); ``generate`` and
``generate_stream`` use ``/generate`` and ``/generate_stream``; ``/info`` drives :meth:`features`,
``/health`` :meth:`health`, ``/tokenize`` exact token counts. The optional ``api_key`` is a bearer token
(Inference Endpoints, or a TGI started with ``--api-key``).

HTTP only, on :class:`~._client.HTTPProvider`: what the served model supports is :mod:`._tgi_models`, the
wire format :mod:`._tgi_wire`, error replies :mod:`._tgi_errors`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, ClassVar

import httpx

from ..errors import ProviderError, Secret
from ..messages import Features, Message
from ..signals import ProviderRequest
from . import _tgi_errors
from . import _tgi_wire as wire
from ._base import (
    Completion,
    HealthProbe,
    ModelInfo,
    StreamEvent,
    TokenCount,
    heuristic_token_count,
)
from ._client import ChatFormat, ErrorFormat, HTTPProvider
from ._streams import SSEParser
from ._tgi_models import TGIInfo, features_for

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "TGIInfo", "TGIProvider"]

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: TGI serves one model and ignores the request's ``model``; "tgi" is what its docs send.
DEFAULT_MODEL = "tgi"


class TGIProvider(HTTPProvider):
    """The TGI provider (see the module docstring). Use as ``async with TGIProvider() as p:``."""

    errors: ClassVar[ErrorFormat] = _tgi_errors
    chat_path = "/v1/chat/completions"
    chat: ClassVar[ChatFormat] = wire

    name = "tgi"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: Secret | str | None = None,
        default_model: str = DEFAULT_MODEL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> None:
        super().__init__(base_url, api_key, default_model, transport, timeout)
        self._info: TGIInfo | None = None

    # --- Messages API -----------------------------------------------------------------------------

    def _build(
        self, request: ProviderRequest, model: str, *, stream: bool
    ) -> functools.partial[dict[str, Any]]:
        return functools.partial(wire.build_body, request, model, stream=stream)

    # --- native endpoints ---------------------------------------------------------------------------

    async def generate(self, prompt: str, parameters: Mapping[str, Any] | None = None) -> Completion:
        """``POST /generate`` with TGI ``parameters`` (``max_new_tokens``, ``temperature``, ``stop``...)."""
        model = self._model_id()
        return await self._decode(
            "POST",
            "/generate",
            model,
            lambda body, response: wire.parse_generate(
                body, model, response.headers, self._rate_limit(response.headers)
            ),
            wire.build_generate_body(prompt, parameters),
        )

    def generate_stream(
        self, prompt: str, parameters: Mapping[str, Any] | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """``POST /generate_stream``: token text deltas (special tokens skipped), then one StreamEnd."""
        model = self._model_id()
        return self._stream(
            "/generate_stream",
            model,
            lambda: wire.build_generate_body(prompt, parameters),
            wire.GenerateStreamAssembler(model),
            SSEParser(data_only=True),
        )

    async def info(self, *, refresh: bool = False) -> TGIInfo:
        """``GET /info`` (cached; ``refresh=True`` asks again). Drives :meth:`features`."""
        if self._info is None or refresh:
            self._info = await self._decode("GET", "/info", None, lambda body, _: wire.parse_info(body))
        return self._info

    async def tokenize(self, text: str) -> int:
        """The exact number of tokens of ``text`` by the served model's tokenizer (``POST /tokenize``)."""
        return await self._decode(
            "POST", "/tokenize", None, lambda body, _: wire.parse_tokenize(body), {"inputs": text}
        )

    # --- protocol extras ------------------------------------------------------------------------------

    def features(self, model: str | None = None) -> Features:
        """From the cached ``/info`` once :meth:`info` ran (TGI serves one model), else TGI defaults."""
        return features_for(self._info)

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """Exact via ``/tokenize`` over ``role: text`` lines; the heuristic when that fails (a model without
        a fast tokenizer answers 404). Counting is advisory, so it never raises a ProviderError."""
        try:
            return TokenCount(await self.tokenize(wire.render_prompt(messages)), exact=True)
        except ProviderError:
            return TokenCount(heuristic_token_count(messages), exact=False)

    async def health(self) -> HealthProbe:
        """``GET /health`` (200 once the model is warmed up); ``ok=False``, never an exception, otherwise."""

        async def check() -> dict[str, str]:
            await self._send("GET", "/health", None)
            return {"model_id": self._info.model_id} if self._info else {}

        return await self._probe(check)

    async def list_models(self) -> list[ModelInfo]:
        """The one model TGI serves, from ``/info``."""
        info = await self.info()
        return [ModelInfo(name=info.model_id, context_window=info.max_total_tokens, loaded=True)]

    # --- HTTP -------------------------------------------------------------------------------------

    def _model_id(self) -> str:
        return self._info.model_id if self._info else self.default_model


