"""The ``litellm`` client: ``litellm.Router`` on asyncio against the same upstream, default settings.

Runs in its own worker process (asyncio, no Trio, no duckagents imported) so its RSS and event loop are
its own. LiteLLM is an optional benchmark-only dependency: the ``bench`` nox session installs it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ._stats import CallOutcome
from .upstream import MODEL, PROMPT
from .workload import HttpSpec, check_answer

DUMMY_KEY = "sk-bench-dummy-key-not-a-secret"
REQUEST_TIMEOUT = 60.0
GROUP = "bench"


def _import_litellm() -> Any:
    # The cost map is otherwise fetched from the internet at import time (retried for seconds, then
    # falls back to this very copy): read the bundled one directly.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def make_router(spec: HttpSpec) -> Any:
    """A ``litellm.Router`` with one deployment ``openai/<model>`` at the upstream; no retries."""
    litellm = _import_litellm()
    return litellm.Router(
        model_list=[
            {
                "model_name": GROUP,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": spec.base_url,
                    "api_key": DUMMY_KEY,
                },
            }
        ],
        num_retries=0,
        timeout=REQUEST_TIMEOUT,
    )


async def _run(spec: HttpSpec) -> dict[str, Any]:
    from .loadgen_asyncio import run_load

    router = make_router(spec)
    loop = asyncio.get_running_loop()
    messages = [{"role": "user", "content": PROMPT}]

    async def complete() -> CallOutcome:
        response = await router.acompletion(model=GROUP, messages=messages)
        return check_answer(spec, response.choices[0].message.content or "", 0, None)

    async def stream() -> CallOutcome:
        started = loop.time()
        first: float | None = None
        parts: list[str] = []
        response = await router.acompletion(model=GROUP, messages=messages, stream=True)
        async for chunk in response:
            for choice in chunk.choices:
                content = choice.delta.content
                if content:
                    if first is None:
                        first = loop.time() - started
                    parts.append(content)
        return check_answer(spec, "".join(parts), len(parts), first)

    return await run_load(stream if spec.stream else complete, spec.concurrency, spec.window)


def run_http(spec: HttpSpec) -> dict[str, Any]:
    """Run one LiteLLM workload in a fresh asyncio loop and return its summary."""
    return asyncio.run(_run(spec))


def available() -> bool:
    """Is LiteLLM importable here (without importing it)?"""
    import importlib.util

    return importlib.util.find_spec("litellm") is not None
