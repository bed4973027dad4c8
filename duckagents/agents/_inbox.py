"""A provider agent's inbox: signals addressed to it are handled in order, attempts run to one terminal.

Reading and executing share a small pool of tasks (leader/followers). One task at a time, the *reader*,
takes signals from the inbox and handles what is buffered in one scheduler turn, in bus order. When that
batch holds attempts, the reader hands reading over to an idle follower (or a new task) and runs the
first attempt itself, so an attempt starts in the scheduler turn that delivered it, without a spawn; any
further attempts of the batch get a task each. A task done with its attempt waits as a follower, up to
:data:`IDLE_WORKERS` of them; beyond that it ends. So the inbox always has a reader, the bus never waits
on the agent for long, and a steady stream of requests costs no task spawns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..bus import Subscription
from ..errors import BusClosed, ErrorKind, ProviderError
from ..signals import (
    FeatureCheck,
    Payload,
    ProviderErrorData,
    ProviderRequest,
    Signal,
    TokenEstimate,
)
from ._execution import Attempt, execute_attempt
from ._replies import reply_features, reply_tokens

if TYPE_CHECKING:
    from ._agent import ProviderAgent

__all__ = ["DRAIN_BATCH", "IDLE_WORKERS", "publish_terminal", "serve_broadcasts", "serve_inbox"]

#: Inbox signals handled per scheduler turn at most.
DRAIN_BATCH = 256
#: Idle inbox tasks kept waiting for their turn to read (more end when their attempt is done).
IDLE_WORKERS = 16


async def serve_inbox(agent: ProviderAgent, inbox: Subscription, *, permanent: bool = True) -> None:
    """Be one of the agent's inbox tasks (see the module docstring). The agent's own task is the
    ``permanent`` one; helpers started by a hand-over end when enough others are idle."""
    while True:
        attempt = await _read(agent, inbox)
        # Someone else reads while this task runs the attempt.
        followers = agent._followers
        if followers:
            followers.unpark()
        else:
            agent._spawn(_helper, agent, inbox)
        await _execute(agent, attempt)
        if not permanent and len(followers) >= IDLE_WORKERS:
            return
        await followers.park()  # woken when it is this task's turn to read


async def _helper(agent: ProviderAgent, inbox: Subscription) -> None:
    await serve_inbox(agent, inbox, permanent=False)


async def serve_broadcasts(agent: ProviderAgent, broadcast: Subscription) -> None:
    """Answer the feature checks and token estimates addressed to every agent."""
    async for signal in broadcast:
        data = signal.data
        if signal.provider is not None:
            continue  # addressed ones arrive through the inbox
        if isinstance(data, FeatureCheck):
            agent._spawn(reply_features, agent, data)
        elif isinstance(data, TokenEstimate):
            agent._spawn(reply_tokens, agent, data)


async def _read(agent: ProviderAgent, inbox: Subscription) -> Attempt:
    """Handle inbox signals until a batch holds an attempt; return the first one, spawn the others."""
    while True:
        try:
            signal = await inbox.receive()
        except BusClosed:
            await trio.sleep_forever()  # the tree is shutting down; wait to be cancelled
        first = _handle(agent, signal)
        for _ in range(DRAIN_BATCH):
            try:
                signal = inbox.receive_nowait()
            except (trio.WouldBlock, BusClosed):
                break
            attempt = _handle(agent, signal)
            if attempt is None:
                continue
            if first is None:
                first = attempt
            else:
                agent._spawn(_execute, agent, attempt)
        if first is not None:
            return first


def _handle(agent: ProviderAgent, signal: Signal) -> Attempt | None:
    """Take one inbox signal into account; an attempt to run is returned, not started."""
    data = signal.data
    if isinstance(data, ProviderRequest):
        return _accept(agent, data, signal.subject)
    if isinstance(data, FeatureCheck):
        agent._spawn(reply_features, agent, data)
    elif isinstance(data, TokenEstimate):
        agent._spawn(reply_tokens, agent, data)
    elif isinstance(data, ProviderErrorData) and signal.source != agent.source:
        _answered_elsewhere(agent, data)
    return None


def _accept(agent: ProviderAgent, request: ProviderRequest, subject: str | None) -> Attempt | None:
    active = agent.active_requests
    key = (request.request_id, request.attempt)
    if key in active:
        return None  # a duplicate delivery of an attempt already running: it gets one terminal only
    attempt = Attempt(request, trio.current_time(), trio.CancelScope(), subject)
    if len(active) >= agent.max_pending:
        error = ProviderError(
            ErrorKind.OVERLOADED, f"agent has {len(active)} requests pending", retry_after=1.0
        )
        agent._spawn(publish_terminal, agent, agent.failure(attempt, error), subject)
        return None
    active[key] = attempt
    return attempt


def _answered_elsewhere(agent: ProviderAgent, failure: ProviderErrorData) -> None:
    """Someone (the router) published the terminal of one of our attempts: stop it, stay silent."""
    attempt = agent.active_requests.get((failure.request_id, failure.attempt))
    if attempt is not None:
        attempt.answered = True
        attempt.scope.cancel()


async def _execute(agent: ProviderAgent, attempt: Attempt) -> None:
    request = attempt.request
    key = (request.request_id, request.attempt)
    try:
        terminal = await execute_attempt(agent, attempt)
        if terminal is not None and not attempt.answered:
            attempt.published = True
            await publish_terminal(agent, terminal, attempt.subject)
    except trio.Cancelled:
        # Shutdown: answer for the request ourselves. A crash: stay silent, the router answers for
        # every attempt of a crashed agent (it sees the supervisor's event), so nothing is doubled.
        if not agent.crashed and not attempt.answered and not attempt.published:
            error = ProviderError(ErrorKind.SHUTDOWN, "the provider agent shut down")
            await publish_terminal(agent, agent.failure(attempt, error), attempt.subject)
        raise
    finally:
        agent.active_requests.pop(key, None)


async def publish_terminal(agent: ProviderAgent, payload: Payload, subject: str | None) -> None:
    """Publish the terminal of an attempt, with the subject of the ``provider_request`` it answers (the
    router gives each attempt its own).

    Shielded: a decided terminal must go out whole even when the agent is being stopped; bounded, so a
    stalled subscriber cannot hold a shutdown forever (the router then answers on the agent's behalf).
    Usually nobody's buffer is full and it goes out at once, with no cancel scope and no scheduler turn.
    """
    signal = Signal(
        payload.TYPE,
        agent.source,
        payload,
        subject=subject if subject is not None else getattr(payload, "request_id", None),
        provider=getattr(payload, "provider", None),
    )
    await agent.bus.deliver(signal, shielded_for=agent.publish_timeout)
