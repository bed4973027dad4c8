"""What every HTTP provider shares: its key and client, the context manager, the request and probe plumbing.

:class:`HTTPProvider` is the base of the OpenAI, Anthropic, Ollama and TGI providers; each adds its wire
format and says how an HTTP error reply becomes a :class:`ProviderError` (:meth:`HTTPProvider._http_error`).
:class:`ReplyStream` iterates the parsed items of a streamed reply with the same error translation.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any, Generic, Self, TypeVar

import httpx
import trio

from ..errors import ProviderError, Secret, StreamProtocolError, redact
from ._base import HealthProbe
from ._http import make_client, translate_transport_errors
from ._streams import StreamFormatError

#: Seconds to wait for the end of a streamed body after its terminal event.
DRAIN_TIMEOUT = 1.0

T = TypeVar("T")


def as_secret(api_key: Secret | str | None) -> Secret | None:
    """``api_key`` as a :class:`Secret` (a plain string is wrapped), or None."""
    return Secret(api_key) if isinstance(api_key, str) else api_key


class HTTPProvider:
    """Base of the providers that speak HTTP through one :class:`httpx.AsyncClient`.

    Holds the API key (sent as :meth:`_auth_headers`, never shown: see :attr:`secrets`), the client and
    the async context manager. Subclasses set ``name`` and implement :meth:`_http_error`.
    """

    name: str

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

    # --- errors ----------------------------------------------------------------------------------

    def _http_error(
        self, response: httpx.Response, model: str | None, request_id: str | None = None
    ) -> ProviderError:
        """The error for an HTTP error reply whose body has been read; ``request_id`` is ours."""
        raise NotImplementedError

    def _protocol(
        self, message: str, model: str | None, status: int | None = None, **context: Any
    ) -> StreamProtocolError:
        """A PROTOCOL error (the upstream broke its wire format), redacted."""
        return StreamProtocolError(
            redact(message, self.secrets), provider=self.name, model=model, status=status, **context
        )

    # --- requests --------------------------------------------------------------------------------

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

    async def _json(
        self, method: str, path: str, model: str | None, body: Any = None
    ) -> tuple[Any, httpx.Response]:
        """:meth:`_send`, then the reply's JSON (not JSON: a PROTOCOL error)."""
        response = await self._send(method, path, model, body=body)
        try:
            return response.json(), response
        except ValueError:
            raise self._protocol(f"{path} reply is not JSON", model, response.status_code) from None

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


#: Turns a streamed reply into its items; raises for in-band errors, ``StreamFormatError`` for bad bytes.
Decoder = Callable[[httpx.Response, str], AsyncGenerator[T, None]]


class ReplyStream(Generic[T]):
    """POST ``body`` to ``path`` and iterate the items ``decode`` reads from the streamed reply.

    Every failure (HTTP, transport, format, in-band error) is a :class:`ProviderError`. Use it with
    ``aclosing``; :attr:`headers` are the reply's once it started.
    """

    def __init__(
        self, provider: HTTPProvider, path: str, body: dict[str, Any], model: str, decode: Decoder[T]
    ) -> None:
        self.headers = httpx.Headers()
        self._gen = self._items(provider, path, body, model, decode)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await self._gen.__anext__()

    async def drain(self) -> None:
        """Read what follows the terminal item (normally just the end of the body), so the connection
        goes back to the pool and no generator of the chain is abandoned half-way. Bounded in time; a
        failure here is ignored since the answer is already complete."""
        with trio.move_on_after(DRAIN_TIMEOUT):
            try:
                async for _ in self:
                    pass
            except ProviderError:
                pass

    async def aclose(self) -> None:
        """Close the reply (and its connection) if still open."""
        await self._gen.aclose()

    async def _items(
        self, provider: HTTPProvider, path: str, body: dict[str, Any], model: str, decode: Decoder[T]
    ) -> AsyncGenerator[T, None]:
        async with provider._post_stream(path, model, body) as response:
            self.headers = response.headers
            # Closed explicitly: callers stop at the terminal item and Trio warns about async generators
            # left to the garbage collector.
            try:
                async with aclosing(decode(response, model)) as items:
                    async for item in items:
                        yield item
            except StreamFormatError as exc:
                raise provider._protocol(f"malformed stream: {exc}", model) from None
