"""What every actor of the tree shares at run time: :class:`Actor`.

The router and each provider agent are actors: a supervisor runs them, each runs its tasks in one nursery,
and an unexpected exception in any of those tasks is a crash of the whole actor (the supervisor restarts
it). The bookkeeping for that lives here once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

__all__ = ["Actor"]


class Actor:
    """The run-time core of an actor: the nursery its tasks run in, a crash guard around each of them, and
    whether it is running or crashing.

    A subclass's ``run`` serves inside ``async with self._serving() as nursery:`` and starts its tasks
    with :meth:`_spawn`; a task that raises an unexpected exception marks the actor as crashing (so the
    other tasks, now cancelled, know they are not being shut down politely), calls :meth:`_on_crash`, and
    propagates, which ends ``run`` with that exception.
    """

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._crashed = False

    @property
    def running(self) -> bool:
        """True while the actor serves (between entering and leaving :meth:`_serving`)."""
        return self._nursery is not None

    @property
    def crashed(self) -> bool:
        """True once one of the actor's tasks failed, until the actor serves again."""
        return self._crashed

    def _on_crash(self) -> None:
        """Called once per crashing task, before its exception propagates. Base: nothing."""

    @asynccontextmanager
    async def _serving(self) -> AsyncIterator[trio.Nursery]:
        """The nursery of one run of the actor; the actor is :attr:`running` inside the block."""
        if self._nursery is not None:
            raise RuntimeError(f"{self!r} is already running")
        self._crashed = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                yield nursery
        finally:
            self._nursery = None

    async def _guard(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as one of the actor's tasks: an unexpected exception is the actor's crash."""
        try:
            await fn(*args)
        except Exception:
            self._crashed = True
            self._on_crash()
            raise

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the actor's nursery, under the crash guard. Raises ``RuntimeError`` when
        the actor is not running."""
        if self._nursery is None:
            raise RuntimeError(f"{self!r} is not running")
        self._nursery.start_soon(self._guard, fn, *args)

    def _crash(self, exc: Exception) -> None:
        """Crash the actor with ``exc`` (a bug met in a task that is not the actor's own, e.g. a caller's),
        as if one of its tasks had raised it."""
        if self._nursery is not None:
            self._nursery.start_soon(self._guard, _reraise, exc)


async def _reraise(exc: Exception) -> None:
    raise exc
