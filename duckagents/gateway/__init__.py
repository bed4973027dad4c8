"""The WebSocket gateway: outside clients watch the signal stream and submit requests (docs/gateway.md)."""

from ._client import ask, connect, format_signal, watch
from ._outbox import SlowConsumer
from ._protocol import PROTOCOL_VERSION, ErrorCode
from ._server import Gateway, GatewayStats, open_gateway, serve_gateway

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorCode",
    "Gateway",
    "GatewayStats",
    "SlowConsumer",
    "ask",
    "connect",
    "format_signal",
    "open_gateway",
    "serve_gateway",
    "watch",
]
