"""Providers: each speaks one LLM API over httpx (wire formats, streams, errors), with no agent logic.

Every provider implements :class:`Provider`; the neutral results (:class:`Completion`, stream events,
:class:`HealthProbe`...) are defined in :mod:`._base`.
"""

from ._anthropic import AnthropicProvider, image_problem
from ._base import (
    Completion,
    HealthProbe,
    ModelInfo,
    Provider,
    RateLimitInfo,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    TokenCount,
    heuristic_token_count,
)
from ._client import HTTPProvider
from ._http import kind_for_status, parse_duration, parse_rate_limit, parse_retry_after
from ._mock import MockProvider
from ._mock_options import Latency
from ._mock_script import MockFailure, MockReply, mock_answer
from ._ollama import OllamaProvider, canonical_model_name
from ._openai import UNKNOWN_MODEL_FEATURES, OpenAIProvider, is_reasoning_model, model_family
from ._streams import NDJSONParser, SSEEvent, SSEParser, StreamFormatError, iter_ndjson, iter_sse
from ._tgi import TGIInfo, TGIProvider

__all__ = [
    "UNKNOWN_MODEL_FEATURES",
    "AnthropicProvider",
    "Completion",
    "HTTPProvider",
    "HealthProbe",
    "Latency",
    "MockFailure",
    "MockProvider",
    "MockReply",
    "ModelInfo",
    "NDJSONParser",
    "OllamaProvider",
    "OpenAIProvider",
    "Provider",
    "RateLimitInfo",
    "SSEEvent",
    "SSEParser",
    "StreamDelta",
    "StreamEnd",
    "StreamEvent",
    "StreamFormatError",
    "TGIInfo",
    "TGIProvider",
    "TokenCount",
    "canonical_model_name",
    "heuristic_token_count",
    "image_problem",
    "is_reasoning_model",
    "iter_ndjson",
    "iter_sse",
    "kind_for_status",
    "mock_answer",
    "model_family",
    "parse_duration",
    "parse_rate_limit",
    "parse_retry_after",
]
