"""Ollama: chat over ``/api/chat`` (NDJSON streaming) plus the local model-management endpoints.

Ollama has no API key of its own; ``api_key`` is sent as a bearer token for proxies and hosted Ollama.
The wire translation lives in :mod:`duckagents.providers._ollama_wire`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import httpx

from ..errors import ErrorKind, ProviderError, Secret, redact
from ..messages import Features, Message, ToolCall
from ..signals import ProviderRequest, ToolCallDelta
from . import _ollama_wire as wire
from ._base import (
    Completion,
    HealthProbe,
    ModelInfo,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    TokenCount,
    heuristic_token_count,
)
from ._client import HTTPProvider, ReplyStream
from ._http import (
    error_message_from_body,
    kind_for_status,
    parse_rate_limit,
    parse_retry_after,
    request_id_note,
    with_notes,
)
from ._ollama_wire import OllamaModelDetails, canonical_model_name
from ._streams import StreamFormatError, iter_ndjson

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

    async def complete(self, request: ProviderRequest) -> Completion:
        """One non-streaming ``/api/chat`` call."""
        model = request.model or self.default_model
        body, response = await self._json("POST", "/api/chat", model, self._chat_body(request, model, False))
        try:
            if not isinstance(body, dict) or body.get("done") is not True or "message" not in body:
                raise StreamFormatError("chat reply has no message or is not done")
            content, raw_calls = wire.parse_message(body["message"])
            calls = tuple(wire.parse_tool_call(raw, i) for i, raw in enumerate(raw_calls))
        except StreamFormatError as exc:
            raise self._protocol(f"malformed chat reply: {exc}", model) from None
        return wire.parse_completion(body, model, content, calls, parse_rate_limit(response.headers))

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream ``/api/chat``: text deltas, whole tool calls as deltas, then one :class:`StreamEnd`.

        Ollama sends each tool call whole, so each becomes one :class:`ToolCallDelta` with id and name.
        """
        model = request.model or self.default_model
        text: list[str] = []
        calls: list[ToolCall] = []
        lines = self._lines("/api/chat", self._chat_body(request, model, True), model)
        async with aclosing(lines):
            async for line in lines:
                try:
                    content, raw_calls = wire.parse_message(line.get("message"))
                    new_calls = [wire.parse_tool_call(raw, len(calls) + i) for i, raw in enumerate(raw_calls)]
                except StreamFormatError as exc:
                    raise self._protocol(f"malformed stream line: {exc}", model) from None
                if content:
                    text.append(content)
                    yield StreamDelta(text=content)
                for call in new_calls:
                    calls.append(call)
                    yield StreamDelta(
                        tool_call=ToolCallDelta(len(calls) - 1, call.id, call.name, call.arguments)
                    )
                if line.get("done") is True:
                    rate_limit = parse_rate_limit(lines.headers)
                    completion = wire.parse_completion(line, model, "".join(text), tuple(calls), rate_limit)
                    await lines.drain()
                    yield StreamEnd(completion)
                    return
        raise self._protocol("stream ended without its done line", model)

    def _chat_body(self, request: ProviderRequest, model: str, stream: bool) -> dict[str, Any]:
        return wire.build_chat_body(
            request, model, stream=stream, keep_alive=self.keep_alive, num_ctx=self.num_ctx
        )

    # --- model management -------------------------------------------------------------------------

    async def version(self) -> str:
        """The server version from ``GET /api/version``."""
        body, _ = await self._json("GET", "/api/version", None)
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            raise self._protocol("version reply has no version", None)
        return str(body["version"])

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
        body, _ = await self._json("POST", "/api/show", model, {"model": model})
        try:
            details = wire.parse_show(body, model)
        except StreamFormatError as exc:
            raise self._protocol(f"malformed show reply: {exc}", model) from None
        if len(self._shown) >= _MAX_CACHED:
            self._shown.pop(next(iter(self._shown)))
        self._shown[canonical_model_name(model)] = details
        return details

    async def pull(self, model: str, *, insecure: bool = False) -> AsyncGenerator[dict[str, Any], None]:
        """Pull a model; yields Ollama's progress objects (``status``, ``digest``, ``total``, ``completed``).

        Ends after the ``{"status": "success"}`` object; a stream without it raises PROTOCOL.
        """
        body: dict[str, Any] = {"model": model, "stream": True}
        if insecure:
            body["insecure"] = True
        lines = self._lines("/api/pull", body, model)
        async with aclosing(lines):
            async for line in lines:
                if line.get("status") == "success":
                    await lines.drain()
                    yield line
                    return
                yield line
        raise self._protocol("pull stream ended without success", model)

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
        return wire.features_for(name, self._shown.get(canonical_model_name(name)), self.num_ctx)

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
        self, method: str, path: str, model: str | None, body: Any = None
    ) -> tuple[Any, httpx.Response]:
        data, response = await super()._json(method, path, model, body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            raise self._error(ErrorKind.UPSTREAM_5XX, data["error"], model, response)
        return data, response

    async def _model_list(self, path: str) -> list[dict[str, Any]]:
        body, _ = await self._json("GET", path, None)
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise self._protocol(f"{path} reply has no models list", None)
        return models

    def _http_error(
        self, response: httpx.Response, model: str | None, request_id: str | None = None
    ) -> ProviderError:
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = response.text
        message = error_message_from_body(parsed)
        return self._error(kind_for_status(response.status_code), message, model, response)

    def _error(
        self, kind: ErrorKind, message: str, model: str | None, response: httpx.Response
    ) -> ProviderError:
        message = with_notes(message, [request_id_note(response.headers)])
        status = response.status_code
        return ProviderError(
            wire.error_kind(kind, message),
            redact(message, self.secrets),
            provider=self.name,
            model=model,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            status=status if status >= 400 else None,  # in-band errors arrive on a 200
        )

    def _lines(self, path: str, body: dict[str, Any], model: str) -> ReplyStream[dict[str, Any]]:
        """POST and iterate the NDJSON objects of the reply (see :class:`ReplyStream`)."""
        return ReplyStream(self, path, body, model, self._decode_lines)

    async def _decode_lines(
        self, response: httpx.Response, model: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        async with aclosing(iter_ndjson(response.aiter_bytes())) as items:
            async for item in items:
                if not isinstance(item, dict):
                    raise self._protocol("stream line is not a JSON object", model)
                if isinstance(item.get("error"), str):  # Ollama reports late failures in-band
                    raise self._error(ErrorKind.UPSTREAM_5XX, item["error"], model, response)
                yield item
