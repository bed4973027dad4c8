"""Model routes: which model a request goes to first, and where it goes next when that model cannot
answer (the fallback chains of the config). docs/routing.md describes the rules.

A request names a model (or gets the default model); the agents that serve that model are its
candidates. When every candidate failed or is out, the chain of the failure's :class:`Trigger` gives the
next models, tried depth first (a fallback's own chains come before the rest of the list), each model at
most once, at most ``max_fallbacks`` of them. The config was checked at load (``config.check_routes``):
the chains name served models only, never loop and are never deeper than ``max_fallbacks``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

from ..config import ModelConfig, ProviderConfig, RouterConfig, default_model_of, is_pattern, served_names
from ..errors import ErrorKind, did_you_mean

__all__ = ["FALLBACK_KINDS", "ModelRoutes", "Trigger"]


class Trigger(enum.Enum):
    """Why a request moves on to another model; the value is the config key of the chain."""

    #: Every agent for the model failed (or is out) with a provider-side error.
    FALLBACKS = "fallbacks"
    #: The request does not fit the model's context window.
    CONTEXT_WINDOW = "context_window_fallbacks"
    #: The model refused, or its content filter stopped the answer.
    CONTENT_POLICY = "content_policy_fallbacks"


#: Failures another model may not have: the retryable kinds, a model an agent does not have, features it
#: lacks, no agent (or none within budget) for it. They follow ``fallbacks``. Not the caller's mistakes
#: (an invalid request fails anywhere), nor a refused key or quota (a configuration problem to report, as
#: the router never retries them either); ``context_length`` has its own chain.
FALLBACK_KINDS: frozenset[ErrorKind] = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.CIRCUIT_OPEN,
        ErrorKind.TIMEOUT,
        ErrorKind.UPSTREAM_5XX,
        ErrorKind.OVERLOADED,
        ErrorKind.NOT_FOUND,
        ErrorKind.NETWORK,
        ErrorKind.PROTOCOL,
        ErrorKind.UNSUPPORTED,
        ErrorKind.NO_PROVIDER,
        ErrorKind.AGENT_CRASHED,
        ErrorKind.SHUTDOWN,
        ErrorKind.BUDGET_EXCEEDED,
    }
)


class ModelRoutes:
    """The default model and the fallback chains of one router (from the config)."""

    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        models: Mapping[str, ModelConfig],
        config: RouterConfig,
    ) -> None:
        #: The model of requests that name none (None only without providers).
        self.default_model = default_model_of(providers, config)
        #: Fallback models one request may go through at most.
        self.max_fallbacks = config.max_fallbacks
        self._chains: dict[tuple[str, Trigger], tuple[str, ...]] = {}
        for model, settings in models.items():
            for trigger in Trigger:
                chain = getattr(settings, trigger.value)
                if chain:
                    self._chains[model, trigger] = tuple(chain)
        #: What the providers serve (patterns as written), for messages.
        self.served = served_names(providers)
        self._known = [name for name in self.served if not is_pattern(name)]
        # Models the router asks agents about (feature checks): every one the config names.
        named = [self.default_model] if self.default_model is not None else []
        for settings_model, settings in models.items():
            named.append(settings_model)
            for trigger in Trigger:
                named.extend(getattr(settings, trigger.value))
        #: Every model the config names by name (default, chain keys and targets), without repeats.
        self.named_models = tuple(dict.fromkeys(named))

    def chain(self, model: str, trigger: Trigger) -> tuple[str, ...]:
        """The models ``trigger`` sends a request for ``model`` to, in order (empty if none)."""
        return self._chains.get((model, trigger), ())

    def unknown_model(self, model: str) -> str:
        """The ``no_provider`` message for a model no agent serves: what is served, and the closest name."""
        served = ", ".join(self.served) or "nothing (no providers are configured)"
        return f"no provider serves model {model!r}{did_you_mean(model, self._known)}; served: {served}"
