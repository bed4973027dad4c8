"""Provider agents: one supervised actor per provider, with its rate limiter, circuit breaker, metrics and
health reports (the base :class:`ProviderAgent`), and the provider-specific agents."""

from ._agent import ProviderAgent, missing_features
from ._anthropic import AnthropicAgent
from ._local import LOCAL_MAX_CONCURRENCY, LocalAgent, LocalModels, PullState
from ._metrics import ProviderMetrics
from ._openai import OpenAIAgent
from ._registry import Registration, agent_class, build_agent, provider_factory, register
from ._tgi import TGIAgent

__all__ = [
    "LOCAL_MAX_CONCURRENCY",
    "AnthropicAgent",
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
