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

Reload (:meth:`Tree.reload`, also ``router.controls.reload()``, the gateway's ``reload`` op, ``duckagents
reload`` and SIGHUP in ``duckagents serve``): the configuration is read and every new agent built first,
so an invalid one is refused whole and changes nothing. Then added providers start (an agent supervisor
joins the root, a view the router), removed ones are drained (no new attempts; those in flight finish, up
to the provider's ``timeout``) and stopped, changed ones are drained, stopped and started again from their
new config under the same name. Requests in flight are never lost: attempts go to the other agents
meanwhile, or wait for the replacement within their deadline. ``[router]`` settings apply to new requests
(but ``max_retry_after``), new agents get the new ``[supervision]`` agent budget; ``[gateway]``, the root's
budget, ``max_retry_after`` and budgets need a restart (the report says so); new prices apply to the
agents the reload starts and to routing.

Fleet mode (``[fleet]`` in the config, docs/fleet.md): the tree first joins the fleet
(:func:`duckagents.fleet.open_replica`); every agent then gets its shared limiter and breaker from it (also
the agents a reload starts), the router the fleet-wide budget ledger, the bus is copied to the fleet's
stream and the replica's status is shared. Redis being down does not stop the tree from starting (it
starts degraded). The replica is left after the tree stopped, so the last final results still reach the
stream. ``[fleet]`` changes need a restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .agents import GateFactory, ProviderAgent, build_agent
from .bus import SignalBus
from .config import Config, FleetConfig, ProviderConfig, SupervisionConfig, default_config, load_config
from .costs import Budget, BudgetLedger, InMemoryBudgets, PriceTable, provider_account, token_account
from .errors import ConfigError, ControlError
from .providers import Provider, max_retry_after
from .router import AGENT_CHILD_PREFIX, ReloadReport, RouterAgent
from .supervision import Backoff, ChildSpec, Intensity, Restart, Strategy, Supervisor, open_supervisor

if TYPE_CHECKING:
    from .fleet import FleetReplica

__all__ = [
    "DEFAULT_INTENSITY", "Tree", "budget_table", "budgets_of", "open_router", "open_tree", "prices_of",
]

_DEFAULTS = SupervisionConfig()
#: Restarts the root supervisor allows (3 within 10 s) before it gives up and the tree fails.
DEFAULT_INTENSITY = Intensity(max_restarts=_DEFAULTS.max_restarts, period=_DEFAULTS.period)
ROUTER_CHILD = "router"
#: How long an agent's supervisor may take to stop (its agent's ``shutdown_timeout`` plus a margin).
AGENT_SUPERVISOR_SHUTDOWN = 10.0


class Tree:
    """A running supervision tree: what :func:`open_tree` yields. ``config`` and ``agents`` follow
    reloads (:meth:`reload`)."""

    def __init__(
        self,
        config: Config,
        bus: SignalBus,
        supervisor: Supervisor,
        router: RouterAgent,
        agents: dict[str, ProviderAgent],
        agent_supervisors: dict[str, Supervisor] | None = None,
        budgets: BudgetLedger | None = None,
        *,
        source: Path | None = None,
        environ: Mapping[str, str] | None = None,
        providers: Mapping[str, Provider] | None = None,
        agent_intensity: Intensity | None = None,
        agent_backoff: Backoff | None = None,
        fleet: FleetReplica | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.supervisor = supervisor
        self.router = router
        self.agents = agents
        #: The supervisor of each agent (by provider name): its restarts, events and budget.
        self.agent_supervisors = agent_supervisors if agent_supervisors is not None else {}
        #: Where spend is counted against budgets (None when the config sets none).
        self.budgets = budgets
        #: This process as a replica of the fleet (``[fleet]`` configured), else None.
        self.fleet = fleet
        self._agent_intensity = agent_intensity
        self._agent_backoff = agent_backoff
        #: The file the configuration came from (what a reload re-reads), if any.
        self.source = source
        self._environ = environ
        self._given = dict(providers or {})
        self._reloading = trio.Lock()

    async def reload(
        self,
        config: Config | str | Path | None = None,
        *,
        principal: str = "api",
        providers: Mapping[str, Provider] | None = None,
    ) -> ReloadReport:
        """Apply a new configuration without a restart (see the module docstring): ``config`` (a Config,
        a TOML path), or None to re-read :attr:`source`. ``providers`` replaces the provider of the named
        new or changed agents (tests, embedding apps). Raises :class:`ConfigError` for an invalid
        configuration, before anything changed. One reload at a time."""
        async with self._reloading:
            if self.router.state.closing:
                raise ControlError("the tree is shutting down: nothing to reload")
            new = self._read(config)
            old = self.config
            before = {p.name: p for p in old.providers}
            after = {p.name: p for p in new.providers}
            added = tuple(n for n in after if n not in before)
            removed = tuple(n for n in before if n not in after)
            changed = tuple(n for n in after if n in before and after[n] != before[n])
            unchanged = tuple(n for n in after if n in before and after[n] == before[n])
            given = {**self._given, **(providers or {})}
            prices = prices_of(new)
            built = await self._build_all(
                [after[n] for n in (*added, *changed)], given, new.health_interval, prices
            )
            notes: list[str] = []
            if new.gateway != old.gateway:
                notes.append("[gateway] changes apply at the next restart")
            root = (new.supervision.max_restarts, new.supervision.period)
            if root != (old.supervision.max_restarts, old.supervision.period):
                notes.append("[supervision] max_restarts and period apply at the next restart")
            if new.router.max_retry_after != old.router.max_retry_after:
                notes.append("[router] max_retry_after applies at the next restart")
            if _budgets(new) != _budgets(old):
                notes.append("budgets apply at the next restart")
            if new.fleet != old.fleet:
                notes.append("[fleet] changes apply at the next restart")
            self.router.configure(new.router, providers=new.providers, models=new.models, prices=prices)
            for name in unchanged:
                self.agents[name].health_interval = new.health_interval
            budget, backoff = agent_budget(new.supervision, self._agent_intensity, self._agent_backoff)
            supervised = {n: agent_supervisor(n, a, budget, backoff, self.bus) for n, a in built.items()}
            for name in added:
                self.router.add_view(after[name])
                await self._start(name, built[name], supervised[name])
            async with trio.open_nursery() as nursery:
                for name in (*removed, *changed):
                    replacement = (after[name], built[name], supervised[name]) if name in after else None
                    nursery.start_soon(self._retire, before[name], replacement, principal, notes)
            self.config = new
            self._given = given
            if isinstance(config, str | Path):
                self.source = Path(config)  # what the next reload re-reads
            if (added or changed) and not await self.router.wait_ready():
                notes.append("not every new agent reported within the ready timeout")
            return ReloadReport(added, removed, changed, unchanged, tuple(notes))

    # Not a deadline for the call: when it passes, the requests still in flight are stopped.
    async def drain(self, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Stop intake and let the requests in flight finish for up to ``timeout`` seconds (default:
        ``config.drain_timeout``); then stop the rest, each with a ``shutdown`` final result. Returns how
        many were stopped. Cancelling it stops the rest at once. See :meth:`RouterAgent.drain`. (The
        tree-wide drain; one agent's is ``router.controls.drain(name)``.)"""
        return await self.router.drain(self.config.drain_timeout if timeout is None else timeout)

    def _read(self, config: Config | str | Path | None) -> Config:
        if config is None:
            if self.source is None:
                raise ConfigError(
                    "this tree runs on a configuration given as an object, not read from a file: "
                    "there is no file to re-read"
                )
            return load_config(self.source)
        if isinstance(config, str | Path):
            return load_config(config)
        return config

    async def _build_all(
        self,
        configs: list[ProviderConfig],
        given: Mapping[str, Provider],
        health_interval: float,
        prices: PriceTable,
    ) -> dict[str, ProviderAgent]:
        """Build every new agent, or none: one that cannot be built (a missing API key, bad options)
        refuses the whole reload with the error it gives at start."""
        built: dict[str, ProviderAgent] = {}
        try:
            for p in configs:
                built[p.name] = build_agent(
                    p, self.bus, provider=given.get(p.name), environ=self._environ,
                    health_interval=health_interval, prices=prices, gate_factory=_gates(self.fleet),
                )
        except ConfigError:
            with trio.CancelScope(shield=True):
                for name, agent in built.items():
                    if name not in given:
                        await agent.provider.aclose()
            raise
        return built

    async def _start(self, name: str, agent: ProviderAgent, supervisor: Supervisor) -> None:
        await self.supervisor.add_child(agent_supervisor_spec(supervisor))
        self.agents[name] = agent
        self.agent_supervisors[name] = supervisor

    async def _retire(
        self,
        config: ProviderConfig,
        replacement: tuple[ProviderConfig, ProviderAgent, Supervisor] | None,
        principal: str,
        notes: list[str],
    ) -> None:
        """Drain one agent, wait for its attempts in flight (up to its timeout), stop it; start its
        replacement, if any, under the same name."""
        name = config.name
        controls = self.router.controls
        try:
            await controls.drain(name, principal=principal)
        except ControlError as exc:  # e.g. it is down: stopping it is all there is left to do
            notes.append(f"{name}: {exc}")
        within = config.timeout + self.router.terminal_grace
        if not await controls.wait_idle(name, within):
            notes.append(f"{name}: attempts in flight after {within:g} s end as shutdown, retried elsewhere")
        try:
            await self.supervisor.remove_child(AGENT_CHILD_PREFIX + name)
        except KeyError:
            pass  # its supervisor gave up earlier: the agent is down already
        self.agents.pop(name, None)
        self.agent_supervisors.pop(name, None)
        if replacement is None:
            self.router.remove_view(name)
            return
        new_config, agent, supervisor = replacement
        self.router.add_view(new_config)
        await self._start(name, agent, supervisor)


def agent_budget(
    supervision: SupervisionConfig, intensity: Intensity | None = None, backoff: Backoff | None = None
) -> tuple[Intensity, Backoff]:
    """The restart budget and backoff of each agent's supervisor (``[supervision]``, or the overrides)."""
    s = supervision
    budget = intensity or Intensity(max_restarts=s.agent_max_restarts, period=s.agent_period)
    pause = backoff or Backoff(initial=s.agent_backoff_initial, max=s.agent_backoff_max)
    return budget, pause


def agent_supervisor(
    name: str, agent: ProviderAgent, budget: Intensity, backoff: Backoff, bus: SignalBus
) -> Supervisor:
    """The supervisor of one agent (``agent:<name>``), restarting it within its own budget."""
    return Supervisor(
        AGENT_CHILD_PREFIX + name,
        [ChildSpec(AGENT_CHILD_PREFIX + name, agent.run, restart=Restart.PERMANENT)],
        intensity=budget,
        backoff=backoff,
        bus=bus,
    )


def agent_supervisor_spec(supervisor: Supervisor) -> ChildSpec:
    """An agent's supervisor as a child of the root."""
    # Temporary: a supervisor that gave up stays down, and costs the root's budget nothing.
    return ChildSpec(
        supervisor.name, supervisor.run, restart=Restart.TEMPORARY, shutdown_timeout=AGENT_SUPERVISOR_SHUTDOWN
    )



def _budgets(config: Config) -> tuple[object, ...]:
    return (
        tuple((p.name, p.budget) for p in config.providers if p.budget is not None),
        tuple((t.label, t.budget) for t in config.gateway.tokens if t.budget is not None),
    )


def prices_of(config: Config) -> PriceTable:
    """The price table of ``config``: its ``[models."name"] price`` entries over the built-in prices."""
    return PriceTable({model: m.price for model, m in config.models.items() if m.price is not None})


def budget_table(config: Config) -> dict[str, Budget]:
    """``config``'s budgets by account (per provider, per gateway token)."""
    budgets: dict[str, Budget] = {}
    for provider in config.providers:
        if provider.budget is not None:
            budgets[provider_account(provider.name)] = provider.budget
    for token in config.gateway.tokens:
        if token.budget is not None:
            budgets[token_account(token.label)] = token.budget
    return budgets


def budgets_of(config: Config) -> BudgetLedger | None:
    """An in-process ledger of ``config``'s budgets (per provider, per gateway token), or None."""
    budgets = budget_table(config)
    return InMemoryBudgets(budgets) if budgets else None


def _gates(replica: FleetReplica | None) -> GateFactory | None:
    """What builds an agent's limiter and breaker: the fleet's (shared), or None (the agent's own)."""
    return None if replica is None else replica.gate


def _open_replica(
    config: FleetConfig, bus: SignalBus, environ: Mapping[str, str] | None
) -> AbstractAsyncContextManager[FleetReplica]:
    # Imported here: fleet mode needs the fleet extra (coredis); nothing else does.
    try:
        from .fleet import open_replica
    except ImportError as exc:
        raise ConfigError(f"[fleet] is configured but {exc}") from None
    return open_replica(config, bus, environ=environ)


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
    source: str | Path | None = None,
) -> AsyncIterator[Tree]:
    """Run the whole tree for the duration of the block (see the module docstring).

    ``providers`` replaces the provider of the named agents with the given instances (tests, embedding
    apps; the caller owns and closes them). API keys come from ``environ`` (default ``os.environ``).
    ``intensity`` (the root's, i.e. the router's budget), ``agent_intensity`` and ``agent_backoff`` override
    the ``[supervision]`` configuration. Waits up to ``ready_timeout`` seconds for every agent's first
    status and features before yielding (an agent that cannot come up does not hold the tree back longer).

    Upstream wait hints (``retry-after``...) are capped at ``[router] max_retry_after`` in every task of
    the tree.
    ``budgets`` replaces the ledger of the config's budgets (in-process, or the fleet's).
    A reload re-reads ``config`` when it is a path, else ``source`` (the file a Config object was read
    from), else there is no file to re-read.
    With ``[fleet]`` configured the tree runs as a replica of the fleet (see the module docstring).
    """
    cfg = resolve_config(config)
    if isinstance(config, str | Path):
        source = config
    own_bus = bus is None
    signal_bus = SignalBus() if bus is None else bus
    try:
        async with AsyncExitStack() as stack:
            replica: FleetReplica | None = None
            if cfg.fleet is not None:
                replica = await stack.enter_async_context(_open_replica(cfg.fleet, signal_bus, environ))
            async with _run_tree(
                cfg, signal_bus, replica, environ=environ, providers=providers, intensity=intensity,
                agent_intensity=agent_intensity, agent_backoff=agent_backoff, ready_timeout=ready_timeout,
                budgets=budgets, source=source,
            ) as tree:
                yield tree
    finally:
        if own_bus:
            signal_bus.close()


@asynccontextmanager
async def _run_tree(
    cfg: Config,
    signal_bus: SignalBus,
    replica: FleetReplica | None,
    *,
    environ: Mapping[str, str] | None,
    providers: Mapping[str, Provider] | None,
    intensity: Intensity | None,
    agent_intensity: Intensity | None,
    agent_backoff: Backoff | None,
    ready_timeout: float,
    budgets: BudgetLedger | None,
    source: str | Path | None,
) -> AsyncIterator[Tree]:
    given = dict(providers or {})
    prices = prices_of(cfg)
    ledger = budgets
    if ledger is None and replica is not None and budget_table(cfg):
        # A hold lasts as long as an attempt can: the longest of the request and provider timeouts.
        longest = max([cfg.router.request_timeout, *(p.timeout for p in cfg.providers)])
        ledger = replica.budget_ledger(budget_table(cfg), hold_ttl=longest + 60.0)
    elif ledger is None:
        ledger = budgets_of(cfg)
    agents = {
        p.name: build_agent(
            p, signal_bus, provider=given.get(p.name), environ=environ, health_interval=cfg.health_interval,
            prices=prices, gate_factory=_gates(replica),
        )
        for p in cfg.providers
    }
    router = RouterAgent(
        signal_bus, cfg.providers, cfg.router, ready_timeout=ready_timeout, models=cfg.models, prices=prices,
        budgets=ledger,
    )
    sup = cfg.supervision
    budget, backoff = agent_budget(sup, agent_intensity, agent_backoff)
    agent_supervisors = {
        name: agent_supervisor(name, agent, budget, backoff, signal_bus) for name, agent in agents.items()
    }
    children = [ChildSpec(ROUTER_CHILD, router.run, restart=Restart.PERMANENT)]
    children += [agent_supervisor_spec(s) for s in agent_supervisors.values()]
    root_intensity = intensity or Intensity(max_restarts=sup.max_restarts, period=sup.period)
    cap = max_retry_after.set(cfg.router.max_retry_after)  # inherited by every task the tree starts
    try:
        async with open_supervisor(
            "duckagents", children, strategy=Strategy.ONE_FOR_ONE, intensity=root_intensity, bus=signal_bus
        ) as supervisor:
            if replica is not None:
                replica.serve_status(router.status_document)
            await router.wait_ready(ready_timeout)
            tree = Tree(
                cfg, signal_bus, supervisor, router, agents, agent_supervisors, ledger,
                source=None if source is None else Path(source), environ=environ, providers=given,
                agent_intensity=agent_intensity, agent_backoff=agent_backoff, fleet=replica,
            )
            router.controls.reloader = tree.reload
            try:
                yield tree
            finally:
                router.controls.reloader = None
                router.close_intake()
    finally:
        max_retry_after.reset(cap)


@asynccontextmanager
async def open_router(
    config: Config | str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] | None = None,
    source: str | Path | None = None,
) -> AsyncIterator[RouterAgent]:
    """The router of a running tree built from ``config`` (a Config, a TOML path, or None for the
    embedded default: the mock provider). Leaving the block shuts the tree down; every request still
    in flight gets its final result (``shutdown``). ``router.controls.reload()`` re-reads the file
    (``config`` as a path, or ``source``)."""
    async with open_tree(config, environ=environ, providers=providers, source=source) as tree:
        yield tree.router
