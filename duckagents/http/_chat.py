"""``POST /v1/chat/completions``: one OpenAI request through the router, as JSON or as an SSE stream.

A raw ASGI endpoint (no per-request Starlette objects on the hot path). Each request runs in a nursery
beside a task that waits for the client to go away: when it does, the nursery is cancelled, which
cancels the router request and, through it, the upstream call. A streamed request answers with a
proper HTTP error until its first chunk arrives (so a 429 is a 429 with ``retry-after``, not a 200 whose
stream fails); after that a failure is an ``error`` event in the stream.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import trio

from ..config import HttpConfig
from ..errors import ErrorKind, ProviderError
from ..messages import Message, RequestOptions
from ..router import ResponseStream
from ..signals import ProviderResponse, new_id
from ..validation import InvalidJSON, InvalidValue, ValidationLimits, check_options
from ..validation import loads as load_json
from ._asgi import Receive, Scope, Send, header, send_error, send_response
from ._auth import Guard
from ._catalogue import ModelCatalogue
from ._errors import ApiError, from_provider_error
from ._json import BodyError, dumps, param_of
from ._wire import ChatRequest, ChunkWriter, completion_object, parse_chat_request

__all__ = ["ChatEndpoint", "ChatRouter", "InFlight"]

log = logging.getLogger("duckagents.http")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Reverse proxies (nginx) buffer responses by default, which would hold every chunk back.
    (b"x-accel-buffering", b"no"),
]


class ChatRouter(Protocol):
    """What the endpoint needs from the router (``RouterAgent``'s public API)."""

    async def complete(self, prompt: Any, *, model: str | None = None, **options: Any) -> ProviderResponse:
        """One completion."""
        ...

    def stream(self, prompt: Any, *, model: str | None = None, **options: Any) -> ResponseStream:
        """A streamed completion."""
        ...


class InFlight:
    """Chat requests in flight through the door: a limit, and a way to wait for none (draining)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        #: No new requests (the door drains or stops).
        self.closed = False
        self._idle = trio.Event()
        self._idle.set()

    def enter(self) -> bool:
        """Count one more request, unless at the limit."""
        if self.count >= self.limit:
            return False
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return True

    def leave(self) -> None:
        """One request ended."""
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()


class _ClientGone(Exception):
    pass


#: Most chunks sent in one write.
MAX_BATCH = 256


async def _take_ready(stream: ResponseStream, parts: list[bytes], writer: ChunkWriter) -> None:
    """Render into ``parts`` every chunk the stream has buffered already, never waiting: a buffered chunk
    comes without a checkpoint, and the scope's past deadline cancels the first checkpoint, which takes
    no chunk (so none is lost). One scope per burst, not per chunk: entering a cancel scope costs more
    than rendering a chunk. Raises like ``__anext__`` when the stream ended."""
    with trio.CancelScope(deadline=-math.inf):
        while len(parts) < MAX_BATCH:
            parts.append(writer.delta(await stream.__anext__()))


def _final(stream: ResponseStream) -> ProviderResponse:
    final = stream.response
    if final is None:  # the stream raises on failure, so this is a broken invariant of the router
        raise RuntimeError("the stream ended without a final response")
    return final


class ChatEndpoint:
    """The ASGI app of ``POST /v1/chat/completions`` (see the module docstring)."""

    def __init__(
        self,
        router: ChatRouter,
        config: HttpConfig,
        limits: ValidationLimits,
        guard: Guard,
        catalogue: ModelCatalogue,
        in_flight: InFlight,
    ) -> None:
        self._router = router
        self._config = config
        self._limits = limits
        self._guard = guard
        self._catalogue = catalogue
        self._in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal = self._guard.check(scope, "request")
            if self._in_flight.closed:
                raise ApiError(503, ErrorKind.SHUTDOWN.value, "the server is shutting down")
            body = await self._read_body(scope, receive)
            request = self._parse(body)
            if not self._in_flight.enter():
                raise ApiError(
                    503,
                    ErrorKind.OVERLOADED.value,
                    f"{self._in_flight.limit} requests in flight: try again shortly",
                    retry_after=1.0,
                )
        except _ClientGone:
            return
        except ApiError as error:
            await send_error(send, error, [(b"connection", b"close")] if error.status in (408, 413) else [])
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                await _Exchange(self._router, self._catalogue, request, send, principal.token).run()
                nursery.cancel_scope.cancel()
        finally:
            self._in_flight.leave()

    def _parse(self, body: bytes) -> ChatRequest:
        """The request in ``body``: decoded and bounded as at every door (``[validation]``), then checked
        against the OpenAI request shape; raises :class:`ApiError` 400 naming the field."""
        invalid = ErrorKind.INVALID_REQUEST.value
        try:
            request = parse_chat_request(load_json(body, self._limits))
            # The tools' schemas (depth, size, count), as the gateway checks them.
            check_options(RequestOptions(**request.options), self._limits)
        except InvalidJSON as exc:
            raise ApiError(400, invalid, f"the body is not valid JSON: {exc.problem}") from None
        except InvalidValue as exc:
            raise ApiError(400, invalid, exc.problem, param=param_of(exc.path)) from None
        except BodyError as exc:
            raise ApiError(400, invalid, exc.message, param=exc.param) from None
        return request

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self._limits.max_bytes
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self._config.body_timeout) as timer:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                piece = message.get("body", b"")
                size += len(piece)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(piece)
                if not message.get("more_body", False):
                    break
        if timer.cancelled_caught:
            raise ApiError(
                408,
                ErrorKind.TIMEOUT.value,
                f"the request body did not arrive within {self._config.body_timeout:g} s",
                code="request_timeout",
            )
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        ErrorKind.INVALID_REQUEST.value,
        f"the request body is larger than {limit} bytes",
        code="request_too_large",
    )


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


class _Exchange:
    """One chat request's way through the router and back to the client."""

    def __init__(
        self,
        router: ChatRouter,
        catalogue: ModelCatalogue,
        request: ChatRequest,
        send: Send,
        principal: str | None = None,
    ) -> None:
        self.router = router
        #: The name of the token the request came with (per-token budgets), never the token.
        self.principal = principal
        self.catalogue = catalogue
        self.request = request
        self.send = send
        self.request_id = new_id()
        #: The status line went out: from then on failures are stream events.
        self.started = False

    async def run(self) -> None:
        """Serve the request; a bug fails this request alone (500), with one logged traceback."""
        try:
            if self.request.stream:
                await self._stream()
            else:
                await self._complete()
        except Exception:
            log.exception("http: request %s failed unexpectedly", self.request_id)
            error = ApiError(500, "internal", f"internal error while serving request {self.request_id}")
            if self.started:
                await self._body(ChunkWriter.error(error.body()), more=False)
            else:
                await send_error(self.send, error, self._headers(None))

    def _headers(self, provider: str | None) -> list[tuple[bytes, bytes]]:
        out = [(b"x-request-id", self.request_id.encode())]
        if provider:
            out.append((b"x-duckagents-provider", provider.encode("utf-8", "replace")))
        return out

    def _failure(self, error: ProviderError) -> ApiError:
        model = self.request.model
        return from_provider_error(error, unknown_model=model if self.catalogue.unknown(model) else None)

    def _arguments(self) -> tuple[tuple[Message, ...], dict[str, Any]]:
        return self.request.messages, {
            "model": self.request.model,
            "request_id": self.request_id,
            "principal": self.principal,
            **self.request.options,
        }

    async def _complete(self) -> None:
        messages, arguments = self._arguments()
        try:
            response = await self.router.complete(messages, **arguments)
        except ProviderError as error:
            await send_error(self.send, self._failure(error), self._headers(error.provider))
            return
        body = dumps(completion_object(response))
        await send_response(self.send, 200, body, headers=self._headers(response.provider))

    async def _stream(self) -> None:
        messages, arguments = self._arguments()
        try:
            stream = self.router.stream(messages, **arguments)
            async with stream:
                await self._forward(stream)
        except ProviderError as error:  # refused before the first chunk (the stream itself says later ones)
            if not self.started:
                await send_error(self.send, self._failure(error), self._headers(error.provider))

    async def _forward(self, stream: ResponseStream) -> None:
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = None
        provider = first.provider if first is not None else None
        if provider is None and stream.response is not None:
            provider = stream.response.provider
        model = self.request.model or (self.catalogue.default_for(provider) if provider else None)
        if model is None and stream.response is not None:
            model = stream.response.model
        writer = ChunkWriter(self.request_id, model or "", self.request.include_usage)
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [*SSE_HEADERS, *self._headers(provider)],
        }
        await self.send(start)
        self.started = True
        if first is None:
            await self._body(writer.finish(_final(stream)), more=False)
            return
        chunk = first
        while True:
            # Every chunk already buffered goes out in one write: an upstream's burst (a whole SSE body
            # in one read) costs one socket write and one HTTP chunk, not one per delta.
            parts = [writer.delta(chunk)]
            try:
                await _take_ready(stream, parts, writer)
            except StopAsyncIteration:
                await self._body(b"".join(parts) + writer.finish(_final(stream)), more=False)
                return
            except ProviderError as error:
                await self._body(b"".join(parts) + ChunkWriter.error(self._failure(error).body()), more=False)
                return
            await self._body(b"".join(parts))
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                await self._body(writer.finish(_final(stream)), more=False)
                return
            except ProviderError as error:
                await self._body(ChunkWriter.error(self._failure(error).body()), more=False)
                return

    async def _body(self, data: bytes, *, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})
