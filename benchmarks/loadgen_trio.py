"""Closed-loop load generator on Trio: ``concurrency`` tasks each send requests back to back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._stats import CallOutcome, LoadWindow, Recorder

Call = Callable[[], Awaitable[CallOutcome]]


async def run_load(
    call: Call, concurrency: int, window: LoadWindow, on_window: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Drive ``call`` from ``concurrency`` tasks through ``window``; return the recorder's summary.

    ``call`` reports wrong answers as ``CallOutcome(ok=False)``; an exception it raises is counted as an
    error too (with its type), so one failing request does not end the run. ``on_window`` is called when
    the measurement window opens (after the warm-up). Once the window has closed, the requests still in
    flight are cancelled: they would not count, and draining hundreds of slow ones takes seconds.
    """
    recorder = Recorder(window, trio.current_time(), on_window=on_window)

    async def worker(scope: trio.CancelScope) -> None:
        while recorder.should_continue(trio.current_time()):
            started = trio.current_time()
            try:
                outcome = await call()
            except Exception as exc:  # counted, not fatal: the summary reports errors
                outcome = CallOutcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
            recorder.record(started, trio.current_time(), outcome)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, nursery.cancel_scope)
    return recorder.summary()
