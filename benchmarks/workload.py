"""What one HTTP workload is (client, concurrency, streaming, window) and how answers are checked.

Shared by the Trio and asyncio workers, so it imports neither.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from ._stats import CallOutcome, LoadWindow
from .upstream import MODEL, PROMPT

ClientName = Literal["direct", "duckagents", "litellm", "door-duckagents", "door-litellm", "door-floor"]
CLIENTS: tuple[ClientName, ...] = (
    "direct", "duckagents", "litellm", "door-duckagents", "door-litellm", "door-floor"
)
#: HTTP front doors: the same HTTP client as ``direct``, sent to a server in front of the upstream
#: (``duckagents serve --http``, LiteLLM's proxy) instead of the upstream itself (:mod:`benchmarks.doors`).
DOORS: tuple[ClientName, ...] = ("door-duckagents", "door-litellm", "door-floor")


@attrs.frozen
class HttpSpec:
    """One closed-loop run of one client against the upstream, passed to a worker subprocess as JSON."""

    client: ClientName
    concurrency: int
    stream: bool
    json_base: str
    sse_base: str
    warmup: float = 0.5
    duration: float = 2.5
    max_requests: int | None = None
    min_requests: int = 0
    expected_text: str | None = None
    expected_chunks: int | None = None
    #: The model name sent (a front door routes by it; the upstream ignores it).
    model: str = MODEL

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this workload (the SSE one when streaming)."""
        return self.sse_base if self.stream else self.json_base

    @property
    def window(self) -> LoadWindow:
        """The measurement window."""
        return LoadWindow(self.warmup, self.duration, self.max_requests, self.min_requests)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HttpSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def openai_body(stream: bool, model: str = MODEL) -> dict[str, Any]:
    """The request every client sends (as its own API spells it)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True
    return body


def check_answer(spec: HttpSpec, text: str, chunks: int, first_chunk: float | None) -> CallOutcome:
    """A success only when the answer is the one the upstream sent (text, and chunk count if streaming)."""
    if spec.expected_text is not None and text != spec.expected_text:
        return CallOutcome(ok=False, error=f"unexpected text {text[:60]!r}")
    if not text:
        return CallOutcome(ok=False, error="empty answer")
    if spec.stream:
        if spec.expected_chunks is not None and chunks != spec.expected_chunks:
            return CallOutcome(ok=False, error=f"expected {spec.expected_chunks} chunks, got {chunks}")
        if first_chunk is None:
            return CallOutcome(ok=False, error="stream delivered no content chunk")
    return CallOutcome(ok=True, chunks=chunks, first_chunk=first_chunk)
