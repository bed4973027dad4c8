"""What each local Ollama model supports: the model-family table, ``/api/show`` details, and model names.

``/api/show`` (:class:`OllamaModelDetails`) is the authority once fetched; the family table fills in
before that. Public through :mod:`duckagents.providers` (``OllamaModelDetails``,
``ollama_canonical_model_name``).
"""

from __future__ import annotations

import attrs

from ..messages import Features

#: Used when neither /api/show nor the family table knows the model (Ollama's own default num_ctx).
DEFAULT_CONTEXT_WINDOW = 4096


@attrs.frozen
class OllamaModelFamily:
    """Models sharing a name prefix; the longest matching ``prefix`` wins, so specific variants
    (``llama3.2-vision``) beat their family (``llama3.2``)."""

    prefix: str
    context_window: int
    tools: bool
    vision: bool


_F = OllamaModelFamily

#: Published context windows and abilities; /api/show capabilities override this table.
MODEL_FAMILIES: tuple[OllamaModelFamily, ...] = (
    _F("llama3.3", 131072, True, False),
    _F("llama3.2-vision", 131072, False, True),
    _F("llama3.2", 131072, True, False),
    _F("llama3.1", 131072, True, False),
    _F("llama3", 8192, False, False),
    _F("llava", 4096, False, True),
    _F("bakllava", 4096, False, True),
    _F("moondream", 2048, False, True),
    _F("minicpm-v", 32768, False, True),
    _F("gemma3", 131072, False, True),
    _F("gemma2", 8192, False, False),
    _F("mistral-nemo", 131072, True, False),
    _F("mistral", 32768, True, False),
    _F("mixtral", 32768, True, False),
    _F("qwen2.5vl", 128000, False, True),
    _F("qwen2.5", 32768, True, False),
    _F("qwen3", 40960, True, False),
    _F("phi3", 4096, False, False),
    _F("phi4", 16384, False, False),
    _F("command-r", 131072, True, False),
)


@attrs.frozen
class OllamaModelDetails:
    """What ``POST /api/show`` says about a local model."""

    name: str
    context_window: int | None = None
    capabilities: tuple[str, ...] = ()
    family: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None


def canonical_model_name(name: str) -> str:
    """Ollama's canonical name: ``llama3.2`` and ``llama3.2:latest`` are the same model."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def model_family(model: str) -> OllamaModelFamily | None:
    """The family of ``model`` (namespace and tag ignored), or None."""
    base = model.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    matches = [family for family in MODEL_FAMILIES if base.startswith(family.prefix)]
    return max(matches, key=lambda family: len(family.prefix)) if matches else None


def features_for(model: str, shown: OllamaModelDetails | None, num_ctx: int | None) -> Features:
    """Features of ``model``: /api/show data when known, else the family table, capped by ``num_ctx``."""
    family = model_family(model)
    ctx = (shown.context_window if shown else None) or (
        family.context_window if family else DEFAULT_CONTEXT_WINDOW
    )
    if num_ctx:
        ctx = min(ctx, num_ctx)  # Ollama truncates input to num_ctx, whatever the model could take
    if shown and shown.capabilities:
        tools, vision = "tools" in shown.capabilities, "vision" in shown.capabilities
    else:
        tools, vision = (family.tools, family.vision) if family else (False, False)
    # Ollama generates until the context is full unless num_predict says otherwise.
    return Features(
        streaming=True,
        tools=tools,
        vision=vision,
        system_prompt=True,
        json_mode=True,
        context_window=ctx,
        max_output_tokens=ctx,
    )


__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "MODEL_FAMILIES",
    "OllamaModelDetails",
    "OllamaModelFamily",
    "canonical_model_name",
    "features_for",
    "model_family",
]
