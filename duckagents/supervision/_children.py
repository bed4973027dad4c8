"""One supervised child at run time: its incarnations, the task that runs each, and their exit notices.

The supervisor (:mod:`._supervisor`) decides what to do about an exit; this module only runs a child's
``start`` function and reports how it ended, never propagating its exception.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import trio

from ._specs import ChildSpec

__all__ = ["Child", "ChildStatus", "ExitNotices", "Incarnation", "run_incarnation"]


@attrs.define(eq=False)
class Child:
    """A child of a supervisor: its spec and its current incarnation."""

    spec: ChildSpec
    current: Incarnation | None = None
    # Times of this child's restarts, for the backoff exponent; older than the period are ignored.
    restart_times: deque[float] = attrs.field(factory=lambda: deque(maxlen=64))


@attrs.define(eq=False)
class Incarnation:
    """One run of a child's ``start`` function."""

    child: Child
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    started: bool = False
    #: The supervisor is stopping it, so its exit is not a crash to act on.
    stopping: bool = False
    error: Exception | None = None


class ChildStatus:
    """The ``task_status`` a child gets: shields the child once it is up, so that cancelling the
    supervisor reaches the supervisor only, which then stops its children in order."""

    __slots__ = ("_incarnation", "_inner")

    def __init__(self, incarnation: Incarnation, inner: trio.TaskStatus[Any]) -> None:
        self._incarnation = incarnation
        self._inner = inner

    def started(self, value: Any = None) -> None:
        """Report the child up; the supervisor's ``start`` call returns."""
        self._incarnation.scope.shield = True
        self._incarnation.started = True
        self._inner.started(value)


class ExitNotices:
    """Incarnations that ended, in the order they ended, for the supervisor to act on.

    Unbounded in type but bounded in use: one notice per incarnation, and a child is started again only
    after the supervisor took its notice, so there are never more notices than children.
    """

    __slots__ = ("_queue", "_wakeup")

    def __init__(self) -> None:
        self._queue: deque[Incarnation] = deque()
        self._wakeup = trio.Event()

    def put(self, incarnation: Incarnation) -> None:
        """Queue the notice of an ended incarnation and wake the supervisor."""
        self._queue.append(incarnation)
        self._wakeup.set()

    async def get(self) -> Incarnation:
        """The oldest notice, waiting for one if none is queued."""
        while not self._queue:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        return self._queue.popleft()

    def clear(self) -> None:
        """Forget every queued notice (a new run starts from the current children)."""
        self._queue.clear()


async def run_incarnation(
    incarnation: Incarnation,
    notices: ExitNotices,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one incarnation in its own cancel scope; record its crash, if any, and post its exit notice."""
    spec = incarnation.child.spec
    try:
        with incarnation.scope:
            await spec.start(*spec.args, task_status=ChildStatus(incarnation, task_status))
    except Exception as exc:  # a crash: reported to the supervisor, never propagated
        incarnation.error = exc
    finally:
        incarnation.done.set()
        notices.put(incarnation)
    if not incarnation.started:  # ended before coming up: unblock the supervisor's start()
        task_status.started()
