"""Hugging Face text-generation-inference (TGI): the Messages API for chat, plus TGI's native endpoints.

``complete``/``stream`` use ``POST /v1/chat/completions`` (OpenAI-shaped, SSE); ``generate`` and
``generate_stream`` use ``/generate`` and ``/generate_stream``; ``/info`` drives :meth:`features`,
``/health`` :meth:`health`, ``/tokenize`` exact token counts. The optional ``api_key`` is a bearer token
(Inference Endpoints, or a TGI started with ``--api-key``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import httpx

from ..errors import ProviderError, Secret
from ..messages import Features, Message
from ..signals import ProviderRequest
from . import _openai_wire as openai_wire
from . import _tgi_wire as wire
from ._base import (
    Completion,
    HealthProbe,
    ModelInfo,
    StreamEnd,
    StreamEvent,
    TokenCount,
    heuristic_token_count,
)
from ._client import HTTPProvider, ReplyStream
from ._http import decode_error_body, parse_rate_limit
from ._streams import SSEEvent, StreamFormatError, iter_sse
from ._tgi_errors import make_error
from ._tgi_wire import TGIInfo

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "TGIInfo", "TGIProvider"]

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: TGI serves one model and ignores the request's ``model``; "tgi" is what its docs send.
DEFAULT_MODEL = "tgi"


class TGIProvider(HTTPProvider):
    """The TGI provider (see the module docstring). Use as ``async with TGIProvider() as p:``."""

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

    async def complete(self, request: ProviderRequest) -> Completion:
        """One non-streaming ``/v1/chat/completions`` call."""
        model = request.model or self.default_model
        body = wire.build_chat_body(request, model, stream=False)
        reply, response = await self._json("POST", "/v1/chat/completions", model, body)
        try:
            completion = openai_wire.parse_completion(
                wire.normalize_tool_arguments(reply), model, parse_rate_limit(response.headers)
            )
        except StreamFormatError as exc:
            raise self._protocol(str(exc), model) from None
        return wire.fix_finish(completion)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream ``/v1/chat/completions`` (SSE); the stream must end with ``data: [DONE]``."""
        model = request.model or self.default_model
        assembler = openai_wire.ChunkAssembler(model)
        body = wire.build_chat_body(request, model, stream=True)
        events = self._events("/v1/chat/completions", body, model)
        async with aclosing(events):
            async for event in events:
                if event.data.strip() == "[DONE]":
                    try:
                        completion = assembler.finish(parse_rate_limit(events.headers))
                    except StreamFormatError as exc:
                        raise self._protocol(str(exc), model) from None
                    await events.drain()
                    yield StreamEnd(wire.fix_finish(completion))
                    return
                try:
                    deltas = assembler.feed(wire.normalize_tool_arguments(event.json()))
                except StreamFormatError as exc:
                    raise self._protocol(str(exc), model) from None
                for delta in deltas:
                    yield delta
        raise self._protocol("chat stream ended without [DONE]", model)

    # --- native endpoints ---------------------------------------------------------------------------

    async def generate(self, prompt: str, parameters: Mapping[str, Any] | None = None) -> Completion:
        """``POST /generate`` with TGI ``parameters`` (``max_new_tokens``, ``temperature``, ``stop``...)."""
        model = self._model_id()
        body, response = await self._json(
            "POST", "/generate", model, wire.build_generate_body(prompt, parameters)
        )
        try:
            rate_limit = parse_rate_limit(response.headers)
            return wire.parse_generate(body, model, response.headers, rate_limit)
        except StreamFormatError as exc:
            raise self._protocol(str(exc), model) from None

    async def generate_stream(
        self, prompt: str, parameters: Mapping[str, Any] | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """``POST /generate_stream``: token text deltas (special tokens skipped), then one StreamEnd."""
        model = self._model_id()
        assembler = wire.GenerateStreamAssembler(model)
        events = self._events("/generate_stream", wire.build_generate_body(prompt, parameters), model)
        async with aclosing(events):
            async for event in events:
                try:
                    deltas, completion = assembler.feed(
                        event.json(), parse_rate_limit(events.headers)
                    )
                except StreamFormatError as exc:
                    raise self._protocol(str(exc), model) from None
                for delta in deltas:
                    yield delta
                if completion is not None:
                    await events.drain()
                    yield StreamEnd(completion)
                    return
        raise self._protocol("generate stream ended without generated_text", model)

    async def info(self, *, refresh: bool = False) -> TGIInfo:
        """``GET /info`` (cached; ``refresh=True`` asks again). Drives :meth:`features`."""
        if self._info is None or refresh:
            body, _ = await self._json("GET", "/info", None)
            try:
                self._info = wire.parse_info(body)
            except StreamFormatError as exc:
                raise self._protocol(str(exc), None) from None
        return self._info

    async def tokenize(self, text: str) -> int:
        """The exact number of tokens of ``text`` by the served model's tokenizer (``POST /tokenize``)."""
        body, _ = await self._json("POST", "/tokenize", None, {"inputs": text})
        try:
            return wire.parse_tokenize(body)
        except StreamFormatError as exc:
            raise self._protocol(str(exc), None) from None

    # --- protocol extras ------------------------------------------------------------------------------

    def features(self, model: str | None = None) -> Features:
        """From the cached ``/info`` once :meth:`info` ran (TGI serves one model), else TGI defaults."""
        return wire.features_for(self._info)

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

    def _http_error(
        self, response: httpx.Response, model: str | None, request_id: str | None = None
    ) -> ProviderError:
        return self._error(response.status_code, response, decode_error_body(response.content), model)

    def _error(
        self, status: int | None, response: httpx.Response, body: Any, model: str | None
    ) -> ProviderError:
        """A TGI error reply (``status``) or in-band error event (no status) as a ProviderError."""
        return make_error(
            status, response.headers, body, provider=self.name, model=model, secrets=self.secrets
        )

    def _events(self, path: str, body: dict[str, Any], model: str) -> ReplyStream[SSEEvent]:
        """POST and iterate the SSE events of the reply (see :class:`ReplyStream`)."""
        return ReplyStream(self, path, body, model, self._decode_events)

    async def _decode_events(self, response: httpx.Response, model: str) -> AsyncGenerator[SSEEvent, None]:
        async with aclosing(iter_sse(response.aiter_bytes())) as events:
            async for event in events:
                if '"error"' in event.data:  # cheap pre-check; TGI reports late failures in-band
                    data = event.json()
                    if isinstance(data, dict) and "error" in data and "token" not in data:
                        raise self._error(None, response, data, model)
                yield event
