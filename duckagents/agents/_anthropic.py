"""The Anthropic agent: context-window fitting, image validation, refusals and per-family limits.

* :meth:`AnthropicAgent.prepare` validates images (media type, size, count) and features before anything
  is sent, then makes sure the input plus ``max_tokens`` fits the model's context window: counted with
  ``count_tokens`` (the provider's exact counter, else an estimate). A request that does not fit fails
  fast with ``context_length``, or, when its options allow it (``allow_trim``), loses its oldest turns:
  the system prompt and the last user turn (with everything after it) are always kept, and a turn is
  dropped whole, so a ``tool_use`` never loses its ``tool_result``.
* :meth:`AnthropicAgent.classify` makes a ``refusal`` stop reason a distinct outcome:
  ``FinishReason.REFUSAL`` on the response (a success for the router, so it is never retried elsewhere).
* :meth:`AnthropicAgent.default_limits` gives tier-1 style limits per model family (against
  ``api.anthropic.com`` only).

Config options (``[providers.options]``): ``context_window`` (int) caps the window the agent enforces,
e.g. to bound cost; it is also what :meth:`AnthropicAgent.features` reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NoReturn

import attrs

from ..bus import SignalBus
from ..config import ProviderConfig
from ..errors import ConfigError, ErrorKind, ProviderError
from ..messages import Features, FinishReason, ImagePart, Message, ToolSpec
from ..providers import Completion, Provider, anthropic_image_problem, heuristic_token_count
from ..resilience import RateLimits
from ..signals import ProviderRequest
from ._agent import ProviderAgent

__all__ = ["MAX_IMAGES", "TIER1_LIMITS", "AnthropicAgent", "default_limits_for", "trim_units"]

#: (model prefix, requests, input + output tokens) per minute: Anthropic's published tier-1 figures
#: (input and output token limits are separate upstream; our limiter counts both, so they are added).
#: First match wins; ``claude-`` catches models newer than the table. ``[providers.limits]`` overrides.
TIER1_LIMITS: tuple[tuple[str, int, int], ...] = (
    ("claude-3-haiku", 50, 50_000 + 10_000),
    ("claude-3-5-haiku", 50, 50_000 + 10_000),
    ("claude-haiku", 50, 50_000 + 10_000),
    ("claude-3-7-sonnet", 50, 20_000 + 8_000),
    ("claude-3-5-sonnet", 50, 40_000 + 8_000),
    ("claude-3-opus", 50, 20_000 + 4_000),
    ("claude-", 50, 30_000 + 8_000),
)
#: Images the Messages API accepts in one request.
MAX_IMAGES = 100
# Upper bounds for the "surely fits" shortcut: a token is at least one UTF-8 byte for byte-level BPE;
# an image is resized to at most ~1.15 megapixels, about 1,600 tokens (width x height / 750).
_MESSAGE_OVERHEAD = 8
_IMAGE_TOKENS_MAX = 1_600
# Tool use costs a system prompt of a few hundred tokens on top of the tool definitions.
_TOOL_USE_OVERHEAD = 350


def default_limits_for(model: str) -> RateLimits:
    """Tier-1 style per-minute limits of ``model`` (unlimited for a non-Claude model name)."""
    for prefix, requests, tokens in TIER1_LIMITS:
        if model.startswith(prefix):
            return RateLimits(requests=requests, tokens=tokens, period=60.0)
    return RateLimits()


def trim_units(messages: Sequence[Message]) -> tuple[list[list[int]], int]:
    """Split ``messages`` for trimming: the droppable turns (lists of indexes, oldest first) and the index
    where the protected tail (the last user turn and everything after it) starts.

    A turn starts at a ``user`` message and runs to the next one, so an assistant's tool calls and the
    ``tool`` results answering them always fall in the same turn. System and developer messages belong to
    no turn: they are never dropped.
    """
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    tail = users[-1] if users else len(messages)
    units: list[list[int]] = []
    for index in range(tail):
        role = messages[index].role
        if role in ("system", "developer"):
            continue
        if not units or role == "user":
            units.append([index])
        else:
            units[-1].append(index)
    return units, tail


def _bytes_bound(messages: Sequence[Message]) -> int:
    total = 0
    for message in messages:
        text = message.text + "".join(c.name + c.arguments for c in message.tool_calls)
        total += len(text.encode()) + _MESSAGE_OVERHEAD + _IMAGE_TOKENS_MAX * len(message.images)
    return total


def _tool_tokens(tools: Sequence[ToolSpec]) -> int:
    if not tools:
        return 0
    spec = json.dumps([[t.name, t.description, t.parameters] for t in tools])
    return _TOOL_USE_OVERHEAD + math.ceil(len(spec.encode()) / 2)  # JSON tokenizes densely: be generous


class AnthropicAgent(ProviderAgent):
    """The provider agent for Anthropic's Messages API; see the module docstring."""

    def __init__(
        self,
        config: ProviderConfig,
        bus: SignalBus,
        provider: Provider | None = None,
        **agent_options: Any,
    ) -> None:
        window = config.options.get("context_window")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise ConfigError(f"provider {config.name!r}: options.context_window must be a positive integer")
        #: The context window enforced when smaller than the model's (``options.context_window``).
        self.context_window: int | None = window
        #: Responses that ended with a refusal; requests trimmed to fit (both reported in health detail).
        self.refusals = 0
        self.trimmed = 0
        super().__init__(config, bus, provider, **agent_options)

    # --- hooks -------------------------------------------------------------------------------------

    def default_limits(self, model: str) -> RateLimits:
        """Tier-1 style per-minute limits of ``model``'s family (:data:`TIER1_LIMITS`), on the vendor's
        own API host only: another server (a proxy, an OpenAI-compatible one) gets no client-side limit
        until its headers state one (configured limits always apply)."""
        if not self.config.official_host:
            return RateLimits()
        return default_limits_for(model)

    def features(self, model: str | None = None) -> Features:
        """The model's features, its window capped by ``options.context_window``."""
        features = super().features(model)
        if self.context_window is not None and self.context_window < features.context_window:
            features = attrs.evolve(features, context_window=self.context_window)
        return features

    async def prepare(self, request: ProviderRequest) -> ProviderRequest:
        """Validate features and images, then fit the context window (see the module docstring)."""
        model = request.model or self.model
        features = self.features(model)
        self.require_features(request, model, features)
        self._check_images(request.messages, model)
        return await self._fit(request, model, features)

    def classify(self, request: ProviderRequest, completion: Completion) -> Completion:
        """A ``refusal`` stop reason is ``FinishReason.REFUSAL``, whatever the wire mapping said."""
        if completion.raw_finish_reason == "refusal" or completion.finish_reason is FinishReason.REFUSAL:
            self.refusals += 1
            return attrs.evolve(completion, finish_reason=FinishReason.REFUSAL)
        return completion

    async def resources(self) -> dict[str, str]:
        """Counts of refused and trimmed requests, and the enforced window when capped."""
        detail = {"refusals": str(self.refusals), "trimmed_requests": str(self.trimmed)}
        if self.context_window is not None:
            detail["context_window_cap"] = str(self.context_window)
        return detail

    # --- images ------------------------------------------------------------------------------------

    def _check_images(self, messages: Sequence[Message], model: str) -> None:
        count = 0
        for i, message in enumerate(messages):
            for n, part in enumerate(p for p in message.content if isinstance(p, ImagePart)):
                count += 1
                problem = anthropic_image_problem(part)
                if problem is not None:
                    self._invalid(f"messages[{i}] image {n + 1}: {problem}", model)
        if count > MAX_IMAGES:
            self._invalid(f"the request has {count} images; the API accepts at most {MAX_IMAGES}", model)

    def _invalid(self, message: str, model: str) -> NoReturn:
        raise ProviderError(ErrorKind.INVALID_REQUEST, message, provider=self.name, model=model)

    # --- context window ----------------------------------------------------------------------------

    def _max_tokens(self, request: ProviderRequest, model: str, features: Features) -> int:
        if request.options.max_tokens is not None:
            return request.options.max_tokens
        default = getattr(self.provider, "max_tokens_for", None)  # what the provider will ask for
        return int(default(model)) if callable(default) else features.max_output_tokens

    async def _input_tokens(self, messages: Sequence[Message], model: str, budget: int) -> int:
        """Input tokens of ``messages``; not counted (the bound returned) when they surely fit ``budget``."""
        bound = _bytes_bound(messages)
        if bound <= budget:
            return bound
        try:
            return (await self.provider.estimate_tokens(messages, model)).tokens
        except ProviderError:  # counting is advisory: an estimate still decides
            return heuristic_token_count(messages)

    async def _fit(self, request: ProviderRequest, model: str, features: Features) -> ProviderRequest:
        window = features.context_window
        reserved = self._max_tokens(request, model, features) + _tool_tokens(request.options.tools)
        budget = window - reserved
        messages = request.messages
        needed = await self._input_tokens(messages, model, budget)
        if needed <= budget:
            return request
        if not request.options.allow_trim:
            self._too_long(model, needed, reserved, window, "set allow_trim to drop the oldest turns")
        units, _ = trim_units(messages)

        def without(k: int) -> tuple[Message, ...]:
            dropped = {i for unit in units[:k] for i in unit}
            return tuple(m for i, m in enumerate(messages) if i not in dropped)

        hint = "even with only the system prompt and the last user turn"
        if not units:
            self._too_long(model, needed, reserved, window, hint)
        smallest = await self._input_tokens(without(len(units)), model, budget)
        if smallest > budget:
            self._too_long(model, smallest, reserved, window, hint)
        # Fewest turns to drop: the count shrinks as more are dropped, so a binary search needs only
        # log2(turns) token counts (each may be a count_tokens call).
        lo, hi = 0, len(units)  # dropping lo turns does not fit, dropping hi does
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await self._input_tokens(without(mid), model, budget) <= budget:
                hi = mid
            else:
                lo = mid
        self.trimmed += 1
        return attrs.evolve(request, messages=without(hi))

    def _too_long(self, model: str, needed: int, reserved: int, window: int, hint: str) -> NoReturn:
        raise ProviderError(
            ErrorKind.CONTEXT_LENGTH,
            f"the request needs {needed} input tokens + {reserved} for the output (max_tokens) and tools, "
            f"more than the {window}-token context window of {model} ({hint})",
            provider=self.name,
            model=model,
        )
