"""The router's signal loop, and the order in which a router stops.

The loop is the only reader of the router's inbox: it hands every signal, in bus order, to the board
(:meth:`~._board.RouterBoard.handle`), which is synchronous. It never awaits anything but the next signal
and handles what is buffered in one scheduler turn, so the bus never waits on the router for long.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from ..bus import Subscription
from ..errors import BusClosed, ErrorKind
from ._state import RouterBoard

if TYPE_CHECKING:
    from ._router import RouterAgent

__all__ = ["DRAIN_BATCH", "INBOX_TYPES", "drain", "serve_signals", "stop_router"]

# Not provider_request: the router knows its own requests. Where an attempt falls in the order of the
# inbox (which decides whether an agent's crash can have lost it) is noted when it is published.
INBOX_TYPES = frozenset(
    {"provider_chunk", "provider_response", "provider_error", "provider_status", "feature_reply",
     "supervisor_event"}
)
#: Signals the loop handles per scheduler turn at most (so other tasks still get to run).
DRAIN_BATCH = 512


async def serve_signals(
    router: RouterAgent, inbox: Subscription, scope: trio.CancelScope, done: trio.Event
) -> None:
    """Run the signal loop (under the router's crash guard) until ``scope`` is cancelled; set ``done``."""
    try:
        with scope:
            await router._guard(_loop, router.board, inbox)
    finally:
        done.set()


async def _loop(board: RouterBoard, inbox: Subscription) -> None:
    while True:
        try:
            signal = await inbox.receive()
        except BusClosed:
            await trio.sleep_forever()  # the bus closed: nothing to do until we are stopped
        board.handle(signal)
        drain(board, inbox, DRAIN_BATCH)


def drain(board: RouterBoard, inbox: Subscription, limit: float = math.inf) -> None:
    """Handle buffered signals (at most ``limit``) without yielding."""
    handled = 0
    while handled < limit:
        try:
            signal = inbox.receive_nowait()
        except (trio.WouldBlock, BusClosed):
            return
        board.handle(signal)
        handled += 1


async def stop_router(
    router: RouterAgent, inbox: Subscription, loop_scope: trio.CancelScope, loop_done: trio.Event
) -> None:
    """Stop in order: intake, signal loop, what is still buffered, then every run (each publishes its
    final result; those driven by their callers' tasks are waited for, bounded)."""
    router.close_intake()
    loop_scope.cancel()
    with trio.move_on_after(router.publish_timeout):
        await loop_done.wait()
    drain(router.board, inbox)  # every terminal already published is taken into account
    inbox.close()  # from here on nobody waits for us on the bus
    crashed = router.crashed
    kind = ErrorKind.AGENT_CRASHED if crashed else ErrorKind.SHUTDOWN
    runs = list(router.runs.values())
    for run in runs:
        run.stop(kind, "the router crashed" if crashed else "the router shut down")
    # The router's nursery waits for the runs it drives; these are for the ones driven by callers, so
    # that no final result comes after the router stopped.
    with trio.move_on_after(router.publish_timeout):
        for run in runs:
            await run.done.wait()
