"""A deterministic, network-free provider for tests, demos and the zero-config ``duckagents ask``.

Everything it does is scripted or derived from the request, so two runs with the same script and seed
give the same answers, chunks and timings (delays use :func:`trio.sleep`, so a ``MockClock`` drives them).

Script it at construction (or from ``ProviderConfig.options``, see :meth:`MockProvider.from_options`) and
at run time:

* :meth:`~MockProvider.push_reply` queues answers (text, tool calls, finish reason); with none queued the
  answer is :func:`mock_answer` of the last user turn;
* :meth:`~MockProvider.fail_next` makes the next calls raise a :class:`ProviderError` of a given kind
  (optionally after some streamed chunks);
* :meth:`~MockProvider.crash_next` makes the next calls raise ``RuntimeError`` (a provider bug, not an
  upstream failure: the agent fails that request with ``internal`` and keeps serving);
* :meth:`~MockProvider.crash_agent_next` makes the next calls raise ``AgentFault`` (the agent's own
  machinery is broken: the agent crashes and its supervisor restarts it);
* :meth:`~MockProvider.hang_next` makes the next calls ignore cancellation for a while (a wedged call);
* ``latency`` (fixed or uniform, seeded) delays each answer; ``chunk_delay`` paces streamed chunks;
* ``features`` (one :class:`Features` or one per model) says what it supports; requests that need what it
  lacks fail like a real upstream would (``unsupported`` / ``context_length``).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import trio

from ..errors import AgentFault, ErrorKind, ProviderError, Secret
from ..messages import Features, FinishReason, Message, TextPart, Usage
from ..signals import ProviderRequest, ToolCallDelta
from ._base import (
    Completion,
    HealthProbe,
    ModelInfo,
    RateLimitInfo,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    TokenCount,
    heuristic_token_count,
)
from ._client import as_secret
from ._mock_options import Latency, as_latency, parse_options
from ._mock_script import (
    MAX_SCRIPT,
    AgentCrash,
    Crash,
    Hang,
    MockFailure,
    MockReply,
    MockScript,
    last_user_text,
    mock_answer,
)

__all__ = [
    "DEFAULT_MOCK_FEATURES",
    "MAX_SCRIPT",
    "Latency",
    "MockFailure",
    "MockProvider",
    "MockReply",
    "mock_answer",
]

DEFAULT_MODEL = "mock-1"
#: Bounds of :attr:`MockProvider.requests`: requests, and characters of prompt text (and image data).
RECORDED_REQUESTS = 256
RECORDED_BYTES = 4 * 1024 * 1024
#: The mock supports everything by default, so the zero-config setup can answer any request.
DEFAULT_MOCK_FEATURES = Features(
    streaming=True, tools=True, vision=True, system_prompt=True, json_mode=True,
    context_window=32_768, max_output_tokens=4_096,
)


class MockProvider(MockScript):
    """A scriptable in-process provider implementing the full :class:`~.base.Provider` protocol.

    The scripting methods (:meth:`push_reply`, :meth:`fail_next`, :meth:`crash_next`,
    :meth:`crash_agent_next`, :meth:`hang_next`, :meth:`clear_script`) come from
    :class:`~._mock_script.MockScript`.
    """

    name = "mock"
    #: Bounds of :attr:`requests` (see :data:`RECORDED_REQUESTS` and :data:`RECORDED_BYTES`).
    recorded_requests: ClassVar[int] = RECORDED_REQUESTS
    recorded_bytes: ClassVar[int] = RECORDED_BYTES

    def __init__(
        self,
        base_url: str = "mock://",
        api_key: Secret | str | None = None,
        default_model: str = DEFAULT_MODEL,
        transport: object | None = None,
        timeout: float | None = None,
        *,
        replies: Iterable[str | MockReply] = (),
        failures: Iterable[MockFailure] = (),
        chunk_size: int = 8,
        chunk_delay: float = 0.0,
        latency: Latency | float = 0.0,
        seed: int = 0,
        features: Features | None = None,
        model_features: Mapping[str, Features] | None = None,
        models: Sequence[str] = (),
        healthy: bool = True,
        rate_limit: RateLimitInfo | None = None,
        crash_on: str | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        super().__init__()
        self.base_url = base_url
        self.default_model = default_model
        self._api_key = as_secret(api_key)
        self.chunk_size = chunk_size
        self.chunk_delay = chunk_delay
        self.latency = as_latency(latency)
        self._rng = random.Random(seed)
        self._features = features or DEFAULT_MOCK_FEATURES
        self._model_features = dict(model_features or {})
        self.models = tuple(models) or (default_model,)
        #: What :meth:`health` reports.
        self.healthy = healthy
        #: Attached to every completion, as if the upstream sent rate-limit headers.
        self.rate_limit = rate_limit
        #: A prompt whose last user turn contains this text crashes the agent like :meth:`crash_agent_next`.
        self.crash_on = crash_on
        #: Requests seen, most recent last, for assertions: the last :attr:`recorded_requests`, within
        #: :attr:`recorded_bytes` of prompt text (the newest is always kept).
        self.requests: deque[ProviderRequest] = deque()
        self._recorded_sizes: deque[int] = deque()
        self._recorded_bytes = 0
        #: Completion calls (``complete`` and ``stream``) made so far.
        self.calls = 0
        self.push_reply(*replies)
        for failure in failures:
            for _ in range(failure.count):
                self._queue_outcome(failure)

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        base_url: str = "mock://",
        api_key: Secret | None = None,
        default_model: str | None = None,
        timeout: float | None = None,
    ) -> MockProvider:
        """Build from a config ``options`` table, e.g. ``{replies = ["hi"], latency = {kind = "uniform",
        low = 0.1, high = 0.3}, failures = [{kind = "upstream_5xx"}], features = {vision = false}}``.

        Raises :class:`ConfigError` naming the bad key.
        """
        opts, features, per_model = parse_options(options, DEFAULT_MOCK_FEATURES)
        return cls(
            base_url, api_key, default_model or DEFAULT_MODEL, None, timeout,
            replies=opts.replies, failures=opts.failures, chunk_size=opts.chunk_size,
            chunk_delay=opts.chunk_delay, latency=opts.latency, seed=opts.seed, features=features,
            model_features=per_model, models=opts.models, healthy=opts.healthy, crash_on=opts.crash_on,
        )

    def __repr__(self) -> str:
        return f"MockProvider(model={self.default_model!r}, calls={self.calls})"

    # --- scripting (the rest is in MockScript) --------------------------------------------------

    def set_features(self, features: Features, model: str | None = None) -> None:
        """Change what the mock (or one of its models) supports."""
        if model is None:
            self._features = features
        else:
            self._model_features[model] = features

    # --- the provider protocol -------------------------------------------------------------------

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """The API key, if one was given (the mock never sends it anywhere)."""
        return (self._api_key,) if self._api_key else ()

    async def __aenter__(self) -> MockProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Nothing to release; the mock may be entered again (an agent restart reuses it)."""

    def features(self, model: str | None = None) -> Features:
        """The features of ``model`` (per-model table first, then the provider-wide table)."""
        return self._model_features.get(model or self.default_model, self._features)

    async def estimate_tokens(self, messages: Sequence[Message], model: str | None = None) -> TokenCount:
        """The shared heuristic; exact, since the mock's usage is computed the same way."""
        await trio.lowlevel.checkpoint()
        return TokenCount(heuristic_token_count(messages), exact=True)

    async def health(self) -> HealthProbe:
        """``ok`` is :attr:`healthy`; the detail lists the models."""
        await trio.lowlevel.checkpoint()
        return HealthProbe(self.healthy, 0.0, {"models": ",".join(self.models)})

    async def list_models(self) -> list[ModelInfo]:
        """The configured models, all "loaded"."""
        await trio.lowlevel.checkpoint()
        return [ModelInfo(m, self.features(m).context_window, loaded=True) for m in self.models]

    async def complete(self, request: ProviderRequest) -> Completion:
        """One scripted completion, after the scripted latency."""
        model, failure = await self._begin(request)
        if failure is not None:
            raise self._error(failure, model)
        return self._completion(request, model, self._next_reply(request))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        """The scripted answer in ``chunk_size`` pieces ``chunk_delay`` apart, then a :class:`StreamEnd`."""
        model, failure = await self._begin(request)
        if failure is not None and failure.after_chunks == 0:
            raise self._error(failure, model)
        reply = self._next_reply(request)  # a failure after some chunks uses up the reply it cut short
        text_chunks = _split(reply.text, reply.chunk_size or self.chunk_size)
        fail_at = None if failure is None else failure.after_chunks
        sent = 0
        for piece in text_chunks:
            if fail_at is not None and sent >= fail_at:
                break
            if sent and self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            yield StreamDelta(text=piece)
            sent += 1
        if failure is not None:
            raise self._error(failure, model)
        for index, call in enumerate(reply.tool_calls):
            if self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            yield StreamDelta(tool_call=ToolCallDelta(index, call.id, call.name, call.arguments))
        yield StreamEnd(self._completion(request, model, reply))

    # --- internals -------------------------------------------------------------------------------

    def _record(self, request: ProviderRequest) -> None:
        # The mock is the default provider: a client sending large prompts must not grow memory here.
        size = sum(
            len(part.text) if isinstance(part, TextPart) else len(part.data or part.url or "")
            for message in request.messages
            for part in message.content
        )
        if len(self._recorded_sizes) != len(self.requests):  # a test cleared or edited the record
            self._recorded_sizes = deque(len(str(r.messages)) for r in self.requests)
            self._recorded_bytes = sum(self._recorded_sizes)
        self.requests.append(request)
        self._recorded_sizes.append(size)
        self._recorded_bytes += size
        while len(self.requests) > 1 and (
            len(self.requests) > self.recorded_requests or self._recorded_bytes > self.recorded_bytes
        ):
            self.requests.popleft()
            self._recorded_bytes -= self._recorded_sizes.popleft()

    async def _begin(self, request: ProviderRequest) -> tuple[str, MockFailure | None]:
        """Count the call, apply the scripted outcome and latency, validate like an upstream would."""
        self.calls += 1
        self._record(request)
        model = request.model or self.default_model
        # The schedule point comes before the scripted outcome is taken: a call cancelled here (its
        # deadline passed while it queued, on a busy machine) leaves the outcome to the next call instead
        # of consuming it unseen (a crash_agent_next that never crashed anything).
        await trio.lowlevel.checkpoint()
        outcome = self._next_outcome()
        if outcome is None and self.crash_on and self.crash_on in last_user_text(request.messages):
            outcome = AgentCrash(f"the prompt asked the mock to crash ({self.crash_on!r})")
        if isinstance(outcome, Crash):
            raise RuntimeError(outcome.message)
        if isinstance(outcome, AgentCrash):
            raise AgentFault(outcome.message)
        if isinstance(outcome, Hang):
            with trio.CancelScope(shield=True):
                await trio.sleep(outcome.duration)
        delay = self.latency.sample(self._rng)
        if delay:
            await trio.sleep(delay)
        elif isinstance(outcome, Hang):
            await trio.lowlevel.checkpoint()  # a cancel that came during the hang takes effect now
        self._validate(request, model)
        return model, outcome if isinstance(outcome, MockFailure) else None

    def _validate(self, request: ProviderRequest, model: str) -> None:
        features = self.features(model)
        options = request.options
        lacking = []
        if options.tools and not features.tools:
            lacking.append("tools")
        if any(m.images for m in request.messages) and not features.vision:
            lacking.append("vision")
        if options.response_format == "json_object" and not features.json_mode:
            lacking.append("json_mode")
        if lacking:
            raise ProviderError(
                ErrorKind.UNSUPPORTED, f"model {model} does not support {', '.join(lacking)}",
                provider=self.name, model=model, status=400,
            )
        tokens = heuristic_token_count(request.messages)
        if tokens > features.context_window:
            raise ProviderError(
                ErrorKind.CONTEXT_LENGTH,
                f"{tokens} prompt tokens exceed the context window of {features.context_window}",
                provider=self.name, model=model, status=400,
            )

    def _completion(self, request: ProviderRequest, model: str, reply: MockReply) -> Completion:
        finish = reply.finish_reason or (FinishReason.TOOL_CALLS if reply.tool_calls else FinishReason.STOP)
        out_chars = len(reply.text) + sum(len(c.name) + len(c.arguments) for c in reply.tool_calls)
        usage_out = math.ceil(out_chars / 4) if out_chars else 0
        return Completion(
            model=model,
            content=reply.text,
            tool_calls=reply.tool_calls,
            finish_reason=finish,
            usage=Usage(heuristic_token_count(request.messages), usage_out),
            rate_limit=self.rate_limit,
            raw_finish_reason=reply.raw_finish_reason or finish.value,
        )

    def _error(self, failure: MockFailure, model: str) -> ProviderError:
        return ProviderError(
            failure.kind, failure.message, provider=self.name, model=model,
            retry_after=failure.retry_after, status=failure.status,
        )


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
