"""Server frames of the gateway protocol (docs/gateway.md): JSON text, built here and only here."""

from __future__ import annotations

import enum
import json
from typing import Any

#: Version of the gateway protocol; sent in the hello frame, and accepted as ``"v"`` in client messages.
PROTOCOL_VERSION = 1

MessageId = str | int


class ErrorCode(str, enum.Enum):
    """The ``code`` of an ``error`` frame."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    FORBIDDEN = "forbidden"
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"
    UNKNOWN_REQUEST = "unknown_request"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    TOO_MANY_REQUESTS = "too_many_requests"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    CONTROL_FAILED = "control_failed"
    INVALID_CONFIG = "invalid_config"


def dumps(obj: dict[str, Any]) -> str:
    """Compact JSON, the encoding of every server frame (never NaN or Infinity: not JSON)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def hello_frame(
    connection: str, scopes: frozenset[str], limits: dict[str, Any], server: str, fleet: str | None = None
) -> str:
    """The first frame of every connection: protocol version, this connection's scopes and limits; a
    fleet gateway (``fleet``: its replica) adds ``resume`` (subscriptions take ``since``) and ``fleet``."""
    frame: dict[str, Any] = {
        "type": "hello",
        "v": PROTOCOL_VERSION,
        "server": server,
        "connection": connection,
        "scopes": sorted(scopes),
        "limits": limits,
    }
    if fleet is not None:
        frame.update(resume=True, fleet={"instance": fleet})
    return dumps(frame)


def ack_frame(msg_id: MessageId, **extra: Any) -> str:
    """Acknowledge the client message ``msg_id``."""
    return dumps({"type": "ack", "id": msg_id, **extra})


def error_frame(code: ErrorCode, message: str, msg_id: MessageId | None = None, **extra: Any) -> str:
    """Refuse a client message (``msg_id`` is null when the message had no usable id)."""
    return dumps({"type": "error", "id": msg_id, "code": code.value, "message": message, **extra})


def dropped_frame(count: int, total: int) -> str:
    """``count`` signals were lost here (slow consumer); ``total`` over the connection's life."""
    return dumps({"type": "dropped", "count": count, "total": total})


def signal_prefix(*, subscription: MessageId | None = None, request: MessageId | None = None) -> str:
    """The start of a ``signal`` frame up to its ``event``; append the event JSON and ``}``.

    Kept apart so that the event JSON of one signal is encoded once and shared by every connection.
    """
    head: dict[str, Any] = {"type": "signal"}
    if subscription is not None:
        head["subscription"] = subscription
    if request is not None:
        head["request"] = request
    return dumps(head)[:-1] + ',"event":'
