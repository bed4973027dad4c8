"""One attempt of one request inside a provider agent: prepare → limiter → breaker → provider → verdict.

Kept apart from :mod:`.provider_agent` (the agent's lifecycle and inbox) so the hot path reads top to
bottom. Every path through :func:`execute_attempt` settles what it took: a limiter reservation is settled
or cancelled, a breaker admission gets exactly one verdict (success, failure or release), and a metrics
``request_started`` is matched by a recorded success or failure.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..errors import ErrorKind, ProviderError, StreamProtocolError
from ..providers import Completion, RateLimitInfo, StreamEnd, heuristic_token_count
from ..resilience import Reservation
from ..signals import (
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    Signal,
    ToolCallDelta,
)

if TYPE_CHECKING:
    from ._agent import ProviderAgent

__all__ = ["Attempt", "execute_attempt"]


@attrs.define(eq=False)
class Attempt:
    """An attempt in flight in an agent, keyed by ``(request_id, attempt)``."""

    request: ProviderRequest
    #: Trio time the agent received it.
    received: float
    #: The attempt's scope: its deadline is the request's; cancelled when the attempt was answered
    #: elsewhere (the router published its terminal).
    scope: trio.CancelScope
    #: The envelope subject of the request signal; its terminal carries the same.
    subject: str | None = None
    model: str | None = None
    #: Chunks published so far; > 0 makes a failure ``partial`` (never retried).
    chunks: int = 0
    answered: bool = False
    published: bool = False


async def execute_attempt(
    agent: ProviderAgent, attempt: Attempt
) -> ProviderResponse | ProviderErrorData | None:
    """Run ``attempt`` within its deadline and return its terminal payload, or None when it was answered
    elsewhere (then nothing must be published for it). Never raises ProviderError."""
    request = attempt.request
    deadline = request.deadline if request.deadline is not None else math.inf
    scope = attempt.scope
    scope.deadline = deadline  # one scope for both ways to end early: a hot-path saving
    try:
        with scope:
            return await _perform(agent, attempt, deadline)
    except ProviderError as error:
        return agent.failure(attempt, error)
    # The scope caught its own cancellation: answered elsewhere, or the deadline passed.
    if attempt.answered:
        return None
    return agent.failure(attempt, ProviderError(ErrorKind.TIMEOUT, "no answer before the request's deadline"))


async def _perform(agent: ProviderAgent, attempt: Attempt, deadline: float) -> ProviderResponse:
    request = await agent.prepare(attempt.request)
    model = request.model or agent.model
    attempt.model = model
    # Waiting for a slot holds nothing (no reservation, no breaker trial), and the deadline bounds it. A
    # free slot is taken without a scheduler round trip (the upstream call checkpoints soon enough), but
    # an attempt already cancelled stops here, before it takes anything.
    await trio.lowlevel.checkpoint_if_cancelled()
    slots = agent.slots
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        await slots.acquire()
    try:
        tokens = await _estimate(agent, request, model)
        reservation = await _admit(agent, tokens, deadline, model)
        now = trio.current_time()
        if not agent.breaker.allow(now):
            agent.limiter.cancel(reservation, now)
            agent.breaker_changed()
            retry_at = agent.breaker.retry_at(now)
            raise ProviderError(
                ErrorKind.CIRCUIT_OPEN,
                "circuit breaker is open: the upstream failed repeatedly",
                model=model,
                retry_after=None if retry_at is None else retry_at - now,
            )
        agent.breaker_changed()  # allow() may have moved an open breaker to half-open
        agent.metrics.request_started()
        sent = trio.current_time()
        verdict = False  # set once success or failure is recorded; otherwise the call was interrupted
        try:
            completion, first_chunk = await _call(agent, attempt, request, model, sent)
            completion = agent.classify(request, completion)
            _record_success(agent, reservation, sent, completion, first_chunk)
            verdict = True
        except ProviderError as error:
            verdict = True
            _record_failure(agent, reservation, sent, error)
            raise
        finally:
            if not verdict:  # cancelled (deadline, router, shutdown) or crashed
                _record_interrupted(agent, reservation, sent, deadline)
    finally:
        slots.release()
    original = attempt.request  # prepare() may rewrite the request, never its identity
    return ProviderResponse(
        request_id=original.request_id,
        provider=agent.name,
        model=completion.model,
        content=completion.content,
        tool_calls=completion.tool_calls,
        finish_reason=completion.finish_reason,
        usage=completion.usage,
        latency=trio.current_time() - attempt.received,
        time_to_first_chunk=first_chunk,
        attempt=original.attempt,
    )


async def _estimate(agent: ProviderAgent, request: ProviderRequest, model: str) -> int:
    """Tokens to reserve: the input estimate plus the requested output budget (0 when tokens are not
    limited, so no counting call is made for nothing)."""
    if agent.limits.tokens is None:
        return 0
    try:
        count = (await agent.provider.estimate_tokens(request.messages, model)).tokens
    except ProviderError:  # a counting endpoint failing must not fail the request
        count = heuristic_token_count(request.messages)
    return count + (request.options.max_tokens or 0)


async def _admit(agent: ProviderAgent, tokens: int, deadline: float, model: str) -> Reservation:
    """Wait until the limiter admits the request, if that happens before the deadline."""
    while True:
        now = trio.current_time()
        admission = agent.limiter.admit(now, tokens)
        if admission.reservation is not None:
            return admission.reservation
        if admission.retry_at is None:
            # Never admissible here, but another provider with larger limits may take it: retryable.
            raise ProviderError(
                ErrorKind.RATE_LIMITED,
                f"the request needs {tokens} tokens, more than the limit of {agent.limits.tokens} "
                f"tokens per {agent.limits.period:g} s",
                model=model,
                retryable=True,
            )
        if admission.retry_at > deadline:
            wait = admission.retry_at - now
            raise ProviderError(
                ErrorKind.RATE_LIMITED,
                f"rate limited: next admission in {wait:.3g} s, after the request's deadline",
                model=model,
                retry_after=wait,
            )
        await trio.sleep_until(admission.retry_at)


async def _call(
    agent: ProviderAgent, attempt: Attempt, request: ProviderRequest, model: str, sent: float
) -> tuple[Completion, float | None]:
    """Run the request upstream; streamed deltas become ``provider_chunk`` signals as they arrive."""
    provider = agent.provider
    if not request.options.stream:
        return await provider.complete(request), None
    if not agent.features(model).streaming:
        # The upstream cannot stream: deliver the whole answer as one chunk, so stream consumers see it.
        completion = await provider.complete(request)
        first = trio.current_time() - sent
        await _chunk(agent, attempt, completion.content, None)
        for index, call in enumerate(completion.tool_calls):
            await _chunk(agent, attempt, "", ToolCallDelta(index, call.id, call.name, call.arguments))
        return completion, first
    completion_out: Completion | None = None
    first_chunk: float | None = None
    events: Any = provider.stream(request)
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, StreamEnd):
                completion_out = event.completion
                continue
            if first_chunk is None:
                first_chunk = trio.current_time() - sent
            await _chunk(agent, attempt, event.text, event.tool_call)
    if completion_out is None:
        raise StreamProtocolError("the provider's stream ended without its final event", model=model)
    return completion_out, first_chunk


async def _chunk(agent: ProviderAgent, attempt: Attempt, text: str, tool_call: ToolCallDelta | None) -> None:
    index = attempt.chunks
    # Counted before publishing: once any subscriber may have it, a failure is partial.
    attempt.chunks += 1
    request_id = attempt.request.request_id
    chunk = ProviderChunk(request_id, agent.name, index, text, tool_call)
    signal = Signal(ProviderChunk.TYPE, agent.source, chunk, subject=request_id, provider=agent.name)
    # Still a cancellation point per chunk (an attempt answered elsewhere stops streaming here), but the
    # chunk goes out without a scheduler turn unless a subscriber is full: the stream's reads yield anyway.
    await trio.lowlevel.checkpoint_if_cancelled()
    await agent.bus.deliver(signal)


def _record_success(
    agent: ProviderAgent, reservation: Reservation, sent: float, completion: Completion, first: float | None
) -> None:
    now = trio.current_time()
    tokens = completion.usage.total_tokens
    agent.limiter.settle(reservation, tokens, now)
    if completion.rate_limit is not None:
        agent.limiter.observe(now, completion.rate_limit)
    agent.metrics.record_success(now - sent, tokens, first)
    agent.recent.success()
    agent.breaker.record_success(now)
    agent.breaker_changed()


def _record_failure(
    agent: ProviderAgent, reservation: Reservation, sent: float, error: ProviderError
) -> None:
    now = trio.current_time()
    # It reached the upstream: the request counts, its tokens are refunded (none were generated).
    agent.limiter.settle(reservation, 0, now)
    if error.retry_after is not None and error.kind is ErrorKind.RATE_LIMITED:
        agent.limiter.observe(now, RateLimitInfo(retry_after=error.retry_after))
        agent.poke_status()  # the router should learn of the block before it sends more
    agent.metrics.record_failure(now - sent)
    agent.recent.failure(error.kind)
    agent.breaker.record_failure(now, error.kind)
    agent.breaker_changed()


def _record_interrupted(agent: ProviderAgent, reservation: Reservation, sent: float, deadline: float) -> None:
    now = trio.current_time()
    agent.limiter.settle(reservation, 0, now)
    agent.metrics.record_failure(now - sent)
    if now >= deadline:  # the upstream was too slow: that says something about its health
        agent.recent.failure(ErrorKind.TIMEOUT)
        agent.breaker.record_failure(now, ErrorKind.TIMEOUT)
    else:  # cancelled by the caller or a shutdown: no verdict on the upstream
        agent.breaker.release(now)
    agent.breaker_changed()
