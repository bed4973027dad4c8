"""Provider agents: one supervised actor per provider, with its rate limiter, circuit breaker, metrics and
health reports (the base :class:`ProviderAgent`), and the provider-specific agents.

Private modules: ``_agent`` (the actor: inbox, requests, replies, health reports), ``_admission`` (the
limiter and breaker in front of the upstream, one verdict per call), ``_health`` (the score formula),
``_metrics``; ``_openai``, ``_anthropic``, ``_tgi``, ``_local`` (with ``_pulls`` and ``_autopull``) for
the provider-specific agents; ``_registry`` (kind -> provider and agent class).
"""

from ._agent import GateFactory, ProviderAgent, missing_features
from ._anthropic import AnthropicAgent
from ._local import LOCAL_MAX_CONCURRENCY, LocalAgent, LocalModels, PullState
from ._metrics import ProviderMetrics
from ._openai import OpenAIAgent
from ._registry import Registration, agent_class, build_agent, provider_factory, register
from ._tgi import TGIAgent

__all__ = [
    "LOCAL_MAX_CONCURRENCY",
    "AnthropicAgent",
    "GateFactory",
    "LocalAgent",
    "LocalModels",
    "OpenAIAgent",
    "ProviderAgent",
    "ProviderMetrics",
    "PullState",
    "Registration",
    "TGIAgent",
    "agent_class",
    "build_agent",
    "missing_features",
    "provider_factory",
    "register",
]
