"""Benchmarks of duckagents: the cost of the agent layer against a bare HTTP call and LiteLLM's Router.

Run everything with ``python -m benchmarks`` (``--help`` lists the options). Each measured scenario runs
in its own subprocess (:mod:`benchmarks.worker`) so peak RSS is per scenario; the orchestrator
(:mod:`benchmarks.runner`) repeats, takes medians and writes the report (:mod:`benchmarks.report`).

This package imports nothing heavy at import time: the LiteLLM worker must not pay for Trio or duckagents
in its RSS, nor the duckagents worker for LiteLLM.
"""

from __future__ import annotations

__all__: list[str] = []
