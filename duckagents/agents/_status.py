"""A provider agent's health reports: the periodic probe and the ``provider_status`` it publishes.

:func:`health_loop` runs in the agent's nursery. It probes the provider every ``health_interval``
seconds (at once on start), and publishes a status after each probe, whenever the agent pokes it (a
breaker change, an upstream rate-limit block) and when an open breaker's timeout passes (the breaker's
open -> half-open move is lazy, so nothing else would report it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..errors import BusClosed, ProviderError
from ..providers import HealthProbe
from ..signals import ProviderStatus
from ._health import headroom_fraction, health_score

if TYPE_CHECKING:
    from ._agent import ProviderAgent

__all__ = ["build_status", "health_loop", "probe"]


async def health_loop(agent: ProviderAgent) -> None:
    """Probe and report until cancelled (see the module docstring)."""
    next_probe = trio.current_time()
    while True:
        now = trio.current_time()
        wake = next_probe
        breaker_retry = agent.breaker.retry_at(now)
        if breaker_retry is not None:
            wake = min(wake, breaker_retry)
        with trio.move_on_at(wake):
            await agent.status_wakeup.wait()
        agent.status_wakeup = trio.Event()
        if trio.current_time() >= next_probe:
            agent.last_probe = await probe(agent)
            next_probe = trio.current_time() + agent.health_interval
        status = await build_status(agent)
        try:
            await agent.publish(status)
        except BusClosed:
            await trio.sleep_forever()  # the tree is shutting down; wait to be cancelled
        agent._reported(status)


async def probe(agent: ProviderAgent) -> HealthProbe:
    """The provider's health probe, bounded by the agent's ``probe_timeout``."""
    result: HealthProbe | None = None
    with trio.move_on_after(agent.probe_timeout):
        result = await agent.provider.health()
    if result is None:
        return HealthProbe(False, agent.probe_timeout, {"error": "health probe timed out"})
    return result


async def build_status(agent: ProviderAgent) -> ProviderStatus:
    """The agent's status now; ``detail`` holds the probe's detail, the ``resources()`` hook's,
    ``agent_id``, ``active`` and, while the breaker is open, ``breaker_retry_at``."""
    detail = {k: agent.redact(v) for k, v in agent.last_probe.detail.items()}
    try:
        detail.update(await agent.resources())
    except ProviderError as exc:
        detail["resources_error"] = agent.redact(exc.message)
    now = trio.current_time()
    breaker = agent.breaker.state(now)
    headroom = agent.limiter.headroom(now)
    metrics = agent.metrics.snapshot()
    detail["agent_id"] = agent.agent_id
    detail["active"] = str(len(agent.active_requests))
    retry_at = agent.breaker.retry_at(now)
    if retry_at is not None:
        detail["breaker_retry_at"] = repr(retry_at)
    score = health_score(
        breaker,
        agent.last_probe.ok,
        agent.recent.failure_rate,
        metrics.latency.p50 if metrics.latency.samples else None,
        headroom_fraction(headroom, agent.limits),
    )
    return ProviderStatus(agent.name, score, breaker.value, headroom, metrics, agent.last_probe.ok, detail)
