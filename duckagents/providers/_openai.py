"""The OpenAI Chat Completions provider (also any OpenAI-compatible server: vLLM, LM Studio, ...).

HTTP only; the wire format lives in :mod:`._openai_wire` and :mod:`._openai_errors`, the shared HTTP
plumbing in :mod:`._client`. The model-family table here is public so the agent layer can ask what a model
supports and which request rules apply to it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import attrs
import httpx
import trio

from ..errors import ProviderError, Secret
from ..messages import Features, Message
from ..signals import ProviderRequest
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
from ._client import DRAIN_TIMEOUT, HTTPProvider, body_chunks
from ._http import (
    decode_error_body,
    parse_rate_limit,
    request_id_note,
    with_notes,
)
from ._openai_errors import make_error, stream_error
from ._openai_wire import ChunkAssembler, build_body, parse_completion
from ._streams import SSEParser, StreamFormatError, sse_json

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"


@attrs.frozen
class OpenAIModelFamily:
    """Models sharing limits and request rules; a model belongs to the longest matching ``prefix``.

    ``reasoning`` families (o-series, gpt-5) take ``max_completion_tokens`` instead of ``max_tokens`` and
    reject ``temperature``/``top_p``.
    """

    prefix: str
    features: Features
    reasoning: bool = False


def _features(
    context: int, output: int, *, tools: bool = True, vision: bool = True, json_mode: bool = True,
    system_prompt: bool = True,
) -> Features:
    return Features(
        tools=tools, vision=vision, json_mode=json_mode, system_prompt=system_prompt,
        context_window=context, max_output_tokens=output,
    )


_O1_LEGACY = {"tools": False, "vision": False, "json_mode": False, "system_prompt": False}

#: Known model families (published limits). Dated snapshots (``gpt-4o-2024-08-06``) match their family.
MODEL_FAMILIES: tuple[OpenAIModelFamily, ...] = (
    OpenAIModelFamily("gpt-5", _features(400_000, 128_000), reasoning=True),
    OpenAIModelFamily("gpt-4.1", _features(1_047_576, 32_768)),
    OpenAIModelFamily("gpt-4o", _features(128_000, 16_384)),
    OpenAIModelFamily("gpt-4o-mini", _features(128_000, 16_384)),
    OpenAIModelFamily("chatgpt-4o-latest", _features(128_000, 16_384)),
    OpenAIModelFamily("gpt-4-turbo", _features(128_000, 4_096)),
    OpenAIModelFamily("gpt-4", _features(8_192, 8_192, vision=False, json_mode=False)),
    OpenAIModelFamily("gpt-3.5-turbo", _features(16_385, 4_096, vision=False)),
    OpenAIModelFamily("o1", _features(200_000, 100_000), reasoning=True),
    OpenAIModelFamily("o1-mini", _features(128_000, 65_536, **_O1_LEGACY), reasoning=True),
    OpenAIModelFamily("o1-preview", _features(128_000, 32_768, **_O1_LEGACY), reasoning=True),
    OpenAIModelFamily("o3", _features(200_000, 100_000), reasoning=True),
    OpenAIModelFamily("o3-mini", _features(200_000, 100_000, vision=False), reasoning=True),
    OpenAIModelFamily("o4-mini", _features(200_000, 100_000), reasoning=True),
)

#: What an unknown model (e.g. on an OpenAI-compatible server) is assumed to support: only the basics,
#: so nothing is routed to it that it may not handle. Override with ``model_features=``.
UNKNOWN_MODEL_FEATURES = Features(
    tools=False, vision=False, json_mode=False, context_window=8_192, max_output_tokens=4_096
)


@functools.lru_cache(maxsize=512)
def model_family(model: str) -> OpenAIModelFamily | None:
    """The family of ``model`` (``ft:`` fine-tunes and ``org/`` prefixes included), or None if unknown."""
    name = model.rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    best: OpenAIModelFamily | None = None
    for family in MODEL_FAMILIES:
        if (name == family.prefix or name.startswith(family.prefix + "-")) and (
            best is None or len(family.prefix) > len(best.prefix)
        ):
            best = family
    return best


def is_reasoning_model(model: str) -> bool:
    """True when ``model`` takes ``max_completion_tokens`` and rejects sampling parameters."""
    family = model_family(model)
    return family is not None and family.reasoning


class OpenAIProvider(HTTPProvider):
    """OpenAI Chat Completions over httpx. ``base_url`` includes the version path (``.../v1``).

    For reasoning models ``max_tokens`` is sent as ``max_completion_tokens`` and ``temperature``/``top_p``
    are left out (the API rejects them). Streams ask for ``stream_options.include_usage`` unless
    ``stream_usage=False`` (for compatible servers that reject it).
    """

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

    def _body(self, request: ProviderRequest, model: str, *, stream: bool) -> dict[str, Any]:
        return build_body(
            request, model, stream=stream, reasoning=is_reasoning_model(model), stream_usage=self.stream_usage
        )

    async def complete(self, request: ProviderRequest) -> Completion:
        """One non-streaming chat completion."""
        model = request.model or self.default_model
        body = self._body(request, model, stream=False)
        response = await self._send("POST", "chat/completions", model, body=body)
        try:
            return parse_completion(response.json(), model, parse_rate_limit(response.headers))
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and StreamFormatError are ValueErrors
            raise self._protocol_error(f"invalid completion body: {exc}", model, response) from None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream a chat completion: deltas, then one :class:`StreamEnd` after ``data: [DONE]``."""
        model = request.model or self.default_model
        body = self._body(request, model, stream=True)
        assembler = ChunkAssembler(model)
        async with self._post_stream("chat/completions", model, body) as response:
            rate_limit = parse_rate_limit(response.headers)
            # The parser is driven here rather than through iter_sse: every async-generator layer between
            # the socket and the caller costs per item. Events are still handled (and their deltas
            # yielded) one at a time, so the first delta of a network chunk does not wait for the rest.
            parser = SSEParser()
            done = False
            try:
                async with contextlib.aclosing(body_chunks(response)) as chunks:
                    async for raw in chunks:
                        for data in parser.feed_data(raw):
                            deltas = self._event_deltas(data, assembler, response, model)
                            if deltas is None:
                                done = True
                                break
                            for delta in deltas:
                                yield delta
                        if done:
                            break
                    else:
                        for data in parser.close_data():
                            deltas = self._event_deltas(data, assembler, response, model)
                            if deltas is None:
                                done = True
                                break
                            for delta in deltas:
                                yield delta
                    if done:
                        # Read the (empty) rest of the body so the connection returns to the pool;
                        # abandoning it at [DONE] would cost a new connection per stream.
                        with trio.move_on_after(DRAIN_TIMEOUT):
                            async for raw in chunks:
                                parser.feed_data(raw)
                            parser.close_data()
                if not done:
                    raise StreamFormatError("stream ended without data: [DONE]")
                completion = assembler.finish(rate_limit)
            except StreamFormatError as exc:
                raise self._protocol_error(str(exc), model, response) from None
        yield StreamEnd(completion)

    def _event_deltas(
        self, data: str, assembler: ChunkAssembler, response: httpx.Response, model: str
    ) -> list[StreamDelta] | None:
        """The deltas of one event's ``data``, or None for ``[DONE]``; an in-band error raises."""
        # A chunk object starts with "{" and cannot be [DONE]: no strip() per event.
        if data[:1] != "{" and data.strip() == "[DONE]":
            return None
        chunk = sse_json(data)
        if type(chunk) is dict and "error" in chunk and stream_error(chunk) is not None:
            raise make_error(
                None, response.headers, chunk, provider=self.name, model=model, secrets=self.secrets
            )
        return assembler.feed(chunk)

    # --- the rest of the protocol ----------------------------------------------------------------

    def features(self, model: str | None = None) -> Features:
        """Per-model features: ``model_features`` overrides, then the family table, then the fallback."""
        model = model or self.default_model
        if model in self._model_features:
            return self._model_features[model]
        family = model_family(model)
        return family.features if family is not None else UNKNOWN_MODEL_FEATURES

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """The API has no token-counting endpoint: a local heuristic estimate."""
        return TokenCount(heuristic_token_count(messages), exact=False)

    async def list_models(self) -> list[ModelInfo]:
        """``GET /models``; context windows come from the family table where known."""
        response = await self._send("GET", "models", None)
        try:
            entries = response.json()["data"]
            names = [entry["id"] for entry in entries]
            if not all(isinstance(n, str) for n in names):
                raise ValueError("a model id is not a string")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise self._protocol_error(f"invalid model list: {exc!r}", None, response) from None
        families = [(name, model_family(name)) for name in names]
        return [ModelInfo(n, context_window=f.features.context_window if f else None) for n, f in families]

    async def health(self) -> HealthProbe:
        """``GET /models`` as a probe; ``ok=False`` (never an exception) when unreachable or refused."""

        async def check() -> dict[str, str]:
            response = await self._send("GET", "models", None)
            return {"status": str(response.status_code)}

        return await self._probe(check, report_status=True)

    # --- errors ----------------------------------------------------------------------------------

    def _http_error(
        self, response: httpx.Response, model: str | None, request_id: str | None = None
    ) -> ProviderError:
        body = decode_error_body(response.content)
        return make_error(
            response.status_code, response.headers, body,
            provider=self.name, model=model, secrets=self.secrets,
        )

    def _protocol_error(self, what: str, model: str | None, response: httpx.Response) -> ProviderError:
        message = with_notes(what, [request_id_note(response.headers, ("x-request-id",))])
        return self._protocol(message, model, response.status_code)


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
