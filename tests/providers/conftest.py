"""Providers (duckagents.providers): wire formats, streams and error mapping, each over its loopback wire
server."""
