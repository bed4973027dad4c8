"""A provider agent's answers to ``feature_check`` and ``token_estimate`` signals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BusClosed, ProviderError
from ..messages import FEATURE_NAMES, Features
from ..providers import heuristic_token_count
from ..signals import FeatureCheck, FeatureReply, Payload, TokenEstimate, TokenEstimateReply

if TYPE_CHECKING:
    from ._agent import ProviderAgent

__all__ = ["reply_features", "reply_tokens"]


async def reply_features(agent: ProviderAgent, check: FeatureCheck) -> None:
    """Publish what ``check.model`` (default: the agent's model) supports; unknown names are False."""
    model = check.model or agent.model
    features = agent.features(model)
    supported = {name: _supports(features, name) for name in check.features or FEATURE_NAMES}
    await _publish(agent, FeatureReply(check.request_id, agent.name, model, supported, features))


async def reply_tokens(agent: ProviderAgent, query: TokenEstimate) -> None:
    """Publish the provider's token count of ``query.messages`` (the heuristic if counting fails)."""
    model = query.model or agent.model
    try:
        count = await agent.provider.estimate_tokens(query.messages, model)
        tokens, exact = count.tokens, count.exact
    except ProviderError:  # a counting endpoint failing must not cost the caller its estimate
        tokens, exact = heuristic_token_count(query.messages), False
    await _publish(agent, TokenEstimateReply(query.request_id, agent.name, model, tokens, exact))


async def _publish(agent: ProviderAgent, payload: Payload) -> None:
    try:
        await agent.publish(payload)
    except BusClosed:
        pass


def _supports(features: Features, name: str) -> bool:
    try:
        return features.supports(name)
    except ValueError:
        return False
