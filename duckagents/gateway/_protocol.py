"""The gateway's wire protocol: client messages, parsed strictly (server frames: :mod:`.frames`).

docs/gateway.md is the reference for client authors; this module and :mod:`.frames` implement it. Every
client message is a JSON object with a ``type`` and an ``id`` (string or integer, echoed back); the server
answers each one with an ``ack`` or an ``error`` frame, and streams signals in ``signal`` frames that
carry the CloudEvents envelope of :mod:`duckagents.codec`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..bus import SignalFilter
from ..codec import converter, describe_error, parse_stream_id
from ..errors import GatewayError
from ..messages import Message, RequestOptions
from ..signals import ControlAction
from ..validation import (
    DEFAULT_LIMITS,
    InvalidJSON,
    InvalidValue,
    ValidationLimits,
    check,
    check_object,
    check_options,
    loads,
)
from ._frames import (
    PROTOCOL_VERSION,
    ErrorCode,
    MessageId,
    ack_frame,
    dropped_frame,
    error_frame,
    hello_frame,
    signal_prefix,
)

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_UNSUPPORTED_DATA",
    "PROTOCOL_VERSION",
    "Cancel",
    "ClientMessage",
    "Control",
    "ErrorCode",
    "MessageId",
    "Ping",
    "ProtocolError",
    "Reload",
    "StatusQuery",
    "Submit",
    "Subscribe",
    "Unsubscribe",
    "ack_frame",
    "dropped_frame",
    "error_frame",
    "hello_frame",
    "parse_client_message",
    "signal_prefix",
]

#: WebSocket close codes the gateway uses (RFC 6455 section 7.4, plus one private-use code).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SLOW_CONSUMER = 4008

MAX_ID_LENGTH = 128
MAX_FILTER_VALUES = 256
MAX_NAME_LENGTH = 256
MAX_TIMEOUT = 24 * 3600.0
# JavaScript clients number their messages; ids beyond 2**53 would not survive their JSON round trip.
MAX_INT_ID = 2**53 - 1


class ProtocolError(GatewayError):
    """A client message was refused; becomes an ``error`` frame (the connection stays open)."""

    def __init__(self, code: ErrorCode, message: str, msg_id: MessageId | None = None, **extra: Any) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.msg_id = msg_id
        self.extra = extra

    def frame(self) -> str:
        """The ``error`` frame for this refusal."""
        return error_frame(self.code, self.message, self.msg_id, **self.extra)


# --- client messages -----------------------------------------------------------------------------


@attrs.frozen
class Subscribe:
    """Start streaming the signals matching ``filter``; the message id names the subscription.

    ``since`` (fleet gateways): the CloudEvents id of the last signal the client saw; the subscription
    first replays what followed it in the fleet's stream, then goes live.
    """

    id: MessageId
    filter: SignalFilter
    since: str | None = None


@attrs.frozen
class Unsubscribe:
    """Stop the subscription named ``subscription``."""

    id: MessageId
    subscription: MessageId


@attrs.frozen
class Submit:
    """Submit a provider request (client message type ``request``)."""

    id: MessageId
    messages: tuple[Message, ...]
    model: str | None = None
    options: RequestOptions = RequestOptions(stream=True)
    timeout: float | None = None
    required_features: tuple[str, ...] = ()


@attrs.frozen
class Cancel:
    """Cancel this connection's in-flight request ``request_id``."""

    id: MessageId
    request_id: str


@attrs.frozen
class Ping:
    """A liveness check; acknowledged like every message."""

    id: MessageId


@attrs.frozen
class StatusQuery:
    """Ask for the status document of the running tree (client message type ``status``)."""

    id: MessageId


@attrs.frozen
class Control:
    """An operator control for one agent (client message type ``control``; ``admin`` scope)."""

    id: MessageId
    action: ControlAction
    provider: str
    model: str | None = None


@attrs.frozen
class Reload:
    """Re-read the server's configuration file and apply it (``admin`` scope)."""

    id: MessageId


ClientMessage = Subscribe | Unsubscribe | Submit | Cancel | Ping | StatusQuery | Control | Reload

# Allowed top-level keys per message type (``type``, ``id`` and ``v`` are always allowed).
_FIELDS: dict[str, frozenset[str]] = {
    "subscribe": frozenset({"filter", "since"}),
    "unsubscribe": frozenset({"subscription"}),
    "request": frozenset({"messages", "model", "options", "timeout", "required_features"}),
    "cancel": frozenset({"request_id"}),
    "ping": frozenset(),
    "status": frozenset(),
    "control": frozenset({"action", "provider", "model"}),
    "reload": frozenset(),
}
#: The ``action`` values of a ``control`` message (a reload is its own message).
CONTROL_ACTIONS = tuple(a.value for a in ControlAction if a is not ControlAction.RELOAD)
_FILTER_KEYS = ("types", "providers", "request_ids")


def parse_client_message(text: str, limits: ValidationLimits = DEFAULT_LIMITS) -> ClientMessage:
    """Parse one text frame; raises :class:`ProtocolError` saying exactly what is wrong.

    Every value is checked first (:func:`duckagents.validation.loads`: valid Unicode, finite numbers,
    bounded integers, depth and size): a bad one is ``invalid_request``, naming its path. Then the shape:
    ``invalid_message``. A request's options are checked against the rules of a request (tool schemas,
    number ranges; :func:`duckagents.validation.check_options`): ``invalid_request`` again.
    """
    try:
        obj = loads(text, limits)
    except InvalidJSON as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"the frame is not valid JSON: {exc.problem}") from None
    except InvalidValue as exc:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, str(exc), _salvage_id(exc.document), path=exc.path
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a message must be a JSON object")
    msg_id = _message_id(obj.get("id"), "id", None)
    version = obj.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {_short(version)} is not supported; this server speaks v{PROTOCOL_VERSION}",
            msg_id,
        )
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {_short(kind)}; expected one of {', '.join(_FIELDS)}",
            msg_id,
        )
    unknown = set(obj) - _FIELDS[kind] - {"type", "id", "v"}
    if unknown:
        shown = ", ".join(_short(k) for k in sorted(unknown)[:5])
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"unknown field(s) for {kind!r}: {shown}", msg_id)
    try:
        message = _PARSERS[kind](obj, msg_id)
    except InvalidValue as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc), msg_id) from None
    if isinstance(message, Submit):
        # The messages hold only values loads() has checked (more deeply nested in the frame than in
        # the request, so its depth bound is the stricter one): walking them again would find nothing.
        try:
            check_options(message.options, limits)
        except InvalidValue as exc:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, str(exc), msg_id, path=exc.path) from None
    return message


def _salvage_id(document: Any) -> MessageId | None:
    """The message id of a refused message, when it has a usable one (the answer can then name it)."""
    if isinstance(document, dict):
        try:
            return _message_id(document.get("id"), "id", None)
        except ProtocolError:
            return None
    return None


def _message_id(value: Any, field: str, msg_id: MessageId | None) -> MessageId:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT_ID:
        return value
    raise ProtocolError(
        ErrorCode.INVALID_MESSAGE,
        f"{field!r} must be a non-empty string (at most {MAX_ID_LENGTH} characters) or an integer",
        msg_id,
    )


def _short(value: Any, limit: int = 40) -> str:
    """A bounded repr, so an error frame never echoes a huge input back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(value: Any, path: str) -> frozenset[str] | None:
    if value is None:
        return None
    check(value, tuple[str, ...], path)
    if len(value) > MAX_FILTER_VALUES:
        raise InvalidValue(path, f"at most {MAX_FILTER_VALUES} values")
    if any(len(v) > MAX_NAME_LENGTH for v in value):
        raise InvalidValue(path, f"values must be at most {MAX_NAME_LENGTH} characters")
    return frozenset(value)


def _parse_subscribe(obj: dict[str, Any], msg_id: MessageId) -> Subscribe:
    raw = obj.get("filter", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidValue("$.filter", "must be an object with optional types, providers, request_ids")
    unknown = set(raw) - set(_FILTER_KEYS)
    if unknown:
        shown = ", ".join(_short(k) for k in sorted(unknown)[:5])
        raise InvalidValue("$.filter", f"unknown field(s) {shown}; allowed: {', '.join(_FILTER_KEYS)}")
    values = {key: _names(raw.get(key), f"$.filter.{key}") for key in _FILTER_KEYS}
    since = obj.get("since")
    if since is not None:
        check(since, str, "$.since")
        try:
            parse_stream_id(since)
        except ValueError:
            raise InvalidValue(
                "$.since", "must be the id of a signal from a fleet gateway (<milliseconds>-<sequence>)"
            ) from None
    return Subscribe(msg_id, SignalFilter(**values), since)


def _parse_unsubscribe(obj: dict[str, Any], msg_id: MessageId) -> Unsubscribe:
    return Unsubscribe(msg_id, _message_id(obj.get("subscription"), "subscription", msg_id))


def _parse_cancel(obj: dict[str, Any], msg_id: MessageId) -> Cancel:
    request_id = obj.get("request_id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_NAME_LENGTH:
        raise InvalidValue("$.request_id", "must be the request_id string from the request's ack")
    return Cancel(msg_id, request_id)


def _parse_ping(obj: dict[str, Any], msg_id: MessageId) -> Ping:
    return Ping(msg_id)


def _parse_status(obj: dict[str, Any], msg_id: MessageId) -> StatusQuery:
    return StatusQuery(msg_id)


def _parse_reload(obj: dict[str, Any], msg_id: MessageId) -> Reload:
    return Reload(msg_id)


def _parse_control(obj: dict[str, Any], msg_id: MessageId) -> Control:
    action = obj.get("action")
    if not isinstance(action, str) or action not in CONTROL_ACTIONS:
        raise InvalidValue("$.action", f"must be one of {', '.join(CONTROL_ACTIONS)}")
    provider = obj.get("provider")
    if not isinstance(provider, str) or not provider or len(provider) > MAX_NAME_LENGTH:
        raise InvalidValue("$.provider", f"must be a provider name (1 to {MAX_NAME_LENGTH} characters)")
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model or len(model) > MAX_NAME_LENGTH):
        raise InvalidValue("$.model", f"must be a model name (1 to {MAX_NAME_LENGTH} characters) or null")
    return Control(msg_id, ControlAction(action), provider, model)


def _parse_submit(obj: dict[str, Any], msg_id: MessageId) -> Submit:
    raw_messages = obj.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidValue("$.messages", "must be a non-empty array of messages")
    messages = []
    for index, raw in enumerate(raw_messages):
        path = f"$.messages[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("content"), str):
            # Shorthand for clients: "content": "text" means one text part.
            raw = {**raw, "content": [{"type": "text", "text": raw["content"]}]}
        check_object(raw, Message, path)
        messages.append(_structure(raw, Message, path))
    model = obj.get("model")
    if model is not None:
        check(model, str, "$.model")
    raw_options = obj.get("options", {})
    check_object(raw_options, RequestOptions, "$.options")
    # The gateway streams by default: the point of a WebSocket is to see the chunks as they come.
    options = _structure({"stream": True, **raw_options}, RequestOptions, "$.options")
    timeout = obj.get("timeout")
    if timeout is not None:
        check(timeout, float, "$.timeout")
        if not 0 < timeout <= MAX_TIMEOUT:
            raise InvalidValue("$.timeout", f"must be > 0 and <= {MAX_TIMEOUT:g} seconds")
    features = _names(obj.get("required_features"), "$.required_features") or frozenset()
    return Submit(
        msg_id,
        tuple(messages),
        model=model,
        options=options,
        timeout=None if timeout is None else float(timeout),
        required_features=tuple(sorted(features)),
    )


def _structure(value: Any, cls: type[Any], path: str) -> Any:
    try:
        return converter.structure(value, cls)
    except Exception as exc:  # shape was checked; what is left are value checks (an image without data)
        raise InvalidValue(path, describe_error(exc) or type(exc).__name__) from None


_PARSERS: dict[str, Callable[[dict[str, Any], MessageId], ClientMessage]] = {
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_unsubscribe,
    "request": _parse_submit,
    "cancel": _parse_cancel,
    "ping": _parse_ping,
    "status": _parse_status,
    "control": _parse_control,
    "reload": _parse_reload,
}
