"""A routed request: one caller's request inside the router, from intake to its one final result.

A :class:`RoutedRequest` routes itself (:meth:`~RoutedRequest.route`): it publishes the intake, takes
the model it asked for (or the default model), asks the router's state for an agent serving it, holds
the attempt's expected cost on the budgets concerned, sends attempt 1, 2, ... (one outstanding at a time,
each a ``provider_request`` addressed to one agent), moves on to the models of the fallback chains when
the model cannot answer (docs/routing.md), and always publishes exactly one final result, however it
ended. ``route()`` runs in the caller's own task for ``complete()`` (so a request costs no spawn and no
task switch of its own), else in a task of the router. Each attempt waits for the terminal the router's
signal loop hands over (:meth:`~RoutedRequest.take_terminal`), or answers for a hung agent at the
attempt's deadline + grace. What a request uses of its router comes in a :class:`RoutingContext`.

**Containment.** An unexpected exception while routing one request (a bug, an input no check foresaw)
ends that request with an ``internal`` final result and logs its traceback (logger
``duckagents.router``, once per kind of fault and minute); the router keeps serving.

**Poison requests.** An attempt that ended with ``agent_crashed`` is retried on another agent only when
the crash is not put down to the request (the crashed agent says so in its answer: ``retryable``), and at
most once per request (:data:`MAX_CRASH_RETRIES`), so a request that crashes agents cannot walk through
the fleet.

Also here: the sources and subjects of the router's signals (docs/signals.md) and :func:`build_request`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import attrs
import trio

from ..bus import SignalBus
from ..config import RouterConfig
from ..costs import BudgetHold, BudgetLedger, provider_account, token_account
from ..errors import ErrorKind, ProviderError
from ..messages import FinishReason, Message, RequestOptions, ToolSpec
from ..signals import (
    AttemptOutcome,
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    Signal,
    new_id,
)
from ..supervision import FaultLog
from ..validation import MAX_ERROR_CHARS
from ._agent_view import PULLABLE_KINDS, AgentView, Needs
from ._chunk_queue import ChunkQueue
from ._routes import FALLBACK_KINDS, Trigger
from ._state import AgentGone, NoneFits, RouterState
from ._strategies import DEFAULT_OUTPUT_TOKENS, RoutingStrategy

__all__ = [
    "DISPATCH", "MAX_CRASH_RETRIES", "SOURCE", "Final", "RoutedRequest", "RoutingContext", "attempt_subject",
    "build_request",
]

#: Source of caller-level signals: the intake request and the final result.
SOURCE = "/router"
#: Source of attempt-level signals: attempts, terminals on an agent's behalf, feature checks.
DISPATCH = "/router/dispatch"

Final = ProviderResponse | ProviderErrorData

#: Attempts ended by ``agent_crashed`` after which a request may still be retried: one. The crashed agent
#: marks an attempt whose own handling crashed it as not retryable; this bound also holds when it could
#: not say (its answer did not get through and the router answered for it).
MAX_CRASH_RETRIES = 1

# Kinds of terminal the router makes up for an agent that may do better on a retry elsewhere.
_RETRYABLE_ON_BEHALF = frozenset({ErrorKind.AGENT_CRASHED, ErrorKind.TIMEOUT})
# The agent cannot serve the model (it does not have it): the next agent for the model is tried, never
# this one again for the request.
_CANNOT_SERVE = frozenset({ErrorKind.NOT_FOUND})
# Finish reasons that send a response down the content-policy chain, when the model has one.
_POLICY_REASONS = frozenset({FinishReason.REFUSAL, FinishReason.CONTENT_FILTER})


def attempt_subject(request_id: str, attempt: int) -> str:
    """The envelope subject of attempt-level signals: ``<request id>#<attempt>``."""
    return f"{request_id}#{attempt}"


@attrs.frozen
class RoutingContext:
    """What the requests of one router use of it, made once per router."""

    #: What the router knows about its agents; requests take their agent from it.
    state: RouterState
    #: Where the intake, the attempts and the final result go.
    bus: SignalBus
    strategy: RoutingStrategy
    #: Attempts, backoff and the default request timeout.
    config: RouterConfig
    #: Extra time an agent gets past an attempt's deadline before the router answers for it.
    terminal_grace: float
    #: Longest wait for room on the bus for a result that must go out (final results, answers on behalf).
    publish_timeout: float
    #: Where a signal published now falls in the router's inbox (see :attr:`RouterState.position`).
    inbox_position: Callable[[], float]
    #: Where faults contained in one request are logged.
    faults: FaultLog
    #: Where spend is held against budgets; None when no budget is configured.
    budgets: BudgetLedger | None = None


class RoutedRequest:
    """One caller's request inside the router, from intake to its final result; see the module docstring.

    The attributes describe where it is (read them, the request and the router's signal loop update
    them): the latest ``attempt`` (0 before the first), its ``agent``, whether it is ``outstanding``
    (awaits its terminal) and its ``result``; ``final`` once the request ended.
    """

    __slots__ = (
        "_view", "agent", "answered", "attempt", "choice_trigger", "chunks", "chunks_out", "claimed",
        "context", "crashes", "deadline", "dispatch_mark", "done", "excluded", "final", "history", "hold",
        "hold_attempt", "hop_tried", "inline", "intake_sent", "model", "models", "needs", "no_fallback",
        "on_behalf_pending", "outstanding", "pull_hint", "request", "result", "scope", "sent_at",
        "stop_kind", "stop_message", "tried",
    )

    def __init__(
        self,
        request: ProviderRequest,
        needs: Needs,
        deadline: float,
        context: RoutingContext,
        *,
        chunks_out: ChunkQueue | None = None,
        inline: bool = False,
    ) -> None:
        self.request = request
        self.needs = needs
        self.deadline = deadline
        self.context = context
        #: Where chunks go for a ``stream()`` caller (bounded); None for complete() and submit().
        self.chunks_out = chunks_out
        #: Routed by the caller's own task (``complete()``), not by a task of the router.
        self.inline = inline
        #: Cancelled to stop the request. Shielded when a task of the router routes it (the router stops
        #: requests one by one, in order); not in the caller's task, so cancelling the caller reaches it.
        self.scope = trio.CancelScope(shield=not inline)
        #: Set once the request ended (its final result is out, or could not go out).
        self.done = trio.Event()
        #: The agents tried, in order.
        self.tried: list[str] = []
        #: The models tried, in order (the requested or default one, then fallbacks); ``model`` is the
        #: current one, ``hop_tried`` the agents tried for it and ``excluded`` those that cannot serve it.
        self.models: list[str] = []
        self.model: str | None = None
        self.hop_tried: list[str] = []
        self.excluded: set[str] = set()
        #: No fallback model can take over from the current one: its agents may be tried again, and
        #: waited for while they are out.
        self.no_fallback = True
        #: Which chain the last failure of :meth:`_choose_agent` leads to.
        self.choice_trigger: Trigger | None = None
        #: The budget hold of the outstanding attempt (``hold_attempt``), settled by its terminal.
        self.hold: BudgetHold | None = None
        self.hold_attempt = 0
        #: Said in the final error when a local agent lacked the model.
        self.pull_hint: str | None = None
        self.attempt = 0
        self.agent: str | None = None
        self.outstanding = False
        self.result: Final | None = None
        #: Set when the outstanding attempt's terminal is recorded.
        self.answered = trio.Event()
        #: When the latest attempt was sent (Trio clock).
        self.sent_at = 0.0
        #: How each attempt ended, kept from the second attempt on (a request answered at once allocates
        #: nothing for it); the final result lists them when there was more than one (``attempts``).
        self.history: list[AttemptOutcome] | None = None
        #: ``result`` was made up by the router (agent crashed / hung) and must still be published.
        self.on_behalf_pending = False
        #: The router took the claim on the outstanding attempt's terminal (it answers for the agent).
        self.claimed = False
        #: Position in the router's inbox when the attempt went on the bus (see
        #: :attr:`RouterState.position`): a crash reported at a later position may have hit the attempt.
        self.dispatch_mark: float = math.inf
        #: Chunks delivered for this request; > 0 forbids retrying.
        self.chunks = 0
        #: Attempts that ended with ``agent_crashed`` (see :data:`MAX_CRASH_RETRIES`).
        self.crashes = 0
        #: The intake is on the bus: from then on a stop cancels :attr:`scope` (before, :meth:`route`
        #: does it once the intake is out, so a final result never answers a request nobody saw).
        self.intake_sent = False
        #: Why the request was stopped from outside (cancel, shutdown, slow consumer), if it was.
        self.stop_kind: ErrorKind | None = None
        self.stop_message = ""
        self.final: Final | None = None
        self._view: AgentView | None = None

    def __repr__(self) -> str:
        return (
            f"RoutedRequest({self.request_id!r}, attempt={self.attempt}, agent={self.agent!r}, "
            f"outstanding={self.outstanding}, done={self.done.is_set()})"
        )

    @property
    def request_id(self) -> str:
        """The caller's request id (shared by every attempt)."""
        return self.request.request_id

    @property
    def intake(self) -> ProviderRequest:
        """The request as published at intake: unaddressed, so no agent executes it."""
        request = self.request
        if request.provider is None:
            return request
        return attrs.evolve(request, provider=None)

    # --- from outside: the caller, the router and its signal loop ----------------------------------

    def stop(self, kind: ErrorKind, message: str) -> bool:
        """Stop the request from outside; False if it already ended or was stopped."""
        if self.final is not None or self.stop_kind is not None:
            return False
        self.stop_kind = kind
        self.stop_message = message
        if self.intake_sent:
            self.scope.cancel()
        return True

    def cancel(self) -> bool:
        """The caller's cancel: the request ends with a ``cancelled`` final result."""
        return self.stop(ErrorKind.CANCELLED, "cancelled by the caller")

    def take_chunk(self, chunk: ProviderChunk) -> None:
        """A chunk for this request: counted, and passed on to a ``stream()`` caller."""
        # Chunks carry no attempt number; only the outstanding attempt's agent can be sending them.
        if not self.outstanding or chunk.provider != self.agent:
            return
        self.chunks += 1
        chunks_out = self.chunks_out
        if chunks_out is None:
            return
        try:
            chunks_out.put(chunk)
        except trio.WouldBlock:
            self.stop(ErrorKind.CANCELLED, f"the stream consumer fell {chunks_out.capacity} chunks behind")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.stop(ErrorKind.CANCELLED, "the stream consumer went away")

    def take_terminal(self, payload: Final) -> None:
        """An agent's terminal for this request: it answers the outstanding attempt if it is that
        attempt's; anything else is late (its attempt was already answered) and is ignored."""
        if self.outstanding and payload.attempt == self.attempt and payload.provider == self.agent:
            self._answer(payload, on_behalf=False)
            # The agent took the claim to publish it, and will not try again.
            self.context.bus.claims.forget(attempt_subject(self.request_id, self.attempt))

    def agent_gone(self, gone: AgentGone) -> None:
        """``gone.agent`` went down: the outstanding attempt ends if it may have been lost with it."""
        # Only an attempt on the bus before the event can have been lost with the agent. One published
        # after it (the router had not seen the event yet) went to the next incarnation, or to nobody
        # while the agent was down; its deadline covers that.
        if self.outstanding and self.dispatch_mark < gone.position and self.agent == gone.agent:
            self._answer(self._failure_on_behalf(gone.kind, gone.message), on_behalf=True)

    # --- routing ---------------------------------------------------------------------------------

    async def route(self) -> None:
        """Route to the final result (see the module docstring). Runs in a task of the router, or in the
        caller's own task (``complete()``), where cancelling the caller cancels the request."""
        final: Final | None = None
        try:
            with self.scope:
                # The intake, for observers; unaddressed (``provider`` unset) so no agent executes it.
                await self._publish(self.intake, SOURCE)
                self.intake_sent = True
                if self.stop_kind is not None:
                    self.scope.cancel()  # stopped while the intake went out
                final = await self._try_agents()
        except trio.Cancelled:
            # Only the caller's task gets here (a router task's scope is shielded): the caller gave up.
            self.cancel()
            raise
        except Exception as exc:
            # This request fails alone (see the module docstring); its final result goes out below.
            final = self._internal_failure(exc)
        finally:
            # The final result must go out even when the request was cancelled: _finish publishes
            # shielded and bounded (a stalled subscriber cannot hold the caller or the router's shutdown).
            await self._finish(final)

    async def _try_agents(self) -> Final:
        """Model after model: the requested one (or the default), then where its fallback chains lead
        (depth first, each model once), each tried on its agents (:meth:`_try_model`). The result: the
        first response not refused into a chain, else the last failure (a refusal kept while a
        content-policy chain ran wins over a later failure)."""
        model = self._first_model()
        pending: list[str] = []
        kept: ProviderResponse | None = None
        while True:
            self.models.append(model)
            result, trigger = await self._try_model(model, bool(pending))
            if trigger is None:
                break
            chain = self._next_models(model, trigger)
            if isinstance(result, ProviderResponse):
                if not chain:
                    break  # a refusal with nowhere to go is the answer
                kept = result
            pending = [*chain, *(m for m in pending if m not in chain)]
            if not pending or not self._may_fall_back():
                break
            model = pending.pop(0)
        if isinstance(result, ProviderErrorData):
            if kept is not None:
                return kept
            if self.pull_hint is not None and self.pull_hint not in result.message:
                return attrs.evolve(result, message=f"{result.message}; {self.pull_hint}")
        return result

    def _first_model(self) -> str:
        """The model of the first hop: the request's, else the pinned agent's default, else the
        router's default model."""
        request = self.request
        if request.model is not None:
            return request.model
        state = self.context.state
        if request.provider is not None:
            return state.views[request.provider].config.model
        return state.routes.default_model or ""

    async def _try_model(self, model: str, pending: bool) -> tuple[Final, Trigger | None]:
        """Attempts on the agents serving ``model`` until one answers or no retry is allowed; the last
        result, and the chain it may lead to (None: it is final). ``pending``: models of an earlier chain
        are still to be tried after this one."""
        context = self.context
        config = context.config
        self.model = model
        self.hop_tried = hop_tried = []
        self.excluded = excluded = set()
        # With a fallback model to go to, the agents for this one are tried once each and never waited
        # for; without, one may be tried again, and waited for while out (within the deadline).
        has_fallback = pending or bool(self._next_models(model, Trigger.FALLBACKS))
        self.no_fallback = not has_fallback or not self._may_fall_back()
        last: ProviderErrorData | None = None
        for n in range(config.max_attempts):
            if n > 0:
                delay = min(config.backoff_max, config.backoff_initial * 2 ** (n - 1))
                if delay > 0:
                    await trio.sleep_until(min(self.deadline, trio.current_time() + delay))
            agent = await self._choose_agent()
            if isinstance(agent, ProviderErrorData):
                if last is not None:
                    return last, self._trigger_of(last)
                return agent, self.choice_trigger
            result = await self._send(agent, self.attempt + 1)
            if isinstance(result, ProviderResponse):
                return result, self._trigger_of(result)
            last = result
            hop_tried.append(agent)
            if result.kind in _CANNOT_SERVE:
                excluded.add(agent)
                view = context.state.views[agent]
                if result.kind is ErrorKind.NOT_FOUND and view.config.kind in PULLABLE_KINDS:
                    self.pull_hint = f"model {model} is not on {agent}: run `duckagents pull {model}`"
            if context.state.closing or not self._may_retry(result, trio.current_time()):
                break
        assert last is not None
        return last, self._trigger_of(last)

    def _trigger_of(self, result: Final) -> Trigger | None:
        """Which chain ``result`` (of a whole model) leads to, if any."""
        if isinstance(result, ProviderResponse):
            return Trigger.CONTENT_POLICY if result.finish_reason in _POLICY_REASONS else None
        if result.partial or self.chunks > 0:
            return None
        if result.kind is ErrorKind.CONTEXT_LENGTH:
            return Trigger.CONTEXT_WINDOW
        if result.kind is ErrorKind.AGENT_CRASHED and (
            not result.retryable or self.crashes > MAX_CRASH_RETRIES
        ):
            return None  # a crash put down to this request, or its second one: no other model either
        return Trigger.FALLBACKS if result.kind in FALLBACK_KINDS else None

    def _next_models(self, model: str, trigger: Trigger) -> list[str]:
        """The models ``trigger``'s chain of ``model`` leads to, not visited yet (for a context window,
        only those an agent can fit the request in). None for a pinned request."""
        if self.request.provider is not None:
            return []
        state = self.context.state
        chain = [m for m in state.routes.chain(model, trigger) if m not in self.models]
        if trigger is Trigger.CONTEXT_WINDOW:
            tokens = self.needs.tokens
            chain = [m for m in chain if any(v.fits(m, tokens) for v in state.serving(m))]
        return chain

    def _may_fall_back(self) -> bool:
        """May the request go on to another model? Not once chunks reached the caller, past the deadline,
        while the router closes, or after ``max_fallbacks`` fallback models."""
        context = self.context
        return (
            self.chunks == 0
            and not context.state.closing
            and trio.current_time() < self.deadline
            and len(self.models) <= context.state.routes.max_fallbacks
        )

    async def _choose_agent(self) -> str | ProviderErrorData:
        """The agent for the next attempt on the current model, with its budget held; waits (within the
        deadline) while all are temporarily out, unless a fallback model can take over at once. On a
        failure, :attr:`choice_trigger` says which chain it leads to."""
        context = self.context
        state = context.state
        model = self.model
        assert model is not None
        self.choice_trigger = Trigger.FALLBACKS
        while True:
            if state.closing:
                self.choice_trigger = None
                return self._router_failure(ErrorKind.SHUTDOWN, "the router is shutting down")
            now = trio.current_time()
            hop_tried = self.hop_tried
            excluded: Collection[str] = self.excluded
            if hop_tried and not self.no_fallback:
                excluded = {*excluded, *hop_tried}
            choice = state.choose(
                self.needs, model, pinned=self.request.provider, tried=hop_tried,
                strategy=context.strategy, now=now, excluded=excluded,
            )
            if isinstance(choice, list):
                if context.budgets is None:
                    return choice[0]
                return await self._hold_budget(choice)
            if isinstance(choice, NoneFits):
                if not choice.reasons and self.request.provider is None:
                    self.choice_trigger = None
                    return self._router_failure(ErrorKind.NO_PROVIDER, state.routes.unknown_model(model))
                if choice.kinds == {ErrorKind.CONTEXT_LENGTH}:
                    self.choice_trigger = Trigger.CONTEXT_WINDOW
                return self._router_failure(ErrorKind.NO_PROVIDER, self._no_provider(choice.reasons))
            wake = choice.bound(self.deadline, now)
            if wake is None or not self.no_fallback:
                # Out until after the deadline; or a fallback model can take over now, so no waiting.
                message = "no provider available before the deadline: " + "; ".join(choice.reasons)
                if wake is not None:
                    message = f"no agent for model {model} available now: " + "; ".join(choice.reasons)
                retry_after = choice.until - now if choice.until != math.inf else None
                return self._router_failure(choice.kind, message, retry_after=retry_after)
            changed = state.changed
            with trio.move_on_at(wake):
                await changed.wait()

    async def _hold_budget(self, ranked: Sequence[str]) -> str | ProviderErrorData:
        """The first of ``ranked`` whose budgets (its provider's, the request's token's) can hold the
        attempt's expected cost, with the hold taken (:attr:`hold`); else ``budget_exceeded``."""
        context = self.context
        budgets = context.budgets
        assert budgets is not None
        state = context.state
        principal = self.request.principal
        token = token_account(principal) if principal is not None else None
        refusals = []
        for name in ranked:
            accounts = [a for a in (provider_account(name), token) if a is not None and budgets.covers(a)]
            if not accounts:
                return name
            view = state.views[name]
            hold = await budgets.reserve(accounts, self._expected_cost(view))
            if isinstance(hold, BudgetHold):
                self.hold = hold
                self.hold_attempt = self.attempt + 1  # the attempt about to be sent
                return name
            refusals.append(f"{name}: {hold.message}")
        return self._router_failure(ErrorKind.BUDGET_EXCEEDED, "; ".join(refusals))

    def _expected_cost(self, view: AgentView) -> float:
        """The most the next attempt on ``view`` may cost (USD): the estimated input, and ``max_tokens``
        (else the model's output limit) of output, at the model's price there (0 if unknown)."""
        model = self.model
        assert model is not None
        price = self.context.state.price(view, model)
        if price is None:
            return 0.0
        needs = self.needs
        output = needs.max_tokens
        if output is None:
            features = view.features_for(model)
            output = features.max_output_tokens if features is not None else DEFAULT_OUTPUT_TOKENS
        return price.cost(needs.input_tokens, output)

    async def _settle_budget(self, result: Final | None) -> None:
        """Settle the outstanding attempt's budget hold with what it cost (failures cost nothing)."""
        hold = self.hold
        if hold is None:
            return
        self.hold = None
        budgets = self.context.budgets
        assert budgets is not None
        cost = result.usage.cost if isinstance(result, ProviderResponse) else None
        await budgets.settle(hold, cost or 0.0)

    async def _send(self, agent: str, attempt: int) -> Final:
        """Send attempt ``attempt`` to ``agent``; its terminal (the agent's, or one made up for it)."""
        # A request stopped by now must not send an attempt it cannot publish (its terminal would answer
        # a request nobody saw); from here to the publish's delivery nothing can yield.
        await trio.lowlevel.checkpoint_if_cancelled()
        context = self.context
        view = context.state.views[agent]
        now = self.sent_at = trio.current_time()
        deadline = min(self.deadline, now + view.config.timeout)
        r = self.request
        # The model the caller named, else the one the route chose; None ("your default") when the route
        # chose the agent's own default model for a request that named none.
        model = self.model
        attempt_model = None if r.model is None and model == view.config.model else model
        # Built field by field: this is on every request's path, and attrs.evolve introspects each time.
        request = ProviderRequest(
            r.request_id, r.messages, attempt_model, r.options, deadline, agent, attempt, r.required_features,
            r.principal,
        )
        self._outstanding_on(view, attempt)
        subject = attempt_subject(r.request_id, attempt)
        claims = context.bus.claims
        claims.open(subject)
        # Taken right before the publish, which delivers before it can yield: a crash the router handles
        # later than this position happened after the attempt went out.
        self.dispatch_mark = context.inbox_position()
        await self._publish(request, DISPATCH, subject)
        with trio.move_on_at(deadline + context.terminal_grace):
            await self.answered.wait()
        if self.outstanding and not claims.take(subject):
            # The agent took the claim first: its terminal is on its way (a busy machine delivered it
            # late, or it is still being handled). Wait for it, bounded, rather than answer twice.
            with trio.move_on_after(context.publish_timeout):
                await self.answered.wait()
            if self.outstanding:
                message = f"provider agent {agent}'s answer did not reach the router"
                self._answer(self._failure_on_behalf(ErrorKind.TIMEOUT, message), on_behalf=False)
        if self.outstanding:  # the agent neither answered nor crashed: it hangs (the claim is ours)
            message = f"provider agent {agent} gave no answer by the deadline"
            self._answer(self._failure_on_behalf(ErrorKind.TIMEOUT, message), on_behalf=True)
            self.claimed = True
        await self._publish_on_behalf()
        assert self.result is not None
        if self.hold is not None:
            await self._settle_budget(self.result)
        return self.result

    def _outstanding_on(self, view: AgentView, attempt: int) -> None:
        """Attempt ``attempt`` goes to ``view``'s agent: it now awaits its terminal and holds a slot."""
        if self.result is not None and self.history is None:
            self.history = [self._outcome(self.result)]  # the first attempt, ended: keep how
        self.attempt = attempt
        self.agent = view.name
        self.outstanding = True
        self.dispatch_mark = math.inf
        self.result = None
        self.on_behalf_pending = False
        self.claimed = False
        if self.answered.is_set():
            self.answered = trio.Event()
        self.tried.append(view.name)
        self._view = view
        view.active += 1

    def _answer(self, result: Final, *, on_behalf: bool) -> None:
        """Record the terminal of the outstanding attempt (once) and free the agent's slot."""
        if not self.outstanding:
            return
        self.outstanding = False
        self.result = result
        self.on_behalf_pending = on_behalf
        self.answered.set()
        if self.history is not None:
            self.history.append(self._outcome(result))
        view = self._view
        if view is not None:
            view.active = max(0, view.active - 1)
            if view.draining and not view.active:
                self.context.state.notify()  # someone may wait for the drained agent to be idle

    async def _finish(self, final: Final | None) -> None:
        """End the request: answer for an attempt still outstanding, publish the final result (shielded
        and bounded: no cancel scope at all unless the bus makes it wait), and wake the caller."""
        try:
            if final is None:
                final = self._stopped_final()
            if self.outstanding:
                if isinstance(final, ProviderErrorData):
                    failure = attrs.evolve(final, attempt=self.attempt, provider=self.agent)
                else:
                    failure = self._failure_on_behalf(ErrorKind.CANCELLED, "the request ended")
                self._answer(failure, on_behalf=True)
            if self.hold is not None:
                # The hold's attempt may not have gone out, or not have been answered: then it cost nothing.
                result = self.result
                if result is not None and result.attempt != self.hold_attempt:
                    result = None
                with trio.CancelScope(shield=True), trio.move_on_after(self.context.publish_timeout):
                    await self._settle_budget(result)
            await self._publish_on_behalf(shielded=True)
            if isinstance(final, ProviderErrorData) and self.chunks > 0 and not final.partial:
                final = attrs.evolve(final, partial=True)
            history = self.history
            if history is not None and len(history) > 1 and not final.attempts:
                final = attrs.evolve(final, attempts=tuple(history))
            self.final = final
            await self._publish(final, SOURCE, shielded=True)
        finally:
            if self.final is None:
                self.final = final or self._router_failure(ErrorKind.SHUTDOWN, "the router shut down")
            if self.chunks_out is not None:
                self.chunks_out.close()
            self.done.set()

    # --- publishing --------------------------------------------------------------------------------

    async def _publish(
        self,
        payload: Final | ProviderRequest,
        source: str,
        subject: str | None = None,
        *,
        shielded: bool = False,
    ) -> None:
        """Publish a payload as the router (``subject`` overrides the envelope's, which is the request
        id); a closed bus is ignored. Delivered at once when nobody's buffer is full (no scheduler round
        trip), so this is a cancellation point only when it has to wait. ``shielded``: no cancellation
        interrupts it, bounded by ``publish_timeout``, for results that must go out."""
        signal = Signal(
            payload.TYPE, source, payload, subject=subject or payload.request_id, provider=payload.provider
        )
        context = self.context
        await context.bus.deliver(signal, shielded_for=context.publish_timeout if shielded else None)

    async def _publish_on_behalf(self, *, shielded: bool = False) -> None:
        """Publish the outstanding attempt's terminal the router made up, if it has not gone out yet and
        the agent did not take the claim to publish its own (see :class:`~duckagents.bus.TerminalClaims`)."""
        if self.on_behalf_pending and self.result is not None:
            self.on_behalf_pending = False
            subject = attempt_subject(self.request_id, self.attempt)
            claimed, self.claimed = self.claimed, False
            if claimed or self.context.bus.claims.take(subject):
                await self._publish(self.result, DISPATCH, subject, shielded=shielded)

    # --- outcomes ----------------------------------------------------------------------------------

    def _outcome(self, result: Final) -> AttemptOutcome:
        """How the current attempt ended (``result``), for the history."""
        outcome = "response" if isinstance(result, ProviderResponse) else result.kind.value
        return AttemptOutcome(self.attempt, self.agent or "-", result.model, outcome, result.latency)

    def _may_retry(self, failure: ProviderErrorData, now: float) -> bool:
        """Is another attempt allowed after ``failure``? Never once chunks were delivered (a stream is
        not idempotent), past the deadline, or after a crash put down to this request, or a second crash
        (see :data:`MAX_CRASH_RETRIES`). (Nor while the router is closing: see the caller.)"""
        if self.chunks > 0 or failure.partial or now >= self.deadline:
            return False
        if failure.kind is ErrorKind.AGENT_CRASHED:
            self.crashes += 1
            if self.crashes > MAX_CRASH_RETRIES:
                return False
        # An agent stopped while the tree keeps running is like a crash: another agent can serve; so can
        # another agent for a model this one does not have.
        return failure.retryable or failure.kind is ErrorKind.SHUTDOWN or failure.kind in _CANNOT_SERVE

    def _stopped_final(self) -> Final:
        """The final result of a request stopped from outside (or whose routing failed)."""
        if self.result is not None and not self.outstanding and self.stop_kind is not ErrorKind.CANCELLED:
            return self.result  # its attempt had already ended: that is the answer
        kind = self.stop_kind or ErrorKind.AGENT_CRASHED
        return self._router_failure(kind, self.stop_message or "the router failed while routing the request")

    def _internal_failure(self, exc: Exception) -> ProviderErrorData:
        """The final result of a request whose routing raised ``exc``; logs its traceback once."""
        description = self.context.faults.request_failed(exc, f"router: request {self.request_id}")
        message = f"internal error while routing the request: {description}"
        return self._router_failure(ErrorKind.INTERNAL, message)

    def _failure_on_behalf(self, kind: ErrorKind, message: str) -> ProviderErrorData:
        """The terminal of the outstanding attempt, made up by the router on the agent's behalf (its latency
        is the router's measure, from the dispatch)."""
        error = ProviderError(kind, message, retryable=kind in _RETRYABLE_ON_BEHALF)
        return self._failure(error, latency=trio.current_time() - self.sent_at)

    def _router_failure(
        self, kind: ErrorKind, message: str, *, retry_after: float | None = None
    ) -> ProviderErrorData:
        """A final failure decided by the router itself (no provider, shutdown, cancelled...)."""
        return self._failure(ProviderError(kind, message, retry_after=retry_after))

    def _failure(self, error: ProviderError, latency: float | None = None) -> ProviderErrorData:
        return ProviderErrorData.from_error(
            self.request_id, error,
            provider=self.agent, model=self.model or self.request.model, attempt=self.attempt,
            partial=self.chunks > 0, latency=latency,
        )

    def _no_provider(self, reasons: Sequence[str]) -> str:
        needs = ", ".join(sorted(self.needs.features)) or "nothing special"
        detail = "; ".join(reasons) or "no provider agents are configured"
        return f"no provider can serve this request (needs: {needs}): {detail}"


def build_request(
    prompt: str | Sequence[Message],
    *,
    model: str | None,
    provider: str | None,
    required_features: Sequence[str],
    stream: bool,
    options: dict[str, Any],
    timeout: float | None = None,
    principal: str | None = None,
) -> ProviderRequest:
    """A caller's request from ``complete()`` / ``stream()`` arguments.

    ``options`` are :class:`RequestOptions` fields (``max_tokens``, ``temperature``, ``tools``...);
    an unknown one raises ``ProviderError(invalid_request)``. ``timeout`` (seconds from now) becomes the
    deadline; None leaves it to the router's ``request_timeout``. ``principal`` names who asks (a
    gateway token's name), for per-token budgets.
    """
    messages = (Message.user(prompt),) if isinstance(prompt, str) else tuple(prompt)
    if not messages:
        raise ProviderError(ErrorKind.INVALID_REQUEST, "a request needs at least one message")
    opts = dict(options)
    request_id = opts.pop("request_id", None) or new_id()
    try:
        for key in ("stop", "tools"):
            if key in opts and opts[key] is not None:
                opts[key] = tuple(opts[key])
        if "tools" in opts:
            opts["tools"] = tuple(t if isinstance(t, ToolSpec) else ToolSpec(**t) for t in opts["tools"])
        request_options = RequestOptions(stream=stream, **opts)
    except (TypeError, ValueError) as exc:
        message = f"bad request option: {exc}"[:MAX_ERROR_CHARS]
        raise ProviderError(ErrorKind.INVALID_REQUEST, message) from None
    return ProviderRequest(
        request_id=request_id,
        messages=messages,
        model=model,
        options=request_options,
        deadline=None if timeout is None else trio.current_time() + timeout,
        provider=provider,
        required_features=tuple(required_features),
        principal=principal,
    )
