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
import trio

from ..errors import ProviderError, Secret, StreamProtocolError, redact
from ..messages import Features, Message
from ..signals import ProviderRequest
from . import _openai_wire as openai_wire
from . import _tgi_wire as wire
from ._http import make_client
from ._http import translate_transport_errors as _transport
from ._streams import SSEEvent, StreamFormatError, iter_sse
from ._tgi_wire import TGIInfo
from .base import (
    Completion,
    HealthProbe,
    ModelInfo,
    StreamEnd,
    StreamEvent,
    TokenCount,
    heuristic_token_count,
)

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "TGIInfo", "TGIProvider"]

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: TGI serves one model and ignores the request's ``model``; "tgi" is what its docs send.
DEFAULT_MODEL = "tgi"
_DRAIN_TIMEOUT = 1.0


class TGIProvider:
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
        self.base_url = base_url
        self.default_model = default_model
        self._key = Secret(api_key) if isinstance(api_key, str) else api_key
        headers = {"authorization": f"Bearer {self._key.reveal()}"} if self._key else {}
        self._client = make_client(base_url, headers=headers, transport=transport, timeout=timeout)
        self._info: TGIInfo | None = None

    def __repr__(self) -> str:
        return f"TGIProvider(base_url={self.base_url!r}, default_model={self.default_model!r})"

    async def __aenter__(self) -> TGIProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """The bearer token, if any, for redaction."""
        return (self._key,) if self._key else ()

    async def aclose(self) -> None:
        """Release the HTTP client."""
        await self._client.aclose()

    # --- Messages API -----------------------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        """One non-streaming ``/v1/chat/completions`` call."""
        model = request.model or self.default_model
        body = wire.build_chat_body(request, model, stream=False)
        reply, response = await self._json("POST", "/v1/chat/completions", model, body)
        try:
            completion = openai_wire.parse_completion(
                wire.normalize_tool_arguments(reply), model, openai_wire.parse_rate_limit(response.headers)
            )
        except StreamFormatError as exc:
            raise self._protocol(str(exc), model) from None
        return wire.fix_finish(completion)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream ``/v1/chat/completions`` (SSE); the stream must end with ``data: [DONE]``."""
        model = request.model or self.default_model
        assembler = openai_wire.ChunkAssembler(model)
        events = _SSEEvents(
            self, "/v1/chat/completions", wire.build_chat_body(request, model, stream=True), model
        )
        async with aclosing(events):
            async for event in events:
                if event.data.strip() == "[DONE]":
                    try:
                        completion = assembler.finish(openai_wire.parse_rate_limit(events.headers))
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
            rate_limit = openai_wire.parse_rate_limit(response.headers)
            return wire.parse_generate(body, model, response.headers, rate_limit)
        except StreamFormatError as exc:
            raise self._protocol(str(exc), model) from None

    async def generate_stream(
        self, prompt: str, parameters: Mapping[str, Any] | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """``POST /generate_stream``: token text deltas (special tokens skipped), then one StreamEnd."""
        model = self._model_id()
        assembler = wire.GenerateStreamAssembler(model)
        events = _SSEEvents(self, "/generate_stream", wire.build_generate_body(prompt, parameters), model)
        async with aclosing(events):
            async for event in events:
                try:
                    deltas, completion = assembler.feed(
                        event.json(), openai_wire.parse_rate_limit(events.headers)
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
        start = trio.current_time()
        try:
            await self._json("GET", "/health", None, parse=False)
        except ProviderError as exc:
            detail = {"kind": exc.kind.value, "error": exc.message}
            return HealthProbe(ok=False, latency=trio.current_time() - start, detail=detail)
        detail = {"model_id": self._info.model_id} if self._info else {}
        return HealthProbe(ok=True, latency=trio.current_time() - start, detail=detail)

    async def list_models(self) -> list[ModelInfo]:
        """The one model TGI serves, from ``/info``."""
        info = await self.info()
        return [ModelInfo(name=info.model_id, context_window=info.max_total_tokens, loaded=True)]

    # --- HTTP -------------------------------------------------------------------------------------

    def _model_id(self) -> str:
        return self._info.model_id if self._info else self.default_model

    async def _json(
        self, method: str, path: str, model: str | None, body: Any = None, *, parse: bool = True
    ) -> tuple[Any, httpx.Response]:
        with _transport(self.name, model, self.secrets):
            response = await self._client.request(method, path, json=body)
        if response.status_code >= 400:
            raise self._http_error(response, model)
        if not parse:
            return None, response
        try:
            return response.json(), response
        except ValueError:
            raise self._protocol(f"{path} reply is not JSON", model, response.status_code) from None

    def _http_error(self, response: httpx.Response, model: str | None) -> ProviderError:
        body = openai_wire.decode_error_body(response.content)
        return wire.make_error(
            response.status_code,
            response.headers,
            body,
            provider=self.name,
            model=model,
            secrets=self.secrets,
        )

    def _protocol(self, message: str, model: str | None, status: int | None = None) -> StreamProtocolError:
        return StreamProtocolError(
            redact(message, self.secrets), provider=self.name, model=model, status=status
        )


class _SSEEvents:
    """POST and iterate the SSE events of the reply; failures (HTTP, transport, format, in-band error
    events) become ProviderErrors. Use with ``aclosing``; ``headers`` are the reply's once it started."""

    def __init__(self, provider: TGIProvider, path: str, body: dict[str, Any], model: str) -> None:
        self.headers = httpx.Headers()
        self._gen = self._events(provider, path, body, model)

    def __aiter__(self) -> _SSEEvents:
        return self

    async def __anext__(self) -> SSEEvent:
        return await self._gen.__anext__()

    async def drain(self) -> None:
        """Read what follows the terminal event (normally just the end of the body), so the connection
        goes back to the pool and no generator of the chain is abandoned half-way. Bounded in time; a
        failure here is ignored since the answer is already complete."""
        with trio.move_on_after(_DRAIN_TIMEOUT):
            try:
                async for _ in self:
                    pass
            except ProviderError:
                pass

    async def aclose(self) -> None:
        """Close the reply (and its connection) if still open."""
        await self._gen.aclose()

    async def _events(
        self, provider: TGIProvider, path: str, body: dict[str, Any], model: str
    ) -> AsyncGenerator[SSEEvent, None]:
        with _transport(provider.name, model, provider.secrets):
            async with provider._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise provider._http_error(response, model)
                self.headers = response.headers
                # Closed explicitly: callers stop at the terminal event and Trio warns about async generators
                # left to the garbage collector.
                try:
                    async with aclosing(iter_sse(response.aiter_bytes())) as events:
                        async for event in events:
                            if '"error"' in event.data:  # cheap pre-check; TGI reports late failures in-band
                                data = event.json()
                                if isinstance(data, dict) and "error" in data and "token" not in data:
                                    raise wire.make_error(
                                        None,
                                        response.headers,
                                        data,
                                        provider=provider.name,
                                        model=model,
                                        secrets=provider.secrets,
                                    )
                            yield event
                except StreamFormatError as exc:
                    raise provider._protocol(f"malformed stream: {exc}", model) from None
