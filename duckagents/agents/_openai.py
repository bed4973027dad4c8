"""The OpenAI agent: per-model default rate limits and the request rules of OpenAI's model families.

Everything generic (limiter, breaker, metrics, streaming, tool calls) is the base agent's; this module
adds only what depends on the model:

* :meth:`OpenAIAgent.default_limits` — requests/tokens per minute per model family, where the config
  sets none (see :data:`TIER1_LIMITS`), and only against ``api.openai.com``;
* :meth:`OpenAIAgent.prepare` — fails fast with ``unsupported`` when a request needs a feature the model
  is known to lack (tools, vision, JSON mode, a system prompt), and drops what a model would reject
  (sampling parameters on reasoning models; a ``max_tokens`` above the model's output limit is capped).

The model-family table itself lives with the provider (:data:`duckagents.providers._openai.MODEL_FAMILIES`).
"""

from __future__ import annotations

from typing import Any

import attrs

from ..providers import OPENAI_UNKNOWN_MODEL_FEATURES, is_openai_reasoning_model, openai_model_family
from ..resilience import RateLimits
from ..signals import ProviderRequest
from ._agent import ProviderAgent, missing_features

__all__ = ["TIER1_LIMITS", "OpenAIAgent", "default_limits_for", "missing_features"]

#: Per-minute (requests, tokens) by model prefix, in the spirit of OpenAI's published usage tier 1 (the
#: tier of a new paying account). Your account's tier is probably different: these are only defaults,
#: and ``[providers.limits]`` in the config overrides them dimension by dimension. A model matches the
#: longest prefix it equals or extends with ``-`` (``gpt-4o-2024-08-06`` -> ``gpt-4o``); models of no
#: known family (OpenAI-compatible servers) get no default limits.
TIER1_LIMITS: dict[str, tuple[int, int]] = {
    "gpt-5": (500, 500_000),
    "gpt-5-mini": (500, 500_000),
    "gpt-5-nano": (500, 200_000),
    "gpt-4.1": (500, 30_000),
    "gpt-4.1-mini": (500, 200_000),
    "gpt-4.1-nano": (500, 200_000),
    "gpt-4o": (500, 30_000),
    "gpt-4o-mini": (500, 200_000),
    "chatgpt-4o-latest": (500, 30_000),
    "gpt-4-turbo": (500, 30_000),
    "gpt-4": (500, 10_000),
    "gpt-3.5-turbo": (3_500, 200_000),
    "o1": (500, 30_000),
    "o1-mini": (500, 200_000),
    "o1-preview": (500, 30_000),
    "o3": (500, 30_000),
    "o3-mini": (1_000, 100_000),
    "o4-mini": (1_000, 100_000),
}


def _base_name(model: str) -> str:
    # The provider's family lookup accepts the same shapes: ``org/model`` and ``ft:model:org::id``.
    name = model.rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name


def default_limits_for(model: str) -> RateLimits:
    """The tier-1 style per-minute limits of ``model`` (unlimited for an unknown model)."""
    name = _base_name(model)
    matches = [p for p in TIER1_LIMITS if name == p or name.startswith(p + "-")]
    if not matches:
        return RateLimits()
    requests, tokens = TIER1_LIMITS[max(matches, key=len)]
    return RateLimits(requests=requests, tokens=tokens, period=60.0)


class OpenAIAgent(ProviderAgent):
    """The provider agent for OpenAI (and OpenAI-compatible servers); see the module docstring."""

    def default_limits(self, model: str) -> RateLimits:
        """Tier-1 style per-minute limits of ``model``'s family (:data:`TIER1_LIMITS`), on the vendor's
        own API host only: another server (a proxy, an OpenAI-compatible one) gets no client-side limit
        until its headers state one (configured limits always apply)."""
        if not self.config.official_host:
            return RateLimits()
        return default_limits_for(model)

    def knows(self, model: str) -> bool:
        """True when ``model``'s features are known (a known family, or configured on the provider), so
        a missing feature is a certainty rather than the cautious default for unknown models."""
        return openai_model_family(model) is not None or self.features(model) != OPENAI_UNKNOWN_MODEL_FEATURES

    async def prepare(self, request: ProviderRequest) -> ProviderRequest:
        """Fail fast on features the model lacks; drop or cap options the model would reject."""
        model = request.model or self.model
        features = self.features(model)
        known = self.knows(model)
        if known:
            self.require_features(request, model, features)
        options = request.options
        changes: dict[str, Any] = {}
        if is_openai_reasoning_model(model):
            # Reasoning models accept only the default sampling; the answer is the same without them.
            if options.temperature is not None:
                changes["temperature"] = None
            if options.top_p is not None:
                changes["top_p"] = None
        if known and options.max_tokens is not None and options.max_tokens > features.max_output_tokens:
            changes["max_tokens"] = features.max_output_tokens  # the API refuses more than the model can
        if not changes:
            return request
        return attrs.evolve(request, options=attrs.evolve(options, **changes))
