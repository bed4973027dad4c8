"""What every HTTP provider shares: its key and client, the request plumbing, error translation and the one
streaming loop.

:class:`HTTPProvider` is the base of the OpenAI, Anthropic, Ollama and TGI providers. Each of them is four
modules of one shape:

* ``_<p>.py``: the provider class, on this base (HTTP only);
* ``_<p>_models.py``: what each model supports (the model-family table and its request rules);
* ``_<p>_wire.py``: pure request encoding (``build_body``) and reply decoding (``parse_completion``,
  ``StreamAssembler``), no I/O; what does not fit the format raises :class:`~._base.WireFormatError`;
* ``_<p>_errors.py``: error replies (``error_kind``, ``make_error``) and rate-limit headers (``rate_limit``).

A provider implements :meth:`HTTPProvider._error` and :meth:`HTTPProvider._rate_limit` with its
``_<p>_errors`` functions; every stream it has goes through :meth:`HTTPProvider._stream`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any, ClassVar, Protocol, Self, TypeVar

import httpx
import trio

from ..errors import ErrorKind, ProviderError, Secret, StreamProtocolError, redact
from ..signals import ProviderRequest
from ._base import Completion, HealthProbe, InBandError, RateLimitInfo, StreamEvent, WireFormatError
from ._http import (
    decode_error_body,
    make_client,
    request_id_note,
    translate_transport_errors,
    with_notes,
)
from ._streams import SSEParser

#: Seconds to wait for the end of a streamed body after its terminal event.
DRAIN_TIMEOUT = 1.0

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


def as_secret(api_key: Secret | str | None) -> Secret | None:
    """``api_key`` as a :class:`Secret` (a plain string is wrapped), or None."""
    return Secret(api_key) if isinstance(api_key, str) else api_key


class StreamParser(Protocol):
    """Splits a streamed body into items (:class:`~._streams.SSEParser`, :class:`~._streams.NDJSONParser`)."""

    def feed(self, data: bytes) -> list[Any]: ...

    def close(self) -> list[Any]: ...


class StreamDecoder(Protocol[T_co]):
    """Turns the parsed items of one streamed reply into what the stream yields (a ``StreamAssembler``).

    :meth:`feed` raises :class:`~._base.WireFormatError` for an item that breaks the format and
    :class:`~._base.InBandError` for an error the upstream reports in the stream.
    """

    #: The terminal item was seen: the rest of the body is drained unread.
    done: bool

    def feed(self, item: Any) -> Sequence[T_co]:
        """What one parsed item yields (often nothing, or one delta)."""
        ...

    def finish(self, rate_limit: RateLimitInfo | None) -> T_co | None:
        """The last thing to yield once the body was read (a ``StreamEnd``), if any; raises
        :class:`~._base.WireFormatError` when the stream ended before its terminal item."""
        ...


class ChatFormat(Protocol):
    """What an API's ``_<p>_wire`` module offers for its chat endpoint's replies (each API builds its
    bodies with options of its own: :meth:`HTTPProvider._build`)."""

    def parse_completion(self, body: Any, model: str, rate_limit: RateLimitInfo | None = None) -> Completion:
        """The completion a JSON reply holds."""
        ...

    def StreamAssembler(self, model: str) -> StreamDecoder[StreamEvent]:
        """The decoder of one streamed reply."""
        ...


class ErrorFormat(Protocol):
    """What an API's ``_<p>_errors`` module offers: its error replies and its rate-limit headers."""

    def make_error(
        self,
        status: int | None,
        headers: Mapping[str, str],
        body: Any,
        *,
        provider: str,
        model: str | None,
        secrets: Iterable[Secret | str | None],
        now: float,
        request_id: str | None = None,
        partial: bool = False,
    ) -> ProviderError:
        """The error of an error reply (``status``) or of one reported in band (``status`` None)."""
        ...

    def rate_limit(self, headers: Mapping[str, str], now: float) -> RateLimitInfo | None:
        """What a reply's headers say about the limits, or None when they say nothing."""
        ...


class HTTPProvider:
    """Base of the providers that speak HTTP through one :class:`httpx.AsyncClient`.

    Holds the API key (sent as :meth:`_auth_headers`, never shown: see :attr:`secrets`), the client and
    the async context manager. Subclasses set ``name`` and ``errors`` (their ``_<p>_errors`` module).
    """

    name: str
    #: The API's error replies and rate-limit headers: its ``_<p>_errors`` module.
    errors: ClassVar[ErrorFormat]
    #: The API's chat endpoint (relative to ``base_url``) and its wire format: its ``_<p>_wire`` module.
    chat_path: ClassVar[str]
    chat: ClassVar[ChatFormat]
    #: The headers that ask for a streamed chat reply, when the API wants some.
    stream_headers: ClassVar[dict[str, str] | None] = None

    def __init__(
        self,
        base_url: str,
        api_key: Secret | str | None,
        default_model: str,
        transport: httpx.AsyncBaseTransport | None,
        timeout: httpx.Timeout | float | None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.default_model = default_model
        self._key = as_secret(api_key)
        sent = dict(headers or {})
        if self._key:
            sent.update(self._auth_headers(self._key.reveal()))
        self._client = make_client(base_url, headers=sent, transport=transport, timeout=timeout)

    def _auth_headers(self, key: str) -> dict[str, str]:
        """The headers that carry the API key; a bearer token unless the API says otherwise."""
        return {"authorization": f"Bearer {key}"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, default_model={self.default_model!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """The API key, if any, so error messages can be redacted."""
        return (self._key,) if self._key else ()

    async def aclose(self) -> None:
        """Release the HTTP client and its connections."""
        await self._client.aclose()

    # --- chat --------------------------------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        """One non-streaming chat completion; raises :class:`~duckagents.errors.ProviderError`."""
        model = request.model or self.default_model
        return await self._complete(
            self.chat_path, model, request.request_id, self._build(request, model, stream=False),
            self.chat.parse_completion,
        )  # fmt: skip

    def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream a chat completion: text and tool-call deltas, then exactly one ``StreamEnd``."""
        model = request.model or self.default_model
        return self._stream(
            self.chat_path,
            model,
            self._build(request, model, stream=True),
            self.chat.StreamAssembler(model),
            self._stream_parser(),
            headers=self.stream_headers,
            request_id=request.request_id,
        )

    def _build(self, request: ProviderRequest, model: str, *, stream: bool) -> Callable[[], dict[str, Any]]:
        """The chat body, built when sent: each API's ``build_body`` with the options it takes."""
        raise NotImplementedError

    def _stream_parser(self) -> StreamParser:
        """How a streamed chat reply is framed: server-sent events of JSON data by default."""
        return SSEParser(data_only=True)

    # --- errors ----------------------------------------------------------------------------------

    def _error(
        self,
        status: int | None,
        headers: Mapping[str, str],
        body: Any,
        model: str | None,
        *,
        request_id: str | None = None,
        partial: bool = False,
    ) -> ProviderError:
        """The error of an error reply (``status``) or of an error reported in band (``status`` None);
        ``body`` is parsed JSON or text, ``request_id`` ours: the API's ``_<p>_errors.make_error``."""
        return self.errors.make_error(
            status, headers, body, provider=self.name, model=model, secrets=self.secrets,
            now=time.time(), request_id=request_id, partial=partial,
        )

    def _rate_limit(self, headers: Mapping[str, str]) -> RateLimitInfo | None:
        """What a reply's headers say about the limits: the API's ``_<p>_errors.rate_limit``."""
        return self.errors.rate_limit(headers, time.time())

    def _http_error(
        self, response: httpx.Response, model: str | None, request_id: str | None = None
    ) -> ProviderError:
        """The error for an HTTP error reply whose body has been read."""
        body = decode_error_body(response.content)
        return self._error(response.status_code, response.headers, body, model, request_id=request_id)

    def _protocol(
        self, message: str, model: str | None, status: int | None = None, **context: Any
    ) -> StreamProtocolError:
        """A PROTOCOL error (the upstream broke its wire format), redacted."""
        return StreamProtocolError(
            redact(message, self.secrets), provider=self.name, model=model, status=status, **context
        )

    def _wire_error(
        self,
        exc: WireFormatError,
        model: str | None,
        *,
        response: httpx.Response | None = None,
        request_id: str | None = None,
        partial: bool = False,
    ) -> ProviderError:
        """The :class:`ProviderError` of a :class:`WireFormatError`: PROTOCOL for a reply that broke the
        format (with the reply's status and request id), else the kind of the request it refused."""
        if exc.kind is not ErrorKind.PROTOCOL:
            message = redact(str(exc), self.secrets)
            return ProviderError(exc.kind, message, provider=self.name, model=model, request_id=request_id)
        notes = [request_id_note(response.headers)] if response is not None else []
        return self._protocol(
            with_notes(f"malformed response: {exc}", notes),
            model,
            response.status_code if response is not None else None,
            request_id=request_id,
            partial=partial,
        )

    # --- requests --------------------------------------------------------------------------------

    def _encode(
        self, build: Callable[[], dict[str, Any]], model: str, request_id: str | None
    ) -> dict[str, Any]:
        """``build()``, a request body; what the wire format cannot express fails with its kind."""
        try:
            return build()
        except WireFormatError as exc:
            raise self._wire_error(exc, model, request_id=request_id) from None

    async def _send(
        self,
        method: str,
        path: str,
        model: str | None,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> httpx.Response:
        """One non-streaming request; transport failures and HTTP errors raise :class:`ProviderError`."""
        with translate_transport_errors(self.name, model, self.secrets):
            response = await self._client.request(method, path, json=body, params=params)
        if response.status_code >= 400:
            raise self._http_error(response, model, request_id)
        return response

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
        """:meth:`_send`, then the reply's JSON (not JSON: a PROTOCOL error)."""
        response = await self._send(method, path, model, body=body, params=params, request_id=request_id)
        try:
            return response.json(), response
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            failure = WireFormatError(f"{path} reply is not JSON")
            raise self._wire_error(failure, model, response=response, request_id=request_id) from None

    async def _decode(
        self,
        method: str,
        path: str,
        model: str | None,
        decode: Callable[[Any, httpx.Response], T],
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> T:
        """:meth:`_json`, then ``decode(reply, response)`` (a wire parser): a reply that does not fit the
        format is a PROTOCOL error, an error the upstream reported in a 200 one of its kind."""
        reply, response = await self._json(method, path, model, body, params=params, request_id=request_id)
        try:
            return decode(reply, response)
        except WireFormatError as exc:
            raise self._wire_error(exc, model, response=response, request_id=request_id) from None
        except InBandError as exc:
            raise self._error(None, response.headers, exc.body, model, request_id=request_id) from None

    async def _complete(
        self,
        path: str,
        model: str,
        request_id: str | None,
        build: Callable[[], dict[str, Any]],
        parse: Callable[[Any, str, RateLimitInfo | None], Completion],
    ) -> Completion:
        """POST the body ``build()`` makes and ``parse(reply, model, rate_limit)`` the JSON reply."""
        body = self._encode(build, model, request_id)
        return await self._decode(
            "POST",
            path,
            model,
            lambda reply, response: parse(reply, model, self._rate_limit(response.headers)),
            body,
            request_id=request_id,
        )

    @asynccontextmanager
    async def _post_stream(
        self,
        path: str,
        model: str | None,
        body: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """POST ``body`` and hand over the reply to stream its body; an HTTP error reply raises, and
        transport failures (also while the caller reads the body in the block) become ProviderErrors."""
        with translate_transport_errors(self.name, model, self.secrets):
            async with self._client.stream("POST", path, json=body, headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._http_error(response, model, request_id)
                yield response

    async def _stream(
        self,
        path: str,
        model: str,
        build: Callable[[], dict[str, Any]],
        decoder: StreamDecoder[T],
        parser: StreamParser,
        *,
        headers: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[T, None]:
        """The one streaming path: POST the body ``build()`` makes and yield what ``decoder`` makes of the
        items ``parser`` reads from the reply, then ``decoder.finish()``.

        One loop reads the network chunks, the end of the body (the parser's final flush) included, and
        hands each parsed item to the decoder, so nothing sits between the socket and the caller but this
        generator. After the terminal item the rest of the body is drained (bounded) so the connection
        goes back to the pool. Every failure is a :class:`ProviderError`, ``partial`` once something was
        yielded.
        """
        body = self._encode(build, model, request_id)
        delivered = False
        last: T | None = None
        try:
            post = self._post_stream(path, model, body, headers=headers, request_id=request_id)
            async with post as response:
                try:
                    async with aclosing(body_chunks(response)) as chunks:
                        next_chunk = chunks.__anext__
                        ended = False
                        while not ended:
                            try:
                                items = parser.feed(await next_chunk())
                            except StopAsyncIteration:
                                items, ended = parser.close(), True
                            for item in items:
                                for out in decoder.feed(item):
                                    delivered = True
                                    yield out
                                if decoder.done:
                                    break
                            if decoder.done:
                                if not ended:
                                    await drain(chunks)
                                break
                    last = decoder.finish(self._rate_limit(response.headers))
                except WireFormatError as exc:
                    raise self._wire_error(
                        exc, model, response=response, request_id=request_id, partial=delivered
                    ) from None
                except InBandError as exc:
                    raise self._error(
                        None, response.headers, exc.body, model, request_id=request_id, partial=delivered
                    ) from None
        except ProviderError as exc:
            # A failure after output reached the caller cannot be retried transparently.
            exc.partial = exc.partial or delivered
            raise
        if last is not None:
            yield last

    async def _probe(
        self, check: Callable[[], Awaitable[dict[str, str]]], *, report_status: bool = False
    ) -> HealthProbe:
        """Time ``check`` (which returns the detail of a healthy upstream) as a :class:`HealthProbe`.

        A :class:`ProviderError` is reported as ``ok=False`` with its kind and message (and its HTTP
        status with ``report_status``), never raised.
        """
        started = trio.current_time()
        try:
            detail = await check()
        except ProviderError as exc:
            detail = {"kind": exc.kind.value, "error": exc.message}
            if report_status and exc.status is not None:
                detail["status"] = str(exc.status)
            return HealthProbe(ok=False, latency=trio.current_time() - started, detail=detail)
        return HealthProbe(ok=True, latency=trio.current_time() - started, detail=detail)


def body_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The streamed body's bytes as they arrive: ``aiter_raw`` when the body has no content-encoding
    (it saves httpx's decoding generator layer per chunk), else the decoded ``aiter_bytes``."""
    encoding = response.headers.get("content-encoding")
    if response.is_stream_consumed or (encoding and encoding.strip().lower() != "identity"):
        return response.aiter_bytes()  # type: ignore[return-value]  # an async generator in httpx
    return response.aiter_raw()  # type: ignore[return-value]


async def drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows a stream's terminal item, normally just the end of the body, so the connection
    goes back to the pool (abandoning it costs a new connection per stream). Bounded in time; a failure
    here is ignored, since the answer is already complete."""
    with trio.move_on_after(DRAIN_TIMEOUT):
        try:
            async for _ in chunks:
                pass
        except (httpx.TransportError, httpx.StreamError):
            pass
