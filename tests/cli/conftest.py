"""The ``duckagents`` command (duckagents.cli), run as real subprocesses: real sockets for serve, watch,
ask --url and status --url. Helpers that run the command and a server are in support.py."""
