"""What each Claude model supports: the model-family table and the request rules that follow from it.

This table is the one place that knows which models refuse ``temperature`` and ``top_p`` together
(:attr:`AnthropicModelFamily.exclusive_sampling`); :func:`~._anthropic_wire.build_body` applies it.
"""

from __future__ import annotations

import functools

import attrs

from ..messages import Features


@attrs.frozen
class AnthropicModelFamily:
    """Claude models sharing limits and request rules; a model belongs to the first matching ``prefix``.

    ``exclusive_sampling``: the model takes ``temperature`` or ``top_p``, not both (Claude Opus 4.1 and
    every model since answer 400 "cannot both be specified"). When a request sets both, ``temperature``
    is sent and ``top_p`` left out: it is the parameter Anthropic recommends adjusting, and the one every
    caller and every other provider understands the same way.
    """

    prefix: str
    context_window: int
    max_output_tokens: int
    exclusive_sampling: bool = True

    @property
    def features(self) -> Features:
        """Every Claude model takes images and tools; none has a JSON mode."""
        return Features(
            tools=True,
            vision=True,
            context_window=self.context_window,
            max_output_tokens=self.max_output_tokens,
        )


#: Published limits from Anthropic's model overview pages. First match wins, so more specific prefixes
#: come first.
MODEL_FAMILIES: tuple[AnthropicModelFamily, ...] = (
    AnthropicModelFamily("claude-fable-5", 1_000_000, 128_000),
    AnthropicModelFamily("claude-opus-5", 1_000_000, 128_000),
    AnthropicModelFamily("claude-sonnet-5", 1_000_000, 128_000),
    AnthropicModelFamily("claude-opus-4-8", 1_000_000, 128_000),
    AnthropicModelFamily("claude-opus-4-7", 1_000_000, 128_000),
    AnthropicModelFamily("claude-opus-4-6", 1_000_000, 128_000),
    AnthropicModelFamily("claude-sonnet-4-6", 1_000_000, 128_000),
    AnthropicModelFamily("claude-opus-4-5", 200_000, 64_000),
    AnthropicModelFamily("claude-sonnet-4-5", 200_000, 64_000),
    AnthropicModelFamily("claude-opus-4-1", 200_000, 32_000),
    AnthropicModelFamily("claude-opus-4", 200_000, 32_000, exclusive_sampling=False),
    AnthropicModelFamily("claude-sonnet-4", 200_000, 64_000, exclusive_sampling=False),
    AnthropicModelFamily("claude-haiku-4", 200_000, 64_000),  # 4.5 is the first Haiku 4
    AnthropicModelFamily("claude-3-7-sonnet", 200_000, 64_000, exclusive_sampling=False),
    AnthropicModelFamily("claude-3-5-", 200_000, 8_192, exclusive_sampling=False),
    AnthropicModelFamily("claude-3-", 200_000, 4_096, exclusive_sampling=False),
)

#: A model the table does not know: the common Claude profile, with the rules of current models.
UNKNOWN_MODEL_FAMILY = AnthropicModelFamily("", 200_000, 8_192)


@functools.lru_cache(maxsize=512)
def model_family(model: str) -> AnthropicModelFamily:
    """The family of ``model``; :data:`UNKNOWN_MODEL_FAMILY` when no prefix matches."""
    return next((f for f in MODEL_FAMILIES if model.startswith(f.prefix)), UNKNOWN_MODEL_FAMILY)


@functools.lru_cache(maxsize=512)
def features_for(model: str) -> Features:
    """What an Anthropic model supports; unknown models get the common Claude profile."""
    return model_family(model).features


__all__ = ["MODEL_FAMILIES", "UNKNOWN_MODEL_FAMILY", "AnthropicModelFamily", "features_for", "model_family"]
