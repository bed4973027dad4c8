"""The life of one routed request: intake, choice of agent, attempts, retries, the final result.

:func:`drive` runs in the caller's own task for ``complete()`` (so a request costs no spawn and no task
switch of its own), else as one task per request in the router's nursery. Between attempts it asks the
router's board (:mod:`._board`) for an agent; each attempt waits for the terminal the board records from
the bus, or answers for a hung agent at the attempt's deadline + grace. :func:`_finish` always publishes
exactly one final result and wakes the caller, however the request ended.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from ..errors import ErrorKind, ProviderError
from ..signals import ProviderErrorData, ProviderRequest, ProviderResponse
from ._agent_view import needs_of
from ._request import Final, Run
from ._state import DISPATCH, SOURCE, NoneFits

if TYPE_CHECKING:
    from ._router import RouterAgent
    from ._stream import ChunkQueue

__all__ = ["attempt_subject", "drive", "open_run"]


def open_run(
    router: RouterAgent, request: ProviderRequest, *, chunks_out: ChunkQueue | None = None,
    inline: bool = False,
) -> Run:
    """Accept ``request``: a run, driven by a new task in the router's nursery, or by the caller (who
    then awaits :func:`drive` itself) when ``inline``. Raises ``ProviderError`` when it is refused."""
    if not router.running or router.board.closing:
        raise ProviderError(ErrorKind.SHUTDOWN, "the router is not accepting requests")
    runs = router.runs
    if request.request_id in runs:
        message = f"request id {request.request_id!r} is already in flight"
        raise ProviderError(ErrorKind.INVALID_REQUEST, message)
    if len(runs) >= router.max_in_flight:
        raise ProviderError(ErrorKind.OVERLOADED, f"{len(runs)} requests in flight", retry_after=1.0)
    if request.provider is not None and request.provider not in router.views:
        raise ProviderError(
            ErrorKind.NO_PROVIDER, f"unknown provider {request.provider!r}; known: {', '.join(router.views)}"
        )
    try:
        needs = needs_of(request.messages, request.options, request.required_features, request.model)
    except ValueError as exc:
        raise ProviderError(ErrorKind.INVALID_REQUEST, str(exc)) from None
    deadline = request.deadline
    if deadline is None:
        deadline = trio.current_time() + router.config.request_timeout
    if request.deadline != deadline or request.attempt != 1:
        request = attrs.evolve(request, deadline=deadline, attempt=1)
    run = Run(request, needs, deadline, chunks_out, trio.CancelScope(shield=not inline), inline=inline)
    runs[run.request_id] = run
    if not inline:
        router._spawn(drive, router, run)
    return run


def attempt_subject(request_id: str, attempt: int) -> str:
    """The envelope subject of attempt-level signals: ``<request id>#<attempt>``."""
    return f"{request_id}#{attempt}"


async def drive(router: RouterAgent, run: Run) -> None:
    """Route ``run`` to its final result (see the module docstring). Runs in the router's nursery, or in
    the caller's own task (``complete()``), where cancelling the caller cancels the request."""
    final: Final | None = None
    try:
        with run.scope:
            # The intake, for observers; unaddressed (``provider`` unset) so no agent executes it.
            await router.publish(run.intake, SOURCE)
            run.intake_sent = True
            if run.stop_kind is not None:
                run.scope.cancel()  # stopped while the intake went out
            final = await _route(router, run)
    except trio.Cancelled:
        # Only the caller's task gets here (a router task's run scope is shielded): the caller gave up.
        run.stop(ErrorKind.CANCELLED, "cancelled by the caller")
        raise
    except Exception as exc:
        if not run.inline:
            raise  # the router task's crash guard takes it from here
        # A bug in the caller's task: the router crashes as if it had happened in one of its own tasks
        # (every run ends, the supervisor restarts it); this caller gets the final result.
        router._crash(exc)
    finally:
        # The final result must go out even when the run was cancelled: _finish publishes shielded and
        # bounded (a stalled subscriber cannot hold the caller or the router's shutdown forever).
        await _finish(router, run, final)


async def _route(router: RouterAgent, run: Run) -> Final:
    last: ProviderErrorData | None = None
    config = router.config
    for number in range(1, config.max_attempts + 1):
        if number > 1:
            delay = min(config.backoff_max, config.backoff_initial * 2 ** (number - 2))
            if delay > 0:
                await trio.sleep_until(min(run.deadline, trio.current_time() + delay))
        choice = await _choose(router, run)
        if isinstance(choice, ProviderErrorData):
            return last if last is not None else choice
        result = await _attempt(router, run, choice, number)
        if isinstance(result, ProviderResponse):
            return result
        last = result
        if router.board.closing or not run.may_retry(result, trio.current_time()):
            return result
    assert last is not None
    return last


async def _choose(router: RouterAgent, run: Run) -> str | ProviderErrorData:
    """The agent for the next attempt; waits (within the deadline) while all are temporarily out."""
    while True:
        if router.board.closing:
            return run.router_failure(ErrorKind.SHUTDOWN, "the router is shutting down")
        now = trio.current_time()
        choice = router.board.pick(run, router.strategy, now)
        if isinstance(choice, str):
            return choice
        if isinstance(choice, NoneFits):
            return run.router_failure(ErrorKind.NO_PROVIDER, _no_provider(run, choice.reasons))
        wake = router.board.wait_bound(choice, run.deadline, now)
        if wake is None:
            message = "no provider available before the deadline: " + "; ".join(choice.reasons)
            failure = run.router_failure(choice.kind, message)
            if choice.until != math.inf:
                failure = attrs.evolve(failure, retry_after=choice.until - now)
            return failure
        changed = router.board.changed
        with trio.move_on_at(wake):
            await changed.wait()


async def _attempt(router: RouterAgent, run: Run, agent: str, number: int) -> Final:
    # A run stopped by now must not begin an attempt it cannot publish (its terminal would answer a
    # request nobody saw); from here to the publish's delivery nothing can yield.
    await trio.lowlevel.checkpoint_if_cancelled()
    view = router.views[agent]
    deadline = min(run.deadline, trio.current_time() + view.config.timeout)
    request = run.attempt_request(agent, number, deadline)
    run.begin_attempt(agent, number)
    view.active += 1
    # Taken right before the publish, which delivers before it can yield: a crash the router handles
    # later than this position happened after the attempt went out.
    run.dispatch_mark = router.inbox_position()
    await router.publish(request, DISPATCH, attempt_subject(run.request_id, number))
    with trio.move_on_at(deadline + router.terminal_grace):
        await run.attempt_done.wait()
    if run.outstanding:  # the agent neither answered nor crashed: it hangs
        message = f"provider agent {agent} gave no answer by the deadline"
        router.board.end_attempt(run, run.attempt_failure(ErrorKind.TIMEOUT, message), on_behalf=True)
    await _publish_on_behalf(router, run)
    assert run.result is not None
    return run.result


async def _publish_on_behalf(router: RouterAgent, run: Run, *, shielded: bool = False) -> None:
    if run.on_behalf_pending and run.result is not None:
        run.on_behalf_pending = False
        publish = router.publish_shielded if shielded else router.publish
        await publish(run.result, DISPATCH, attempt_subject(run.request_id, run.attempt))


async def _finish(router: RouterAgent, run: Run, final: Final | None) -> None:
    """Close the run: answer for an attempt still outstanding, publish the final result (shielded and
    bounded: no cancel scope at all unless the bus makes it wait), wake the caller and forget the run."""
    try:
        if final is None:
            final = run.stopped_final()
        if run.outstanding:
            if isinstance(final, ProviderErrorData):
                failure = attrs.evolve(final, attempt=run.attempt, provider=run.agent)
            else:
                failure = run.attempt_failure(ErrorKind.CANCELLED, "the request ended")
            router.board.end_attempt(run, failure, on_behalf=True)
        await _publish_on_behalf(router, run, shielded=True)
        if isinstance(final, ProviderErrorData) and run.chunks > 0 and not final.partial:
            final = attrs.evolve(final, partial=True)
        run.final = final
        await router.publish_shielded(final, SOURCE)
    finally:
        if run.final is None:
            run.final = final or run.router_failure(ErrorKind.SHUTDOWN, "the router shut down")
        router.runs.pop(run.request_id, None)
        if run.chunks_out is not None:
            run.chunks_out.close()
        run.done.set()


def _no_provider(run: Run, reasons: Sequence[str]) -> str:
    needs = ", ".join(sorted(run.needs.features)) or "nothing special"
    detail = "; ".join(reasons) or "no provider agents are configured"
    return f"no provider can serve this request (needs: {needs}): {detail}"
