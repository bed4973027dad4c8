"""What the model a TGI server serves supports: from its ``/info`` (:class:`TGIInfo`), else TGI's defaults.

TGI serves one model, so its "model table" is what ``/info`` says about it plus a list of name hints for
vision-language models whose ``/info`` has no pipeline tag.
"""

from __future__ import annotations

import attrs

from ..messages import Features

#: Before /info is fetched: TGI's default limits (v2 launcher defaults), tools and grammar always on.
DEFAULT_FEATURES = Features(tools=True, json_mode=True, context_window=4096, max_output_tokens=1024)
# Model ids of vision-language models TGI serves, for servers whose /info has no pipeline tag.
_VISION_HINTS = (
    "llava",
    "idefics",
    "paligemma",
    "qwen2-vl",
    "qwen2.5-vl",
    "mllama",
    "vision",
    "pixtral",
    "gemma-3",
)


@attrs.frozen
class TGIInfo:
    """What ``GET /info`` says about the served model and the router's limits."""

    model_id: str
    max_input_tokens: int
    max_total_tokens: int
    max_concurrent_requests: int | None = None
    max_best_of: int | None = None
    max_stop_sequences: int | None = None
    max_client_batch_size: int | None = None
    version: str | None = None
    model_pipeline_tag: str | None = None
    model_sha: str | None = None

    def features(self) -> Features:
        """What the served model supports, by this ``/info`` (see :func:`features_for`)."""
        return features_for(self)


def features_for(info: TGIInfo | None) -> Features:
    """Features from /info: the window is ``max_total_tokens``; output can use all but one input token."""
    if info is None:
        return DEFAULT_FEATURES
    vision = info.model_pipeline_tag == "image-text-to-text" or any(
        hint in info.model_id.lower() for hint in _VISION_HINTS
    )
    return Features(
        streaming=True,
        tools=True,  # TGI implements tools with grammars for every model
        vision=vision,
        system_prompt=True,
        json_mode=True,
        context_window=info.max_total_tokens,
        max_output_tokens=max(1, info.max_total_tokens - 1),
    )


__all__ = ["DEFAULT_FEATURES", "TGIInfo", "features_for"]
