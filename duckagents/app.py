"""``open_router()``: the supervision tree built from a :class:`~duckagents.config.Config`.

::

    root supervisor "duckagents" (one_for_one; budget: [supervision] max_restarts in period)
    ├── router                       (permanent)  started first, so it is stopped last
    ├── agent:<name 1>               (temporary)  a supervisor of its own per [[providers]] entry
    │   └── agent:<name 1>           (permanent)  the provider agent (budget: agent_max_restarts in
    │                                             agent_period, restarts after a backoff)
    └── agent:<name n> ...

Isolation: an agent that keeps crashing exhausts the budget of its own supervisor, which gives up (event
``gave_up`` from supervisor ``agent:<name>``, carrying the last crash's type and message). The root sees
that as the crash of a temporary child: it does not restart it and it costs the root's budget nothing, so
the agent stays down (the router sees the events and routes around it) while the router, the gateway and
the other agents keep serving. The root gives up only when the router itself keeps crashing.

Shutdown, on leaving the block: the router stops taking requests, then the root stops the agents' supervisors
(last first), each stopping its agent — which answers its in-flight attempts with ``shutdown`` — and finally
the router, which answers every request still open. So every outstanding request gets exactly one final
result.

Graceful stop (what ``duckagents serve`` does on SIGTERM / SIGINT): ``await tree.drain()`` first — intake
stops, the requests in flight get up to ``Config.drain_timeout`` seconds to finish, the rest end with
``shutdown`` — then leave the block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import attrs

from .agents import ProviderAgent, build_agent
from .bus import SignalBus
from .config import Config, SupervisionConfig, default_config, load_config
from .costs import Budget, BudgetLedger, InMemoryBudgets, PriceTable, provider_account, token_account
from .providers import Provider, max_retry_after
from .router import AGENT_CHILD_PREFIX, RouterAgent
from .supervision import Backoff, ChildSpec, Intensity, Restart, Strategy, Supervisor, open_supervisor

__all__ = ["DEFAULT_INTENSITY", "Tree", "budgets_of", "open_router", "open_tree", "prices_of"]

_DEFAULTS = SupervisionConfig()
#: Restarts the root supervisor allows (3 within 10 s) before it gives up and the tree fails.
DEFAULT_INTENSITY = Intensity(max_restarts=_DEFAULTS.max_restarts, period=_DEFAULTS.period)
ROUTER_CHILD = "router"
#: How long an agent's supervisor may take to stop (its agent's ``shutdown_timeout`` plus a margin).
AGENT_SUPERVISOR_SHUTDOWN = 10.0


@attrs.frozen
class Tree:
    """A running supervision tree: what :func:`open_tree` yields."""

    config: Config
    bus: SignalBus
    supervisor: Supervisor
    router: RouterAgent
    agents: dict[str, ProviderAgent]
    #: The supervisor of each agent (by provider name): its restarts, events and budget.
    agent_supervisors: dict[str, Supervisor] = attrs.field(factory=dict)
    #: Where spend is counted against budgets (None when the config sets none).
    budgets: BudgetLedger | None = None

    # Not a deadline for the call: when it passes, the requests still in flight are stopped.
    async def drain(self, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Stop intake and let the requests in flight finish for up to ``timeout`` seconds (default:
        ``config.drain_timeout``); then stop the rest, each with a ``shutdown`` final result. Returns how
        many were stopped. Cancelling it stops the rest at once. See :meth:`RouterAgent.drain`."""
        return await self.router.drain(self.config.drain_timeout if timeout is None else timeout)


def prices_of(config: Config) -> PriceTable:
    """The price table of ``config``: its ``[models."name"] price`` entries over the built-in prices."""
    return PriceTable({model: m.price for model, m in config.models.items() if m.price is not None})


def budgets_of(config: Config) -> BudgetLedger | None:
    """An in-process ledger of ``config``'s budgets (per provider, per gateway token), or None."""
    budgets: dict[str, Budget] = {}
    for provider in config.providers:
        if provider.budget is not None:
            budgets[provider_account(provider.name)] = provider.budget
    for token in config.gateway.tokens:
        if token.budget is not None:
            budgets[token_account(token.label)] = token.budget
    return InMemoryBudgets(budgets) if budgets else None


def resolve_config(config: Config | str | Path | None) -> Config:
    """A :class:`Config` from a Config, a TOML path, or None (the embedded default)."""
    if config is None:
        return default_config()
    if isinstance(config, str | Path):
        return load_config(config)
    return config


@asynccontextmanager
async def open_tree(
    config: Config | str | Path | None = None,
    *,
    bus: SignalBus | None = None,
    environ: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] | None = None,
    intensity: Intensity | None = None,
    agent_intensity: Intensity | None = None,
    agent_backoff: Backoff | None = None,
    ready_timeout: float = 5.0,
    budgets: BudgetLedger | None = None,
) -> AsyncIterator[Tree]:
    """Run the whole tree for the duration of the block (see the module docstring).

    ``providers`` replaces the provider of the named agents with the given instances (tests, embedding
    apps; the caller owns and closes them). API keys come from ``environ`` (default ``os.environ``).
    ``intensity`` (the root's, i.e. the router's budget), ``agent_intensity`` and ``agent_backoff`` override
    the ``[supervision]`` configuration. Waits up to ``ready_timeout`` seconds for every agent's first
    status and features before yielding (an agent that cannot come up does not hold the tree back longer).

    Upstream wait hints (``retry-after``...) are capped at ``[router] max_retry_after`` in every task of
    the tree.
    ``budgets`` replaces the in-process ledger of the config's budgets (e.g. one shared by a fleet).
    """
    cfg = resolve_config(config)
    own_bus = bus is None
    signal_bus = SignalBus() if bus is None else bus
    given = dict(providers or {})
    prices = prices_of(cfg)
    ledger = budgets if budgets is not None else budgets_of(cfg)
    agents = {
        p.name: build_agent(
            p, signal_bus, provider=given.get(p.name), environ=environ, health_interval=cfg.health_interval,
            prices=prices,
        )
        for p in cfg.providers
    }
    router = RouterAgent(
        signal_bus, cfg.providers, cfg.router, ready_timeout=ready_timeout, models=cfg.models, prices=prices,
        budgets=ledger, limits=cfg.validation,
    )
    sup = cfg.supervision
    budget = agent_intensity or Intensity(max_restarts=sup.agent_max_restarts, period=sup.agent_period)
    backoff = agent_backoff or Backoff(initial=sup.agent_backoff_initial, max=sup.agent_backoff_max)
    agent_supervisors = {
        name: Supervisor(
            AGENT_CHILD_PREFIX + name,
            [ChildSpec(AGENT_CHILD_PREFIX + name, agent.run, restart=Restart.PERMANENT)],
            intensity=budget,
            backoff=backoff,
            bus=signal_bus,
        )
        for name, agent in agents.items()
    }
    children = [ChildSpec(ROUTER_CHILD, router.run, restart=Restart.PERMANENT)]
    children += [
        # Temporary: a supervisor that gave up stays down, and costs the root's budget nothing.
        ChildSpec(name, agent_sup.run, restart=Restart.TEMPORARY, shutdown_timeout=AGENT_SUPERVISOR_SHUTDOWN)
        for name, agent_sup in ((s.name, s) for s in agent_supervisors.values())
    ]
    root_intensity = intensity or Intensity(max_restarts=sup.max_restarts, period=sup.period)
    cap = max_retry_after.set(cfg.router.max_retry_after)  # inherited by every task the tree starts
    try:
        async with open_supervisor(
            "duckagents", children, strategy=Strategy.ONE_FOR_ONE, intensity=root_intensity, bus=signal_bus
        ) as supervisor:
            await router.wait_ready(ready_timeout)
            try:
                yield Tree(cfg, signal_bus, supervisor, router, agents, agent_supervisors, ledger)
            finally:
                router.close_intake()
    finally:
        max_retry_after.reset(cap)
        if own_bus:
            signal_bus.close()


@asynccontextmanager
async def open_router(
    config: Config | str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] | None = None,
) -> AsyncIterator[RouterAgent]:
    """The router of a running tree built from ``config`` (a Config, a TOML path, or None for the
    embedded default: the mock provider). Leaving the block shuts the tree down; every request still
    in flight gets its final result (``shutdown``)."""
    async with open_tree(config, environ=environ, providers=providers) as tree:
        yield tree.router
