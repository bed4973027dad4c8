"""The Anthropic provider: the Messages API (``POST /v1/messages``) over httpx.

The wire format lives in :mod:`._anthropic_request` (encoding), :mod:`._anthropic_wire` (decoding, the
stream state machine) and :mod:`._anthropic_errors` (errors, rate-limit headers); this module does the
HTTP (on :class:`~._client.HTTPProvider`) and holds the model table.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import httpx

from ..errors import ProviderError, Secret, redact
from ..messages import Features, Message
from ..signals import ProviderRequest
from ._anthropic_errors import PROVIDER, decode_rate_limits, provider_error
from ._anthropic_request import (
    MAX_IMAGE_BYTES,
    MEDIA_TYPES,
    RequestEncodingError,
    encode_messages,
    encode_request,
    image_problem,
)
from ._anthropic_wire import StreamAssembler, StreamErrorEvent, WireFormatError, decode_message
from ._base import (
    Completion,
    HealthProbe,
    ModelInfo,
    StreamEnd,
    StreamEvent,
    TokenCount,
    heuristic_token_count,
)
from ._client import HTTPProvider
from ._http import decode_error_body
from ._streams import StreamFormatError, iter_sse

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

# Every Claude model takes images and tools; none has a JSON mode. Unknown models get this profile.
_CLAUDE = Features(tools=True, vision=True, context_window=200_000, max_output_tokens=8192)
# (prefix, context window, max output) from Anthropic's model overview pages; first match wins, so
# more specific prefixes come first.
_MODELS: tuple[tuple[str, int, int], ...] = (
    ("claude-fable-5", 1_000_000, 128_000),
    ("claude-opus-5", 1_000_000, 128_000),
    ("claude-sonnet-5", 1_000_000, 128_000),
    ("claude-opus-4-8", 1_000_000, 128_000),
    ("claude-opus-4-7", 1_000_000, 128_000),
    ("claude-opus-4-6", 1_000_000, 128_000),
    ("claude-sonnet-4-6", 1_000_000, 128_000),
    ("claude-opus-4-5", 200_000, 64_000),
    ("claude-opus-4", 200_000, 32_000),
    ("claude-sonnet-4", 200_000, 64_000),
    ("claude-haiku-4", 200_000, 64_000),
    ("claude-3-7-sonnet", 200_000, 64_000),
    ("claude-3-5-", 200_000, 8_192),
    ("claude-3-", 200_000, 4_096),
)


def features_for(model: str) -> Features:
    """What an Anthropic model supports; unknown models get the common Claude profile."""
    for prefix, window, max_output in _MODELS:
        if model.startswith(prefix):
            return attrs.evolve(_CLAUDE, context_window=window, max_output_tokens=max_output)
    return _CLAUDE


class AnthropicProvider(HTTPProvider):
    """Anthropic's Messages API as a :class:`~duckagents.providers._base.Provider`.

    Use as ``async with AnthropicProvider(api_key=...) as provider:``. ``media_types`` and
    ``max_image_bytes`` let callers validate images before sending (see :func:`image_problem`).
    """

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

    def _body(self, request: ProviderRequest, model: str, *, stream: bool) -> dict[str, Any]:
        try:
            return encode_request(
                request.messages,
                request.options,
                model=model,
                max_tokens=self.max_tokens_for(model),
                stream=stream,
            )
        except RequestEncodingError as exc:
            raise ProviderError(
                exc.kind,
                redact(str(exc), self.secrets),
                provider=PROVIDER,
                model=model,
                request_id=request.request_id,
            ) from None

    def _protocol_error(
        self, exc: Exception, model: str | None, request_id: str | None, **extra: Any
    ) -> ProviderError:
        message = f"malformed response from Anthropic: {exc}"
        return self._protocol(message, model, request_id=request_id, **extra)

    def _http_error(
        self, response: httpx.Response, model: str | None, request_id: str | None = None
    ) -> ProviderError:
        return provider_error(
            status=response.status_code,
            body=decode_error_body(response.content),
            headers=response.headers,
            model=model,
            secrets=self.secrets,
            request_id=request_id,
            now=time.time(),
        )

    async def _call(
        self,
        method: str,
        path: str,
        model: str | None,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> tuple[httpx.Response, Any]:
        """One non-streaming request: the response and its parsed JSON; raises ProviderError."""
        response = await self._send(method, path, model, body=body, params=params, request_id=request_id)
        try:
            return response, response.json()
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
            raise self._protocol_error(exc, model, request_id, status=response.status_code) from None

    async def complete(self, request: ProviderRequest) -> Completion:
        """Run one non-streaming completion; raises :class:`~duckagents.errors.ProviderError`."""
        model = request.model or self.default_model
        body = self._body(request, model, stream=False)
        response, data = await self._call(
            "POST", "/v1/messages", model, body=body, request_id=request.request_id
        )
        try:
            return decode_message(
                data, model=model, rate_limit=decode_rate_limits(response.headers, time.time())
            )
        except WireFormatError as exc:
            raise self._protocol_error(exc, model, request.request_id, status=response.status_code) from None

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        """Stream a completion: text / tool-call deltas, then exactly one :class:`StreamEnd`."""
        model = request.model or self.default_model
        body = self._body(request, model, stream=True)
        assembler = StreamAssembler(model)
        delivered = False
        try:
            async with self._post_stream(
                "/v1/messages", model, body, headers=_STREAM_HEADERS, request_id=request.request_id
            ) as response:
                rate_limit = decode_rate_limits(response.headers, time.time())
                try:
                    async with contextlib.aclosing(iter_sse(response.aiter_bytes())) as events:
                        async for event in events:
                            for delta in assembler.feed(event.event, event.json()):
                                delivered = True
                                yield delta
                    completion = assembler.completion(rate_limit)
                except (StreamFormatError, WireFormatError) as exc:
                    raise self._protocol_error(
                        exc, model, request.request_id, partial=delivered
                    ) from None
                except StreamErrorEvent as exc:
                    raise provider_error(
                        status=None,
                        body=exc.body,
                        headers=response.headers,  # for its request-id
                        model=model,
                        secrets=self.secrets,
                        request_id=request.request_id,
                        now=time.time(),
                        partial=delivered,
                    ) from None
        except ProviderError as exc:
            # A failure after text reached the caller cannot be retried transparently.
            exc.partial = exc.partial or delivered
            raise
        yield StreamEnd(completion)

    # --- tokens, models, health ------------------------------------------------------------------

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """Count input tokens with ``POST /v1/messages/count_tokens`` (exact), else estimate locally."""
        model = model or self.default_model
        try:
            system, turns = encode_messages(messages)
            body: dict[str, Any] = {"model": model, "messages": turns}
            if system:
                body["system"] = system
            _, data = await self._call("POST", "/v1/messages/count_tokens", model, body=body)
            count = data.get("input_tokens") if isinstance(data, dict) else None
            if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                return TokenCount(count, exact=True)
        except (ProviderError, RequestEncodingError):
            pass  # the endpoint is a refinement; an estimate is still a useful answer
        return TokenCount(heuristic_token_count(messages), exact=False)

    async def list_models(self) -> list[ModelInfo]:
        """Every model ``GET /v1/models`` lists, following its pagination."""
        models: list[ModelInfo] = []
        params: dict[str, Any] = {"limit": 1000}
        for _ in range(MAX_MODEL_PAGES):
            _, page = await self._call("GET", "/v1/models", None, params=params)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list) or not all(
                isinstance(m, dict) and isinstance(m.get("id"), str) for m in data
            ):
                raise self._protocol_error(
                    WireFormatError("model list without a data array of models"), None, None
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
            response, _ = await self._call("GET", "/v1/models", None, params={"limit": 1})
            return {"status": str(response.status_code)}

        return await self._probe(check, report_status=True)
