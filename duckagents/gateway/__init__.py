"""The WebSocket gateway: outside clients watch the signal stream and submit requests (docs/gateway.md)."""

from ._auth import SCOPES, Gatekeeper, Principal, is_loopback_host, origin_allowed
from ._client import (
    ask,
    connect,
    control,
    fetch_status,
    format_event,
    format_signal,
    operate,
    pull,
    reload,
    watch,
)
from ._feed import FleetFeed
from ._outbox import SlowConsumer
from ._pages import Page
from ._protocol import PROTOCOL_VERSION, ErrorCode
from ._server import Gateway, GatewayStats, open_gateway, serve_gateway

__all__ = [
    "PROTOCOL_VERSION",
    "SCOPES",
    "ErrorCode",
    "FleetFeed",
    "Gatekeeper",
    "Gateway",
    "GatewayStats",
    "Page",
    "Principal",
    "SlowConsumer",
    "ask",
    "connect",
    "control",
    "fetch_status",
    "format_event",
    "format_signal",
    "is_loopback_host",
    "open_gateway",
    "operate",
    "origin_allowed",
    "pull",
    "reload",
    "serve_gateway",
    "watch",
]
