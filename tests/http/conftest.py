"""The HTTP front door (duckagents.http): the OpenAI-compatible API with the official SDK against a
``serve --http`` subprocess, health checks, metrics, auth, limits and hostile input over real loopback
HTTP. Helpers that start a door in-process are in support.py."""
