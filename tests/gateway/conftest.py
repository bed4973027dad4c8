"""The WebSocket gateway (duckagents.gateway): protocol, auth, fan-out, slow consumers and load, over real
loopback WebSocket connections. Helpers that start a gateway are in support.py."""
