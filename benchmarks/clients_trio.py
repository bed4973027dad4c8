"""The Trio clients: ``direct`` (bare httpx, the floor), ``duckagents`` (open_router end to end), and
the same bare httpx client sent to an HTTP front door (``door-duckagents``, ``door-litellm``).

Each is an async context manager yielding a zero-argument ``call`` that sends one request and checks the
answer, so :func:`benchmarks.loadgen_trio.run_load` can drive either the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import trio

from duckagents.providers import iter_sse

from ._stats import CallOutcome
from .loadgen_trio import Call
from .upstream import MODEL, PROMPT
from .workload import HttpSpec, check_answer, openai_body

DUMMY_KEY = "sk-bench-dummy-key-not-a-secret"
KEY_ENV = "DUCKAGENTS_BENCH_API_KEY"
#: Same deadline for every client: far above any latency seen here, so it never shapes a result.
REQUEST_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def open_direct(spec: HttpSpec) -> AsyncIterator[Call]:
    """A bare ``httpx.AsyncClient`` on Trio with a pool as large as the concurrency (the floor)."""
    limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
    headers = {"authorization": f"Bearer {DUMMY_KEY}", "accept": "application/json"}
    body = openai_body(spec.stream, spec.model)
    async with httpx.AsyncClient(
        base_url=spec.base_url, limits=limits, timeout=REQUEST_TIMEOUT, headers=headers
    ) as client:

        async def complete() -> CallOutcome:
            response = await client.post("chat/completions", json=body)
            if response.status_code != 200:
                return CallOutcome(ok=False, error=f"HTTP {response.status_code}")
            text = response.json()["choices"][0]["message"]["content"]
            return check_answer(spec, text, 0, None)

        async def stream() -> CallOutcome:
            started = trio.current_time()
            first: float | None = None
            parts: list[str] = []
            async with client.stream("POST", "chat/completions", json=body) as response:
                if response.status_code != 200:
                    return CallOutcome(ok=False, error=f"HTTP {response.status_code}")
                # Read to the end of the body, past [DONE]: a response closed early cannot go back to
                # the pool, and the next request would pay for a new connection.
                async with contextlib.aclosing(iter_sse(response.aiter_bytes())) as events:
                    async for event in events:
                        if event.data == "[DONE]":
                            continue
                        for choice in json.loads(event.data).get("choices", ()):
                            content = choice.get("delta", {}).get("content")
                            if content:
                                if first is None:
                                    first = trio.current_time() - started
                                parts.append(content)
            return check_answer(spec, "".join(parts), len(parts), first)

        yield stream if spec.stream else complete


def bench_config(base_url: str, *, providers: int = 1, max_concurrency: int | None = None) -> Any:
    """A duckagents Config with ``providers`` OpenAI agents on ``base_url`` and a dummy key in the env.

    Everything else is the config's default, as a user would have it: notably ``max_concurrency`` (64
    upstream calls in flight per agent; more requests wait in the agent). The model name belongs to no
    known OpenAI family, so the agent applies no default rate limits.
    """
    from duckagents.config import Config, ProviderConfig

    os.environ.setdefault(KEY_ENV, DUMMY_KEY)
    extra: dict[str, Any] = {} if max_concurrency is None else {"max_concurrency": max_concurrency}
    return Config(
        providers=tuple(
            ProviderConfig(
                name="openai" if providers == 1 else f"openai-{i}",
                kind="openai",
                base_url=base_url,
                api_key_env=KEY_ENV,
                models=(MODEL,),
                default_model=MODEL,
                timeout=REQUEST_TIMEOUT,
                **extra,
            )
            for i in range(providers)
        )
    )


@contextlib.asynccontextmanager
async def open_duckagents(spec: HttpSpec) -> AsyncIterator[Call]:
    """``duckagents.open_router`` with one OpenAI agent on the upstream: router -> agent -> provider."""
    from duckagents.app import open_router

    async with open_router(bench_config(spec.base_url)) as router:

        async def complete() -> CallOutcome:
            response = await router.complete(PROMPT, model=MODEL, timeout=REQUEST_TIMEOUT)
            return check_answer(spec, response.content, 0, None)

        async def stream() -> CallOutcome:
            started = trio.current_time()
            first: float | None = None
            parts: list[str] = []
            async with router.stream(PROMPT, model=MODEL, timeout=REQUEST_TIMEOUT) as chunks:
                async for chunk in chunks:
                    if chunk.delta:
                        if first is None:
                            first = trio.current_time() - started
                        parts.append(chunk.delta)
            return check_answer(spec, "".join(parts), len(parts), first)

        yield stream if spec.stream else complete


async def run_http(spec: HttpSpec, on_window: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run one Trio HTTP workload and return its summary (``on_window``: see ``run_load``)."""
    from .loadgen_trio import run_load

    # A front door is measured with the direct client: the spec's base URL is the door's.
    opener = open_duckagents if spec.client == "duckagents" else open_direct
    async with opener(spec) as call:
        return await run_load(call, spec.concurrency, spec.window, on_window)
