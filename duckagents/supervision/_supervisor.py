"""Erlang/OTP-style supervision trees on a Trio nursery.

A :class:`Supervisor` starts its children in order, each in its own cancel scope inside its nursery, and
restarts them by their :class:`Restart` type and its :class:`Strategy`. More than
``Intensity.max_restarts`` restarts within ``Intensity.period`` seconds (Trio clock) make it terminate
every child and raise :class:`~duckagents.errors.SupervisorGaveUp`, which its parent sees as a crash of
the child that ran it; that is how trees nest. See ``docs/supervision.md``.

Once a child has called ``task_status.started()`` its scope is shielded: cancelling the supervisor does
not hit every child at once, but makes the supervisor stop them one by one in reverse start order.

Module layout: this module holds the restart policy (:class:`Supervisor`, :func:`open_supervisor`). The
specs, the running of one child and the event log live in private modules; import every public name from
here.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..bus import SignalBus
from ..errors import SupervisorGaveUp
from ..signals import SupervisorEvent
from ._children import Child, ExitNotices, Incarnation, run_incarnation
from ._events import EMIT_TIMEOUT as EMIT_TIMEOUT  # re-exported: documented public constants
from ._events import MAX_EVENTS as MAX_EVENTS
from ._events import EventLog, describe, format_crash
from ._specs import Backoff, ChildSpec, Intensity, Restart, Strategy

log = logging.getLogger("duckagents.supervision")

__all__ = [
    "Backoff",
    "ChildSpec",
    "Intensity",
    "Restart",
    "Strategy",
    "Supervisor",
    "open_supervisor",
]


class Supervisor:
    """Runs children and restarts them; see the module docstring and ``docs/supervision.md``."""

    def __init__(
        self,
        name: str,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: Intensity = Intensity(),
        backoff: Backoff = Backoff(),
        bus: SignalBus | None = None,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.intensity = intensity
        self.backoff = backoff
        self.bus = bus
        self._children: list[Child] = []
        for spec in children:
            self._check_new(spec)
            self._children.append(Child(spec))
        #: Restarts performed (a group restart counts once), over every run.
        self.restarts = 0
        self._log = EventLog(name)
        #: How many events of each kind happened, over every run.
        self.event_counts: Counter[str] = self._log.counts
        self._rng = random.Random()
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._exits = ExitNotices()
        self._restart_times: deque[float] = deque(maxlen=intensity.max_restarts + 1)
        self._gave_up: SupervisorGaveUp | None = None

    @property
    def children(self) -> list[str]:
        """Ids of the children, in start order."""
        return [c.spec.id for c in self._children]

    @property
    def running(self) -> list[str]:
        """Ids of the children whose task is alive, in start order."""
        return [c.spec.id for c in self._children if c.current is not None and not c.current.done.is_set()]

    @property
    def events(self) -> list[SupervisorEvent]:
        """The most recent events (at most :data:`MAX_EVENTS`), oldest first."""
        return self._log.events

    @property
    def lost_events(self) -> int:
        """Events that timed out waiting for room on the bus (after :data:`EMIT_TIMEOUT`)."""
        return self._log.lost

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children, report started, supervise until cancelled; then stop the children in
        reverse start order. Raises :class:`SupervisorGaveUp` when the restart intensity is exceeded."""
        if self._nursery is not None:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._exits.clear()
        self._restart_times = deque(maxlen=self.intensity.max_restarts + 1)
        self._gave_up = None
        self._closing = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    async with self._lock:
                        for child in list(self._children):
                            await self._start(child, "started")
                    task_status.started()
                    await self._supervise()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._shutdown()
        finally:
            self._nursery = None
            self._closing = False
        if self._gave_up is not None:
            raise self._gave_up

    async def add_child(self, spec: ChildSpec) -> None:
        """Add a child at the end of the start order; when running, start it and wait until it is up."""
        async with self._lock:
            if self._closing:
                raise RuntimeError(f"supervisor {self.name!r} is shutting down")
            self._check_new(spec)
            child = Child(spec)
            self._children.append(child)
            if self._nursery is not None:
                await self._start(child, "started")

    async def remove_child(self, child_id: str) -> None:
        """Stop a child (as at shutdown) and forget it. Raises ``KeyError`` for an unknown id."""
        async with self._lock:
            child = next((c for c in self._children if c.spec.id == child_id), None)
            if child is None:
                raise KeyError(f"supervisor {self.name!r} has no child {child_id!r}")
            try:
                await self._terminate(child)
            finally:  # also when the caller is cancelled: its scope is cancelled, the nursery awaits it
                self._children.remove(child)

    def _check_new(self, spec: ChildSpec) -> None:
        if any(c.spec.id == spec.id for c in self._children):
            raise ValueError(f"supervisor {self.name!r} already has a child {spec.id!r}")

    # --- starting and stopping children -------------------------------------------------------------

    async def _start(self, child: Child, event: str) -> None:
        """Start a new incarnation and wait until it is up (or failed to come up: an exit notice)."""
        assert self._nursery is not None
        incarnation = Incarnation(child)
        child.current = incarnation
        await self._nursery.start(run_incarnation, incarnation, self._exits)
        if incarnation.started:
            await self._emit(child.spec.id, event)

    async def _terminate(self, child: Child) -> None:
        """Cancel the child's scope and give it ``shutdown_timeout`` seconds to exit."""
        incarnation = child.current
        if incarnation is None or incarnation.stopping:
            return
        incarnation.stopping = True
        if incarnation.done.is_set():  # exited on its own; its notice is still queued: report it here
            if incarnation.error is not None:
                self._log_crash(child, incarnation.error)
                await self._emit(child.spec.id, "crashed", incarnation.error)
            return
        incarnation.scope.cancel()
        with trio.move_on_after(child.spec.shutdown_timeout):
            await incarnation.done.wait()
        # Trio cannot kill a task: one that overstays (shielding its cleanup) is reported and left to end.
        await self._emit(child.spec.id, "shutdown" if incarnation.done.is_set() else "killed")

    async def _shutdown(self) -> None:
        async with self._lock:
            self._closing = True
            for child in reversed(self._children):
                await self._terminate(child)

    # --- reacting to exits --------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while self._gave_up is None:
            incarnation = await self._exits.get()
            async with self._lock:
                await self._on_exit(incarnation)

    async def _on_exit(self, incarnation: Incarnation) -> None:
        child = incarnation.child
        if incarnation.stopping or child.current is not incarnation:
            return  # stopped by the supervisor, or already replaced
        incarnation.stopping = True  # handled here; later terminations must not report it again
        crashed = incarnation.error is not None
        if incarnation.error is not None:
            self._log_crash(child, incarnation.error)
        await self._emit(child.spec.id, "crashed" if crashed else "exited", incarnation.error)
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and not crashed):
            self._children.remove(child)
            return
        now = trio.current_time()
        self._restart_times.append(now)
        if len(self._restart_times) > self.intensity.max_restarts and (
            now - self._restart_times[0] <= self.intensity.period
        ):
            await self._give_up(child, incarnation.error)
            return
        self.restarts += 1
        group = self._restart_group(child)
        for other in reversed(group):
            if other is not child:
                await self._terminate(other)
        for other in group:
            if other is not child and other.spec.restart is Restart.TEMPORARY:
                self._children.remove(other)  # temporary children are never restarted
        group = [c for c in group if c in self._children]
        attempt = sum(1 for t in child.restart_times if now - t <= self.intensity.period)
        child.restart_times.append(now)
        delay = self.backoff.delay(attempt, self._rng)
        if delay > 0:
            await trio.sleep(delay)
        for other in group:
            await self._start(other, "restarted")

    def _restart_group(self, child: Child) -> list[Child]:
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        if self.strategy is Strategy.ONE_FOR_ALL:
            return list(self._children)
        return self._children[self._children.index(child) :]

    async def _give_up(self, child: Child, error: Exception | None) -> None:
        for other in reversed(self._children):
            await self._terminate(other)
        gave_up = SupervisorGaveUp(
            self.name, child.spec.id, self.intensity.max_restarts, self.intensity.period
        )
        gave_up.__cause__ = error  # the traceback of the give-up shows the crash that caused it
        log.error(
            "supervisor %s: %s; last crash: %s%s",
            self.name,
            gave_up,
            describe(error),
            "" if error is None else "\n" + format_crash(error),
        )
        await self._emit(child.spec.id, "gave_up", error)
        self._gave_up = gave_up

    def _log_crash(self, child: Child, error: Exception) -> None:
        if isinstance(error, SupervisorGaveUp):  # a nested supervisor, which logged the crash already
            log.error("supervisor %s: child %s crashed: %s", self.name, child.spec.id, error)
            return
        log.error(
            "supervisor %s: child %s crashed: %s\n%s", self.name, child.spec.id, describe(error),
            format_crash(error),
        )

    async def _emit(self, child: str, event: str, error: BaseException | None = None) -> None:
        await self._log.emit(self.bus, child, event, error, self.restarts)

    def __repr__(self) -> str:
        return (
            f"Supervisor({self.name!r}, strategy={self.strategy.value}, children={self.children}, "
            f"restarts={self.restarts})"
        )


@asynccontextmanager
async def open_supervisor(
    name: str, children: Iterable[ChildSpec] = (), **kwargs: Any
) -> AsyncIterator[Supervisor]:
    """Run a :class:`Supervisor` for the duration of the block; children are up on entry and stopped in
    reverse start order on exit. If it gives up, the block is cancelled and ``SupervisorGaveUp`` raised."""
    supervisor = Supervisor(name, children, **kwargs)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            try:
                yield supervisor
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Trio groups every nursery error; a lone one (the body's, or SupervisorGaveUp) is re-raised as is.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
