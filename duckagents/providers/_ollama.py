"""Ollama: chat over ``/api/chat`` (NDJSON streaming) plus the local model-management endpoints.

Ollama has no API key of its own; ``api_key`` is sent as a bearer token for proxies and hosted Ollama.
HTTP only, on :class:`~._client.HTTPProvider`: the model table is :mod:`._ollama_models`, the wire format
:mod:`._ollama_wire`, error replies :mod:`._ollama_errors`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Sequence
from typing import Any, ClassVar

import httpx

from ..errors import Secret
from ..messages import Features, Message
from ..signals import ProviderRequest
from . import _ollama_errors
from . import _ollama_wire as wire
from ._base import (
    HealthProbe,
    ModelInfo,
    TokenCount,
    heuristic_token_count,
)
from ._client import ChatFormat, ErrorFormat, HTTPProvider, StreamParser
from ._ollama_models import OllamaModelDetails, canonical_model_name, features_for
from ._streams import NDJSONParser

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "OllamaModelDetails",
    "OllamaProvider",
    "canonical_model_name",
]

DEFAULT_BASE_URL = "http://127.0.0.1:11434"
DEFAULT_MODEL = "llama3.2"
_MAX_CACHED = 256


class OllamaProvider(HTTPProvider):
    """The Ollama provider (see the module docstring). Use as ``async with OllamaProvider() as p:``.

    ``keep_alive`` is sent with every chat (how long Ollama keeps the model loaded); ``num_ctx`` is sent
    as ``options.num_ctx`` and caps :meth:`features` since Ollama truncates input beyond it.
    """

    errors: ClassVar[ErrorFormat] = _ollama_errors
    chat_path = "/api/chat"
    chat: ClassVar[ChatFormat] = wire

    name = "ollama"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: Secret | str | None = None,
        default_model: str = DEFAULT_MODEL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float | None = None,
        *,
        keep_alive: str | float | None = None,
        num_ctx: int | None = None,
    ) -> None:
        super().__init__(base_url, api_key, default_model, transport, timeout)
        self.keep_alive = keep_alive
        self.num_ctx = num_ctx
        self._shown: dict[str, OllamaModelDetails] = {}

    # --- chat -----------------------------------------------------------------------------------

    def _build(
        self, request: ProviderRequest, model: str, *, stream: bool
    ) -> functools.partial[dict[str, Any]]:
        return functools.partial(
            wire.build_body, request, model, stream=stream, keep_alive=self.keep_alive, num_ctx=self.num_ctx
        )

    def _stream_parser(self) -> StreamParser:
        """Newline-delimited JSON, one object per line."""
        return NDJSONParser()

    # --- model management -------------------------------------------------------------------------

    async def version(self) -> str:
        """The server version from ``GET /api/version``."""
        return await self._decode("GET", "/api/version", None, lambda body, _: wire.parse_version(body))

    async def list_models(self) -> list[ModelInfo]:
        """Local models from ``GET /api/tags`` (context window filled in once show() was called)."""
        out = []
        for entry in await self._model_list("/api/tags"):
            name = str(entry.get("name") or entry.get("model"))
            shown = self._shown.get(canonical_model_name(name))
            out.append(
                ModelInfo(
                    name=name,
                    size=wire.opt_int(entry.get("size")),
                    context_window=shown.context_window if shown else None,
                )
            )
        return out

    async def running_models(self) -> list[ModelInfo]:
        """Models loaded in memory, from ``GET /api/ps`` (``loaded=True``, sizes, ``expires_at``)."""
        return [
            ModelInfo(
                name=str(e.get("name") or e.get("model")),
                loaded=True,
                size=wire.opt_int(e.get("size")),
                size_vram=wire.opt_int(e.get("size_vram")),
                context_window=wire.opt_int(e.get("context_length")),
                expires_at=str(e["expires_at"]) if e.get("expires_at") else None,
            )
            for e in await self._model_list("/api/ps")
        ]

    async def show(self, model: str | None = None) -> OllamaModelDetails:
        """Details from ``POST /api/show``; cached so :meth:`features` can use them."""
        model = model or self.default_model
        details = await self._decode(
            "POST", "/api/show", model, lambda body, _: wire.parse_show(body, model), {"model": model}
        )
        if len(self._shown) >= _MAX_CACHED:
            self._shown.pop(next(iter(self._shown)))
        self._shown[canonical_model_name(model)] = details
        return details

    def pull(self, model: str, *, insecure: bool = False) -> AsyncGenerator[dict[str, Any], None]:
        """Pull a model; yields Ollama's progress objects (``status``, ``digest``, ``total``, ``completed``).

        Ends after the ``{"status": "success"}`` object; a stream without it raises PROTOCOL, a model the
        registry does not have ``not_found``.
        """
        body: dict[str, Any] = {"model": model, "stream": True}
        if insecure:
            body["insecure"] = True
        return self._stream("/api/pull", model, lambda: body, wire.PullProgress(), NDJSONParser())

    async def load(self, model: str | None = None, keep_alive: str | float | None = None) -> None:
        """Load a model into memory (``POST /api/generate`` without a prompt)."""
        model = model or self.default_model
        body: dict[str, Any] = {"model": model, "stream": False}
        keep = self.keep_alive if keep_alive is None else keep_alive
        if keep is not None:
            body["keep_alive"] = keep
        await self._json("POST", "/api/generate", model, body)

    async def unload(self, model: str | None = None) -> None:
        """Unload a model from memory now (``keep_alive: 0``)."""
        await self.load(model, keep_alive=0)

    # --- protocol extras ------------------------------------------------------------------------------

    def features(self, model: str | None = None) -> Features:
        """Per-model features: /api/show data once :meth:`show` fetched it, else the family table."""
        name = model or self.default_model
        return features_for(name, self._shown.get(canonical_model_name(name)), self.num_ctx)

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """Ollama has no tokenizer endpoint: the shared heuristic (``exact=False``)."""
        return TokenCount(heuristic_token_count(messages), exact=False)

    async def health(self) -> HealthProbe:
        """``GET /api/version``; ``ok=False`` (never an exception) when the server is unreachable."""

        async def check() -> dict[str, str]:
            return {"version": await self.version()}

        return await self._probe(check)

    # --- HTTP -------------------------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        model: str | None,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> tuple[Any, httpx.Response]:
        data, response = await super()._json(method, path, model, body, params=params, request_id=request_id)
        if isinstance(data, dict) and isinstance(data.get("error"), str):  # a failure reported in a 200
            raise self._error(None, response.headers, data, model, request_id=request_id)
        return data, response

    async def _model_list(self, path: str) -> list[dict[str, Any]]:
        return await self._decode("GET", path, None, lambda body, _: wire.parse_model_list(body, path))


