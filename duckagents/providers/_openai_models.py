"""What each OpenAI model supports: the model-family table and the request rules that follow from it.

Public through :mod:`duckagents.providers` (as ``openai_model_family``, ``is_openai_reasoning_model``,
``OPENAI_UNKNOWN_MODEL_FEATURES``) so the agent layer can ask what a model supports and which request
rules apply to it.
"""

from __future__ import annotations

import functools

import attrs

from ..messages import Features


@attrs.frozen
class OpenAIModelFamily:
    """Models sharing limits and request rules; a model belongs to the longest matching ``prefix``.

    ``reasoning`` families (o-series, gpt-5) take ``max_completion_tokens`` instead of ``max_tokens`` and
    reject ``temperature``/``top_p``.
    """

    prefix: str
    features: Features
    reasoning: bool = False


def _features(
    context: int, output: int, *, tools: bool = True, vision: bool = True, json_mode: bool = True,
    system_prompt: bool = True,
) -> Features:
    return Features(
        tools=tools, vision=vision, json_mode=json_mode, system_prompt=system_prompt,
        context_window=context, max_output_tokens=output,
    )


_O1_LEGACY = {"tools": False, "vision": False, "json_mode": False, "system_prompt": False}

#: Known model families (published limits). Dated snapshots (``gpt-4o-2024-08-06``) match their family.
MODEL_FAMILIES: tuple[OpenAIModelFamily, ...] = (
    OpenAIModelFamily("gpt-5", _features(400_000, 128_000), reasoning=True),
    OpenAIModelFamily("gpt-4.1", _features(1_047_576, 32_768)),
    OpenAIModelFamily("gpt-4o", _features(128_000, 16_384)),
    OpenAIModelFamily("gpt-4o-mini", _features(128_000, 16_384)),
    OpenAIModelFamily("chatgpt-4o-latest", _features(128_000, 16_384)),
    OpenAIModelFamily("gpt-4-turbo", _features(128_000, 4_096)),
    OpenAIModelFamily("gpt-4", _features(8_192, 8_192, vision=False, json_mode=False)),
    OpenAIModelFamily("gpt-3.5-turbo", _features(16_385, 4_096, vision=False)),
    OpenAIModelFamily("o1", _features(200_000, 100_000), reasoning=True),
    OpenAIModelFamily("o1-mini", _features(128_000, 65_536, **_O1_LEGACY), reasoning=True),
    OpenAIModelFamily("o1-preview", _features(128_000, 32_768, **_O1_LEGACY), reasoning=True),
    OpenAIModelFamily("o3", _features(200_000, 100_000), reasoning=True),
    OpenAIModelFamily("o3-mini", _features(200_000, 100_000, vision=False), reasoning=True),
    OpenAIModelFamily("o4-mini", _features(200_000, 100_000), reasoning=True),
)

#: What an unknown model (e.g. on an OpenAI-compatible server) is assumed to support: only the basics,
#: so nothing is routed to it that it may not handle. Override with ``model_features=``.
UNKNOWN_MODEL_FEATURES = Features(
    tools=False, vision=False, json_mode=False, context_window=8_192, max_output_tokens=4_096
)


@functools.lru_cache(maxsize=512)
def model_family(model: str) -> OpenAIModelFamily | None:
    """The family of ``model`` (``ft:`` fine-tunes and ``org/`` prefixes included), or None if unknown."""
    name = model.rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    best: OpenAIModelFamily | None = None
    for family in MODEL_FAMILIES:
        if (name == family.prefix or name.startswith(family.prefix + "-")) and (
            best is None or len(family.prefix) > len(best.prefix)
        ):
            best = family
    return best


def is_reasoning_model(model: str) -> bool:
    """True when ``model`` takes ``max_completion_tokens`` and rejects sampling parameters."""
    family = model_family(model)
    return family is not None and family.reasoning


def features_for(model: str) -> Features:
    """What ``model`` supports by the family table; :data:`UNKNOWN_MODEL_FEATURES` when it is unknown."""
    family = model_family(model)
    return family.features if family is not None else UNKNOWN_MODEL_FEATURES


__all__ = [
    "MODEL_FAMILIES",
    "UNKNOWN_MODEL_FEATURES",
    "OpenAIModelFamily",
    "features_for",
    "is_reasoning_model",
    "model_family",
]
