"""What the router knows about its agents, kept current from signals, and how it chooses one.

:class:`RouterState` holds the router's view of each agent (:class:`~._agent_view.AgentView`), the
feature checks awaiting a reply, whether the router is closing, and where it is in its inbox, plus the
model routes and prices of the config. Everything here is synchronous: the router's signal loop hands it
each signal about an agent, in bus order, and never waits on anything else (so the bus never waits on the
router). The requests in flight are not here: each is a :class:`~._request.RoutedRequest`, which asks
this state for the agents that may take its next attempt (:meth:`RouterState.choose`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import attrs
import trio

from ..config import ModelConfig, ProviderConfig, RouterConfig, is_pattern
from ..costs import ModelPrice, PriceTable
from ..errors import ErrorKind
from ..signals import (
    ControlReply,
    FeatureCheck,
    FeatureReply,
    ProviderErrorData,
    ProviderResponse,
    ProviderStatus,
    SupervisorEvent,
    new_id,
)
from ._agent_view import AgentView, Needs
from ._routes import ModelRoutes
from ._strategies import RequestShape, RoutingStrategy

__all__ = ["AGENT_CHILD_PREFIX", "AgentGone", "NoneFits", "RouterState", "Wait"]

#: Supervisor child ids of provider agents are ``agent:<name>``.
AGENT_CHILD_PREFIX = "agent:"
_GONE_EVENTS = frozenset({"crashed", "exited", "shutdown", "killed", "gave_up"})
_BACK_EVENTS = frozenset({"started", "restarted"})
#: Model names whose serving agents (and prices) the state keeps looked up (requests may name any).
ROUTE_CACHE = 1024


@attrs.frozen
class Wait:
    """No agent now; the earliest may be back at ``until`` (``inf``: when the view changes)."""

    until: float
    kind: ErrorKind
    reasons: tuple[str, ...]

    def bound(self, deadline: float, now: float) -> float | None:
        """When to look again, or None if waiting cannot help before ``deadline``."""
        if now >= deadline or (self.until > deadline and self.until != math.inf):
            return None
        return min(self.until, deadline)


@attrs.frozen
class NoneFits:
    """No agent can ever serve the request for this model; ``reasons`` says why, per agent, and ``kinds``
    the kind of each reason (``context_length`` everywhere means the request is too big for the model).
    No reasons at all: no agent serves the model."""

    reasons: tuple[str, ...]
    kinds: frozenset[ErrorKind] = frozenset()


@attrs.frozen
class AgentGone:
    """An agent went down (a supervisor's ``crashed``, ``shutdown``...): what its outstanding attempts
    published before ``position`` in the router's inbox end with."""

    agent: str
    kind: ErrorKind
    message: str
    position: int


class RouterState:
    """The router's picture of its agents, kept current from signals; see the module docstring."""

    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        *,
        on_agent_seen: Callable[[AgentView], None] = lambda view: None,
        models: Mapping[str, ModelConfig] | None = None,
        config: RouterConfig = RouterConfig(),
        prices: PriceTable | None = None,
    ) -> None:
        self.views: dict[str, AgentView] = {p.name: AgentView(p, i) for i, p in enumerate(providers)}
        #: The default model and the fallback chains.
        self.routes = ModelRoutes(providers, models or {}, config)
        #: Model prices (the config's over the built-in table), for the ``cheapest`` strategy and budgets.
        self.prices = prices or PriceTable({m: c.price for m, c in (models or {}).items() if c.price})
        self._serving: dict[str, list[AgentView]] = {}
        self._prices: dict[tuple[str, str], ModelPrice | None] = {}
        #: Feature checks awaiting a reply: check id -> (agent, asked for its default model).
        self.feature_checks: dict[str, tuple[str, bool]] = {}
        #: Set (and replaced) whenever the view changes; waiters re-check their condition.
        self.changed = trio.Event()
        #: The router takes no requests and retries nothing any more.
        self.closing = False
        #: Called when an agent shows up (status, restart) so the router can ask for its features.
        self.on_agent_seen = on_agent_seen
        #: Signals handled so far: the position in the router's inbox of the one being handled.
        self.position = 0

    def notify(self) -> None:
        """Wake everyone waiting for the view to change."""
        self.changed.set()
        self.changed = trio.Event()

    def views_changed(self) -> None:
        """Call after adding or removing a view: forgets which agents serve which model."""
        self._serving.clear()
        self._prices.clear()
        self.notify()

    def reconfigure(
        self,
        providers: Sequence[ProviderConfig],
        models: Mapping[str, ModelConfig],
        config: RouterConfig,
        prices: PriceTable | None = None,
    ) -> None:
        """Route by a new configuration (a reload): the default model and fallback chains of
        ``providers`` and ``models``, and the prices (the views follow with :meth:`add_view` /
        :meth:`remove_view`)."""
        self.routes = ModelRoutes(providers, models, config)
        self.prices = prices or PriceTable({m: c.price for m, c in models.items() if c.price})
        self.views_changed()

    def serving(self, model: str) -> list[AgentView]:
        """The agents that serve ``model``, in config order (looked up once per model name)."""
        cache = self._serving
        found = cache.get(model)
        if found is None:
            if len(cache) >= ROUTE_CACHE:
                cache.clear()
            found = cache[model] = [v for v in self.views.values() if v.config.serves(model)]
        return found

    def price(self, view: AgentView, model: str) -> ModelPrice | None:
        """What ``model`` costs on ``view``'s agent (None: unknown)."""
        key = (view.name, model)
        cache = self._prices
        try:
            return cache[key]
        except KeyError:
            pass
        if len(cache) >= ROUTE_CACHE:
            cache.clear()
        config = view.config
        found = cache[key] = self.prices.price(config.kind, model, config.price)
        return found

    # --- signals ---------------------------------------------------------------------------------

    def observe_status(self, status: ProviderStatus) -> None:
        """A ``provider_status``: the agent is up, with this breaker state and limiter headroom."""
        view = self.views.get(status.provider)
        if view is not None:
            view.observe_status(status)
            self.on_agent_seen(view)
            self.notify()

    def observe_features(self, reply: FeatureReply) -> None:
        """A ``feature_reply``: taken only when it answers one of our pending checks."""
        asked = self.feature_checks.pop(reply.request_id, None)
        view = self.views.get(reply.provider)
        if view is not None and asked is not None:
            view.observe_features(reply, asked[1])
            self.notify()

    def observe_terminal(self, payload: ProviderResponse | ProviderErrorData) -> None:
        """An agent's terminal: what it says about the agent (latency, breaker, retry-after)."""
        view = self.views.get(payload.provider) if payload.provider is not None else None
        if view is not None:
            view.observe_terminal(payload, trio.current_time())
            if isinstance(payload, ProviderErrorData) and payload.retry_after is not None:
                self.notify()

    def observe_control(self, reply: ControlReply) -> None:
        """A ``control_reply``: a breaker switch or drain/resume of an agent takes effect in its view."""
        view = self.views.get(reply.provider) if reply.provider is not None else None
        if view is not None:
            view.observe_control(reply)
            self.notify()

    def add_view(self, config: ProviderConfig) -> AgentView:
        """Follow a new agent (a reload added it), or replace the view of one with that name (a reload
        changed its config: the new incarnation starts from nothing, in the old one's place)."""
        old = self.views.get(config.name)
        order = old.order if old is not None else max((v.order for v in self.views.values()), default=-1) + 1
        view = AgentView(config, order)
        self.views[config.name] = view
        self.views_changed()
        return view

    def remove_view(self, name: str) -> None:
        """Stop following an agent (a reload removed it); requests pinned to it fail as ``no_provider``."""
        if self.views.pop(name, None) is not None:
            self.views_changed()

    def observe_supervisor_event(self, event: SupervisorEvent) -> AgentGone | None:
        """A ``supervisor_event`` about a provider agent; returns the loss when the agent went down (the
        caller then ends the attempts that may have been lost with it)."""
        if not event.child.startswith(AGENT_CHILD_PREFIX):
            return None
        view = self.views.get(event.child[len(AGENT_CHILD_PREFIX) :])
        if view is None:
            return None
        gone = None
        if event.event in _BACK_EVENTS:
            view.up = True
            view.down = None
            self.on_agent_seen(view)
        elif event.event in _GONE_EVENTS:
            view.up = False
            if event.event in ("crashed", "gave_up"):
                view.down = f"{event.event}: {event.reason}"[:200] if event.reason else event.event
            stopped = event.event in ("shutdown", "killed") and self.closing
            kind = ErrorKind.SHUTDOWN if stopped else ErrorKind.AGENT_CRASHED
            reason = f": {event.reason}" if event.reason else ""
            message = f"provider agent {view.name} {event.event}{reason}"
            gone = AgentGone(view.name, kind, message, self.position)
        self.notify()
        return gone

    def new_feature_checks(self, view: AgentView) -> list[FeatureCheck]:
        """Feature checks to send ``view``'s agent (its default model, then each configured model),
        registered to await their replies. The unanswered checks of an earlier ask are forgotten, so the
        table stays bounded."""
        checks = self.feature_checks
        for check_id in [c for c, (name, _) in checks.items() if name == view.name]:
            del checks[check_id]
        new = []
        named = [m for m in (*view.config.models, *self.routes.named_models)
                 if not is_pattern(m) and view.config.serves(m)]
        for model in dict.fromkeys([None, *named]):
            check = FeatureCheck(new_id(), provider=view.name, model=model)
            checks[check.request_id] = (view.name, model is None)
            new.append(check)
        return new

    # --- choosing --------------------------------------------------------------------------------

    def choose(
        self,
        needs: Needs,
        model: str,
        *,
        pinned: str | None,
        tried: Collection[str],
        strategy: RoutingStrategy,
        now: float,
        excluded: Collection[str] = (),
    ) -> list[str] | Wait | NoneFits:
        """The agents that may take a request's next attempt for ``model``, best first (only ``pinned``
        if set; never those ``excluded``): ``strategy``'s ranking of the eligible ones, agents whose last
        probe failed after the healthy ones, and those ``tried`` after those not tried yet. Else how long
        to wait; else why nobody fits."""
        if pinned is not None:
            view = self.views.get(pinned)
            if view is None:  # a reload removed it
                return NoneFits((f"{pinned}: no such provider any more",))
            views = [view]
        else:
            views = self.serving(model)
        eligible: list[AgentView] = []
        waits: list[tuple[float, ErrorKind]] = []
        reasons: list[str] = []
        kinds: set[ErrorKind] = set()
        for view in views:
            if view.name in excluded:
                reasons.append(f"{view.name}: already failed for this request")
                kinds.add(ErrorKind.NO_PROVIDER)
                continue
            verdict = view.eligibility(needs, model, now)
            if verdict.ok:
                eligible.append(view)
            else:
                reasons.append(verdict.reason)
                if verdict.retry_at is not None:
                    waits.append((verdict.retry_at, verdict.kind))
                else:
                    kinds.add(verdict.kind)
        if eligible:
            if len(eligible) == 1:
                return [eligible[0].name]  # nothing to rank (and the strategy keeps its turn)
            shape = RequestShape(needs.input_tokens, needs.max_tokens)
            ranked = strategy.rank([v.candidate(self.price(v, model)) for v in eligible], shape)
            views_by_name = self.views
            # Stable sort: the strategy's order within (not tried before tried, healthy before not).
            return sorted(
                (c.name for c in ranked),
                key=lambda name: (name in tried, not views_by_name[name].healthy),
            )
        if not waits:
            return NoneFits(tuple(reasons), frozenset(kinds))
        until, kind = min(waits, key=lambda w: w[0])
        return Wait(until, kind, tuple(reasons))
