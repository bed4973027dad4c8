"""A wire server on its own thread, for synchronous clients (the official SDKs) in ordinary tests.

The server runs in its own Trio loop on a daemon thread; the test thread talks to it over real loopback
HTTP and reaches into its state only through :meth:`ThreadedServer.call`, since that state is not
thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from ._common import WireServer, serve

S = TypeVar("S", bound=WireServer)
T = TypeVar("T")

#: Seconds to wait for the thread to start serving, and to end after ``__exit__``.
THREAD_TIMEOUT = 30.0


class ThreadedServer(Generic[S]):
    """Runs ``server`` on 127.0.0.1 in a Trio loop on a daemon thread while the ``with`` block lasts."""

    def __init__(self, server: S) -> None:
        self.server = server
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        name = f"{type(server).__name__}-loopback"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return self.server.url

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` inside the server's Trio loop (thread-safe access to its state)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def __enter__(self) -> ThreadedServer[S]:
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT) or self._error is not None or self._stop is None:
            raise RuntimeError(f"loopback server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._stop is not None
        self.call(self._stop.set)
        self._thread.join(THREAD_TIMEOUT)
        if self._error is not None:
            raise self._error
        if self._thread.is_alive():
            raise RuntimeError("loopback server thread did not stop")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except Exception as exc:  # reported to the test thread, which re-raises it
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        async with serve(self.server):
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()
