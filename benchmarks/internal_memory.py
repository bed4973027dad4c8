"""Memory per idle agent and per in-flight request, by tracemalloc (Python heap) and RSS.

* per idle agent: the slope between a tree with 1 OpenAI agent and one with ``1 + agents``, both idle
  after every agent reported its status (so the health probe's connection is included);
* per in-flight request: ``in_flight`` requests held open against an upstream that never answers
  (another process, so its memory is not counted), through ``open_router`` and, for reference, through a
  bare httpx client. Each includes the caller's task and one pooled connection.

tracemalloc sees Python allocations only; OpenSSL's (each httpx client loads a CA store) shows in RSS.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import httpx
import trio

from duckagents.app import open_tree

from ._stats import current_rss_mib
from .clients_trio import DUMMY_KEY, REQUEST_TIMEOUT, bench_config
from .upstream import MODEL, PROMPT
from .workload import openai_body

SETTLE = 0.2
KIB = 1024.0


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _idle_tree(base_url: str, providers: int) -> tuple[int, float]:
    """(traced bytes, RSS MiB) with an idle tree of ``providers`` agents running."""
    async with open_tree(bench_config(base_url, providers=providers)) as tree:
        await tree.router.status()  # every agent probed the upstream and reported
        await trio.sleep(SETTLE)
        return _traced(), current_rss_mib()


async def per_idle_agent(base_url: str, agents: int) -> dict[str, float]:
    """Bytes (traced) and KiB (RSS) each additional idle agent costs."""
    await _idle_tree(base_url, 1)  # warm-up: imports, caches, first-use allocations
    one, rss_one = await _idle_tree(base_url, 1)
    many, rss_many = await _idle_tree(base_url, 1 + agents)
    return {
        "agents": agents,
        "traced_kib_per_agent": (many - one) / agents / KIB,
        "rss_kib_per_agent": (rss_many - rss_one) * 1024.0 / agents,
    }


async def _hold(count: int, call: Any, is_holding: Any) -> tuple[int, float]:
    """Start ``count`` calls that never finish; (traced bytes, RSS MiB) once all are on the wire."""
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(call)
        with trio.fail_after(30):
            # Polling: the counts watched (an agent's active requests) have no event to wait on.
            while not is_holding():  # noqa: ASYNC110
                await trio.sleep(0.01)
        await trio.sleep(SETTLE)  # let the last ones get past the send
        sample = _traced(), current_rss_mib()
        nursery.cancel_scope.cancel()
    return sample


async def per_request_duckagents(hang_base: str, count: int) -> dict[str, float]:
    """Bytes per request in flight through open_router -> agent -> provider -> httpx."""
    config = bench_config(hang_base, max_concurrency=count + 16)
    async with open_tree(config) as tree:
        await tree.router.status()
        agent = next(iter(tree.agents.values()))
        before, rss_before = _traced(), current_rss_mib()

        async def call() -> None:
            await tree.router.complete(PROMPT, model=MODEL, timeout=REQUEST_TIMEOUT)

        after, rss_after = await _hold(count, call, lambda: len(agent.active_requests) >= count)
    return {
        "in_flight": count,
        "traced_kib_per_request": (after - before) / count / KIB,
        "rss_kib_per_request": (rss_after - rss_before) * 1024.0 / count,
    }


async def per_request_direct(hang_base: str, count: int) -> dict[str, float]:
    """The same for a bare httpx client (the floor: a task, a request, a connection)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    headers = {"authorization": f"Bearer {DUMMY_KEY}"}
    async with httpx.AsyncClient(
        base_url=hang_base, limits=limits, timeout=REQUEST_TIMEOUT, headers=headers
    ) as client:
        started = 0
        body = openai_body(False)

        async def call() -> None:
            nonlocal started
            started += 1
            await client.post("chat/completions", json=body)

        before, rss_before = _traced(), current_rss_mib()
        after, rss_after = await _hold(count, call, lambda: started >= count)
    return {
        "in_flight": count,
        "traced_kib_per_request": (after - before) / count / KIB,
        "rss_kib_per_request": (rss_after - rss_before) * 1024.0 / count,
    }


async def _measure(params: dict[str, Any]) -> dict[str, Any]:
    tracemalloc.start()
    try:
        idle = await per_idle_agent(params["json_base"], int(params.get("agents", 50)))
        count = int(params.get("in_flight", 256))
        flight = await per_request_duckagents(params["hang_base"], count)
        direct = await per_request_direct(params["hang_base"], count)
    finally:
        tracemalloc.stop()
    return {"idle_agent": idle, "in_flight": flight, "in_flight_direct": direct}


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Worker entry. Needs ``json_base`` (a live upstream) and ``hang_base`` (one that never answers,
    with at least ``2 * in_flight`` hanging completions)."""
    return trio.run(_measure, params)
