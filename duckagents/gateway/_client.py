"""The gateway's client side: ``duckagents watch`` prints the live signal stream of a running gateway,
``duckagents ask --url`` submits a prompt through it, and the operator commands (``breaker``, ``drain`` /
``resume``, ``models load|unload|pull``, ``reload``) use its operator messages: :func:`fetch_status`,
:func:`control`, :func:`reload` and :func:`pull` send one each (:func:`operate` any).

:func:`watch` connects, subscribes with a filter and prints one line per signal: a compact human view by
default (:func:`format_signal`), or the CloudEvents JSON object per line for ``jq`` (``json_lines``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import socket
import sys
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, TextIO

import trio
import trio_websocket
from trio_websocket import WebSocketConnection

from ..codec import signal_from_dict
from ..errors import ConfigError, ControlError, GatewayError, GatewayUnreachable, Secret, redact
from ..signals import (
    ControlAction,
    FleetDegraded,
    FleetRejoined,
    ProgressEvent,
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    Signal,
    SupervisorEvent,
)
from ._protocol import CLOSE_GOING_AWAY, CLOSE_NORMAL, PROTOCOL_VERSION

SUMMARY_WIDTH = 72
CONNECT_TIMEOUT = 10.0
#: How long an operator message may take to be answered (a model load takes minutes).
OPERATION_TIMEOUT = 900.0


def _clip(text: str, width: int = SUMMARY_WIDTH) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _text(value: object) -> str:
    """An enum member's value, or the string itself (signals parsed from JSON may carry either)."""
    return str(getattr(value, "value", value))


def summarize(signal: Signal) -> str:
    """A short, type-specific description of a signal's payload."""
    data = signal.data
    if isinstance(data, ProviderChunk):
        return (
            json.dumps(data.delta, ensure_ascii=False)
            if data.delta or not data.tool_call
            else (f"tool_call[{data.tool_call.index}] {data.tool_call.name or ''}{data.tool_call.arguments}")
        )
    if isinstance(data, ProviderResponse):
        text = json.dumps(_clip(data.content, 40), ensure_ascii=False)
        return (
            f"{_text(data.finish_reason)} {data.usage.total_tokens} tok {data.latency * 1000:.0f} ms "
            f"model={data.model} {text}"
        )
    if isinstance(data, ProviderErrorData):
        status = f" HTTP {data.upstream_status}" if data.upstream_status else ""
        return f"{_text(data.kind)}{status}: {data.message}"
    if isinstance(data, ProviderRequest):
        last = data.messages[-1].text if data.messages else ""
        return f"model={data.model or '-'} attempt={data.attempt} {json.dumps(last, ensure_ascii=False)}"
    if isinstance(data, ProviderStatus):
        return f"health={data.health:.2f} breaker={data.breaker_state} reachable={data.reachable}"
    if isinstance(data, SupervisorEvent):
        return f"{data.supervisor}/{data.child} {data.event} {data.reason}".rstrip()
    if isinstance(data, ProgressEvent):
        done = f" {data.completed}/{data.total}" if data.total else ""
        return f"{data.task} {data.status}{done}"
    if isinstance(data, FleetDegraded):
        return f"replica {data.instance} degraded: local limits (1/{data.expected_replicas}); {data.reason}"
    if isinstance(data, FleetRejoined):
        lost = f", {data.dropped_signals} signal(s) not shared" if data.dropped_signals else ""
        return f"replica {data.instance} re-joined after {data.degraded_for:.1f} s{lost}"
    from ..codec import unstructure

    return json.dumps(unstructure(data), separators=(",", ":"), default=str)


def _clock(micros: int) -> str:
    return _dt.datetime.fromtimestamp(micros / 1e6, _dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def format_signal(signal: Signal) -> str:
    """One human line: UTC time, type, provider (``@replica`` in a fleet), request id, summary."""
    where = signal.provider or "-"
    if signal.instance is not None:
        where = f"{where}@{signal.instance}"
    return (
        f"{_clock(signal.time)} {signal.type:<20} {where:<10} "
        f"{signal.subject or '-':<12} {_clip(summarize(signal))}"
    )


def format_event(event: dict[str, Any]) -> str:
    """:func:`format_signal` for a CloudEvents object, tolerant of types this client does not know."""
    try:
        return format_signal(signal_from_dict(event))
    except ValueError:
        data = json.dumps(event.get("data"), separators=(",", ":"), default=str)
        return (
            f"{str(event.get('time', '-'))[11:23]:<12} {event.get('type', '?')!s:<20} "
            f"{event.get('provider') or '-'!s:<10} {event.get('subject') or '-'!s:<12} {_clip(data)}"
        )


def _public(url: str) -> str:
    """The URL without its query (which may carry ``?token=``), for error messages."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _why_unreachable(exc: BaseException, url: str, timeout: float | None = None) -> str:
    """Why a connection attempt failed, from the exception and what caused it: DNS, refused, timeout."""
    parts = urllib.parse.urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        seen.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)
    for cause in seen:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve host {parts.hostname!r} (DNS: {cause.strerror or cause})"
    for cause in seen:
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"connection refused: nothing listens on {where} (is `duckagents serve --gateway` running?)"
            )
    for cause in seen:
        if isinstance(cause, trio.TooSlowError | trio_websocket.ConnectionTimeout):
            seconds = CONNECT_TIMEOUT if timeout is None else timeout
            return f"timed out after {seconds:g} s: {where} did not complete a WebSocket handshake"
    for cause in seen:
        if isinstance(cause, OSError):
            return f"{where}: {cause.strerror or cause}"
    return f"{where}: the WebSocket handshake failed ({type(exc).__name__}: {exc or 'no reason given'})"


@asynccontextmanager
async def connect(
    url: str, token: str | Secret | None = None, *, connect_timeout: float | None = None
) -> AsyncIterator[WebSocketConnection]:
    """Open a WebSocket to the gateway at ``url``; refusals and network failures become
    :class:`~duckagents.errors.GatewayUnreachable` with a clear, token-free message saying why (HTTP 401,
    connection refused, DNS, timeout)."""
    secret = token.reveal() if isinstance(token, Secret) else token
    headers = [(b"Authorization", f"Bearer {secret}".encode())] if secret else []
    connected = False
    # trio-websocket's own connect_timeout does not end a handshake the server never answers (its
    # reader task keeps the connection's nursery open), so the handshake runs under this deadline.
    if connect_timeout is None:
        connect_timeout = CONNECT_TIMEOUT  # read now: tests shorten it
    handshake = trio.CancelScope(deadline=trio.current_time() + connect_timeout)
    try:
        with handshake:
            async with trio_websocket.open_websocket_url(
                url, extra_headers=headers, connect_timeout=connect_timeout
            ) as ws:
                connected = True
                handshake.deadline = math.inf
                yield ws
    except trio_websocket.ConnectionRejected as exc:
        if connected:
            raise
        hint = {
            401: " (missing or wrong token: set the variable --token-env names, default DUCKAGENTS_TOKEN)",
            403: " (origin not allowed)",
            503: " (gateway full or shutting down)",
        }
        if exc.status_code in hint:
            raise GatewayUnreachable(
                f"gateway at {_public(url)} refused the connection: "
                f"HTTP {exc.status_code}{hint[exc.status_code]}"
            ) from None
        raise GatewayUnreachable(
            f"{_public(url)} answered HTTP {exc.status_code} instead of a WebSocket handshake "
            "(is this a duckagents gateway? `duckagents serve --gateway` prints its URL)"
        ) from None
    except (trio_websocket.HandshakeError, OSError, trio.TooSlowError) as exc:
        if connected:
            raise
        message = redact(
            f"cannot connect to {_public(url)}: {_why_unreachable(exc, url, connect_timeout)}", [secret]
        )
        raise GatewayUnreachable(message) from None
    if handshake.cancelled_caught and not connected:
        raise GatewayUnreachable(
            f"cannot connect to {_public(url)}: {_why_unreachable(trio.TooSlowError(), url, connect_timeout)}"
        )


async def watch(
    url: str,
    *,
    token: str | Secret | None = None,
    types: Iterable[str] = (),
    providers: Iterable[str] = (),
    request_ids: Iterable[str] = (),
    json_lines: bool = False,
    out: TextIO | None = None,
    limit: int | None = None,
) -> int:
    """Print the live signals of the gateway at ``url`` until it closes or ``limit`` signals were printed.

    Returns the number of signals printed. Raises :class:`~duckagents.errors.GatewayError` when the
    gateway refuses the connection or the subscription, or closes with anything but 1000/1001.
    ``out`` defaults to the current ``sys.stdout``; in JSON mode a dropped-signals notice goes to stderr.
    """
    out = sys.stdout if out is None else out
    wanted = {"types": list(types), "providers": list(providers), "request_ids": list(request_ids)}
    subscribe = {
        "type": "subscribe",
        "id": "watch",
        "v": PROTOCOL_VERSION,
        "filter": {k: v for k, v in wanted.items() if v},
    }
    printed = 0
    try:
        async with connect(url, token) as ws:
            await ws.send_message(json.dumps(subscribe, allow_nan=False))
            while limit is None or printed < limit:
                frame = json.loads(await ws.get_message())
                kind = frame.get("type")
                if kind == "signal":
                    event = frame["event"]
                    line = json.dumps(event, separators=(",", ":")) if json_lines else format_event(event)
                    out.write(line + "\n")
                    out.flush()
                    printed += 1
                elif kind == "dropped":
                    notice = f"!! {frame['count']} signal(s) dropped: this client reads too slowly\n"
                    (sys.stderr if json_lines else out).write(notice)
                elif kind == "error":
                    raise GatewayError(
                        f"gateway refused the subscription: {frame.get('code')}: {frame.get('message')}"
                    )
                elif kind == "hello" and frame.get("v") != PROTOCOL_VERSION:
                    raise GatewayError(
                        f"gateway speaks protocol v{frame.get('v')}, this client v{PROTOCOL_VERSION}"
                    )
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason
        if reason is None or reason.code in (CLOSE_NORMAL, CLOSE_GOING_AWAY):
            return printed
        raise GatewayError(
            f"gateway closed the connection: {reason.code} {reason.reason or reason.name}"
        ) from None
    return printed


#: Signals an ``ask(..., attempts=[...])`` holds while it does not know its request id yet.
ATTEMPT_BUFFER = 4096
_ATTEMPT_TYPES = ("provider_request", "provider_response", "provider_error")


async def ask(
    url: str,
    prompt: str,
    *,
    token: str | Secret | None = None,
    model: str | None = None,
    request_timeout: float | None = None,
    options: dict[str, Any] | None = None,
    out: TextIO | None = None,
    attempts: list[Signal] | None = None,
) -> ProviderResponse:
    """Submit one prompt through the gateway at ``url``, write the streamed answer to ``out`` as it
    arrives, and return the final response; a failed request raises its
    :class:`~duckagents.errors.ProviderError`.

    With ``attempts`` (a list), the client also subscribes to the attempt-level signals and appends those
    of this request (subject ``<request id>#<k>``: each attempt's ``provider_request`` and terminal) to
    it, complete when ``ask`` returns or raises the request's error (the ``ping`` barrier guarantees it).
    """
    out = sys.stdout if out is None else out
    message: dict[str, Any] = {
        "type": "request",
        "id": "ask",
        "v": PROTOCOL_VERSION,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"stream": True, **(options or {})},
    }
    if model is not None:
        message["model"] = model
    if request_timeout is not None:  # the server-side deadline of the request, in seconds
        message["timeout"] = request_timeout
    seen: deque[Signal] = deque(maxlen=ATTEMPT_BUFFER)
    request_id: str | None = None
    final: ProviderResponse | ProviderErrorData | None = None

    def keep(signal: Signal) -> None:
        if request_id is None:
            seen.append(signal)  # before the ack: it may be ours
        elif attempts is not None and (signal.subject or "").startswith(request_id + "#"):
            attempts.append(signal)

    try:
        async with connect(url, token) as ws:
            if attempts is not None:
                subscribe = {"type": "subscribe", "id": "ask-attempts", "v": PROTOCOL_VERSION,
                             "filter": {"types": list(_ATTEMPT_TYPES)}}
                await ws.send_message(json.dumps(subscribe))
            await ws.send_message(json.dumps(message, allow_nan=False))
            while True:
                frame = json.loads(await ws.get_message())
                kind = frame.get("type")
                if kind == "error":
                    what = "subscription" if frame.get("id") == "ask-attempts" else "request"
                    raise GatewayError(
                        f"gateway refused the {what}: {frame.get('code')}: {frame.get('message')}"
                    )
                if kind == "ack" and frame.get("id") == "ask":
                    request_id = str(frame.get("request_id"))
                    for signal in seen:
                        keep(signal)
                    seen.clear()
                elif kind == "ack" and frame.get("id") == "ask-barrier":
                    break
                elif kind == "signal" and frame.get("subscription") == "ask-attempts":
                    keep(signal_from_dict(frame["event"]))
                elif kind == "signal" and frame.get("request") == "ask":
                    data = signal_from_dict(frame["event"]).data
                    if isinstance(data, ProviderChunk):
                        out.write(data.delta)
                        out.flush()
                    elif isinstance(data, ProviderResponse | ProviderErrorData):
                        final = data
                        if attempts is None:
                            break
                        # Every attempt signal was published before the final: a ping is answered
                        # after all of them reached this connection.
                        await ws.send_message(json.dumps({"type": "ping", "id": "ask-barrier"}))
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason
        detail = "" if reason is None else f": {reason.code} {reason.reason or reason.name}"
        raise GatewayUnreachable(f"gateway closed the connection before the answer{detail}") from None
    if isinstance(final, ProviderErrorData):
        raise final.to_error()
    assert final is not None
    return final


# --- operator messages -----------------------------------------------------------------------------


async def operate(
    url: str, message: dict[str, Any], *, token: str | Secret | None = None, within: float = OPERATION_TIMEOUT
) -> dict[str, Any]:
    """Send one operator message (``status``, ``control``, ``reload``) and return its ``ack`` frame.

    An ``error`` frame raises: ``control_failed`` as :class:`~duckagents.errors.ControlError`,
    ``invalid_config`` as :class:`~duckagents.errors.ConfigError` (the server's message, as at its start),
    anything else (``forbidden``: the token lacks the ``admin`` scope...) as ``GatewayError``.
    """
    async with connect(url, token) as ws:
        await ws.send_message(json.dumps({"v": PROTOCOL_VERSION, "id": "op", **message}))
        with trio.move_on_after(within):
            return await _ack(ws, "op")
    raise GatewayError(f"gateway at {_public(url)} did not answer {message.get('type')!r} in {within:g} s")


async def _ack(ws: WebSocketConnection, msg_id: str) -> dict[str, Any]:
    try:
        while True:
            frame = json.loads(await ws.get_message())
            if frame.get("id") != msg_id:
                continue
            if frame.get("type") == "ack":
                return frame  # type: ignore[no-any-return]
            if frame.get("type") == "error":
                _raise_error_frame(frame)
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason
        detail = "" if reason is None else f": {reason.code} {reason.reason or reason.name}"
        raise GatewayUnreachable(f"gateway closed the connection before answering{detail}") from None


def _raise_error_frame(frame: dict[str, Any]) -> None:
    code, message = frame.get("code"), str(frame.get("message"))
    if code == "control_failed":
        raise ControlError(message)
    if code == "invalid_config":
        raise ConfigError(message)
    raise GatewayError(f"gateway refused: {code}: {message}")


async def fetch_status(url: str, *, token: str | Secret | None = None) -> dict[str, Any]:
    """The status document of the server at ``url`` (docs/gateway.md, *Status document*)."""
    status: dict[str, Any] = (await operate(url, {"type": "status"}, token=token))["status"]
    return status


async def control(
    url: str,
    provider: str,
    action: ControlAction | str,
    *,
    model: str | None = None,
    token: str | Secret | None = None,
) -> dict[str, Any]:
    """One operator control (``admin`` scope) of ``provider``'s agent; the ``control_reply`` data."""
    message: dict[str, Any] = {"type": "control", "action": ControlAction(action).value, "provider": provider}
    if model is not None:
        message["model"] = model
    reply: dict[str, Any] = (await operate(url, message, token=token))["reply"]
    return reply


async def reload(url: str, *, token: str | Secret | None = None) -> dict[str, Any]:
    """Make the server re-read its configuration file (``admin`` scope); what the reload did."""
    report: dict[str, Any] = (await operate(url, {"type": "reload"}, token=token))["report"]
    return report


async def pull(
    url: str,
    provider: str,
    model: str,
    *,
    token: str | Secret | None = None,
    out: TextIO | None = None,
    format_progress: Any = None,
) -> str:
    """Start pulling ``model`` into the local ``provider`` of the server at ``url`` and print its
    ``progress`` signals until the last one; returns its outcome (``success``), raises ``ControlError``
    when the pull failed. The pull runs in the server: leaving early (Ctrl-C) does not stop it."""
    out = sys.stdout if out is None else out
    show = format_progress or (lambda event: f"{event.provider}: {event.status}")
    subscribe = {"type": "subscribe", "id": "progress", "v": PROTOCOL_VERSION,
                 "filter": {"types": [ProgressEvent.TYPE], "providers": [provider]}}
    start = {"type": "control", "id": "op", "v": PROTOCOL_VERSION, "action": ControlAction.MODEL_PULL.value,
             "provider": provider, "model": model}
    async with connect(url, token) as ws:
        await ws.send_message(json.dumps(subscribe))
        await _ack(ws, "progress")  # subscribed before the pull starts: no progress slips past
        await ws.send_message(json.dumps(start))
        task: str | None = None
        early: list[ProgressEvent] = []  # progress that came before the ack said which task is ours
        try:
            while True:
                frame = json.loads(await ws.get_message())
                kind = frame.get("type")
                if kind == "error" and frame.get("id") == "op":
                    _raise_error_frame(frame)
                elif kind == "ack" and frame.get("id") == "op":
                    reply = frame["reply"]
                    task = str(reply.get("detail", {}).get("task", f"pull {model}"))
                    out.write(f"{provider}: {reply.get('message', 'pulling')}\n")
                    events, early = early, []
                elif kind == "signal" and frame.get("subscription") == "progress":
                    data = signal_from_dict(frame["event"]).data
                    if not isinstance(data, ProgressEvent):
                        continue
                    if task is None:
                        early.append(data)
                        continue
                    events = [data]
                else:
                    continue
                for event in events:
                    if event.task != task:
                        continue
                    out.write(show(event) + "\n")
                    out.flush()
                    if event.outcome == "error":
                        raise ControlError(f"{provider}: pulling {model} failed: {event.status}")
                    if event.outcome is not None:
                        return event.outcome
        except trio_websocket.ConnectionClosed:
            message = "gateway closed the connection; the pull goes on in the server"
            raise GatewayUnreachable(message) from None
