"""``open_router()``: the supervision tree built from a :class:`~duckagents.config.Config`.

::

    root supervisor (one_for_one, publishes supervisor_event on the bus)
    ├── router            (permanent)  started first, so it is stopped last
    ├── agent:<name 1>    (permanent)  one provider agent per [[providers]] entry
    └── agent:<name n>    (permanent)

Shutdown, on leaving the block: the router stops taking requests, then the supervisor stops the agents
(last first) — each answers its in-flight attempts with ``shutdown`` — and finally the router, which
answers every request still open. So every outstanding request gets exactly one final result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import attrs

from .agents import ProviderAgent, build_agent
from .bus import SignalBus
from .config import Config, default_config, load_config
from .providers import Provider
from .router import AGENT_CHILD_PREFIX, RouterAgent
from .supervision import ChildSpec, Intensity, Restart, Strategy, Supervisor, open_supervisor

__all__ = ["DEFAULT_INTENSITY", "Tree", "open_router", "open_tree"]

#: Restarts the root supervisor allows (3 within 10 s) before it gives up and the tree fails.
DEFAULT_INTENSITY = Intensity(max_restarts=3, period=10.0)
ROUTER_CHILD = "router"


@attrs.frozen
class Tree:
    """A running supervision tree: what :func:`open_tree` yields."""

    config: Config
    bus: SignalBus
    supervisor: Supervisor
    router: RouterAgent
    agents: dict[str, ProviderAgent]


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
    intensity: Intensity = DEFAULT_INTENSITY,
    ready_timeout: float = 5.0,
) -> AsyncIterator[Tree]:
    """Run the whole tree for the duration of the block (see the module docstring).

    ``providers`` replaces the provider of the named agents with the given instances (tests, embedding
    apps; the caller owns and closes them). API keys come from ``environ`` (default ``os.environ``).
    Waits up to ``ready_timeout`` seconds for every agent's first status and features before yielding.
    """
    cfg = resolve_config(config)
    own_bus = bus is None
    signal_bus = SignalBus() if bus is None else bus
    given = dict(providers or {})
    agents = {
        p.name: build_agent(
            p, signal_bus, provider=given.get(p.name), environ=environ, health_interval=cfg.health_interval
        )
        for p in cfg.providers
    }
    router = RouterAgent(signal_bus, cfg.providers, cfg.router, ready_timeout=ready_timeout)
    children = [ChildSpec(ROUTER_CHILD, router.run, restart=Restart.PERMANENT)]
    children += [
        ChildSpec(AGENT_CHILD_PREFIX + name, agent.run, restart=Restart.PERMANENT)
        for name, agent in agents.items()
    ]
    try:
        async with open_supervisor(
            "duckagents", children, strategy=Strategy.ONE_FOR_ONE, intensity=intensity, bus=signal_bus
        ) as supervisor:
            await router.wait_ready(ready_timeout)
            try:
                yield Tree(cfg, signal_bus, supervisor, router, agents)
            finally:
                router.close_intake()
    finally:
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
