"""Shared by every test folder: each folder mirrors one layer of the package (tests/router/ tests
duckagents.router, ...); tests that exercise several layers together live here at the top (e2e, load, CLI,
config, codec, README)."""
