"""Closed-loop load generator on asyncio (for LiteLLM), the twin of :mod:`benchmarks.loadgen_trio`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ._stats import CallOutcome, LoadWindow, Recorder

Call = Callable[[], Awaitable[CallOutcome]]


async def run_load(call: Call, concurrency: int, window: LoadWindow) -> dict[str, Any]:
    """Drive ``call`` from ``concurrency`` tasks through ``window``; return the recorder's summary.

    As on Trio, the requests still in flight when the window closes are cancelled.
    """
    loop = asyncio.get_running_loop()
    recorder = Recorder(window, loop.time())
    tasks: list[asyncio.Task[None]] = []

    async def worker() -> None:
        while recorder.should_continue(loop.time()):
            started = loop.time()
            try:
                outcome = await call()
            except Exception as exc:  # counted, not fatal: the summary reports errors
                outcome = CallOutcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
            recorder.record(started, loop.time(), outcome)
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()

    async with asyncio.TaskGroup() as group:
        tasks.extend(group.create_task(worker()) for _ in range(concurrency))
    return recorder.summary()
