"""Providers: each speaks one LLM API over httpx (wire formats, streams, errors), with no agent logic.

Every provider implements :class:`Provider`; the neutral results (:class:`Completion`, stream events,
:class:`HealthProbe`...) are defined in :mod:`._base`. The HTTP providers share one shape (see
:mod:`._client`): ``_<p>.py`` (the provider), ``_<p>_models.py`` (what each model supports),
``_<p>_wire.py`` (pure encoding and decoding) and ``_<p>_errors.py`` (error replies, rate-limit headers).

What a provider's model table says is public under a name that says whose it is
(``openai_model_family``, ``anthropic_image_problem``, ``ollama_canonical_model_name``...), so the
tables of different APIs never clash.
"""

from ._anthropic import AnthropicProvider
from ._anthropic_models import AnthropicModelFamily
from ._anthropic_models import model_family as anthropic_model_family
from ._anthropic_wire import image_problem as anthropic_image_problem
from ._base import (
    Completion,
    HealthProbe,
    InBandError,
    ModelInfo,
    Provider,
    RateLimitInfo,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    TokenCount,
    WireFormatError,
    heuristic_token_count,
)
from ._client import HTTPProvider
from ._disabled import DisabledProvider
from ._http import (
    DEFAULT_MAX_RETRY_AFTER,
    cap_wait,
    kind_for_status,
    max_retry_after,
    parse_duration,
    parse_rate_limit,
    parse_retry_after,
)
from ._mock import MockProvider
from ._mock_options import Latency, MockOptions
from ._mock_script import MockFailure, MockReply, mock_answer
from ._ollama import OllamaProvider
from ._ollama_models import OllamaModelDetails
from ._ollama_models import canonical_model_name as ollama_canonical_model_name
from ._openai import OpenAIProvider
from ._openai_models import UNKNOWN_MODEL_FEATURES as OPENAI_UNKNOWN_MODEL_FEATURES
from ._openai_models import OpenAIModelFamily
from ._openai_models import is_reasoning_model as is_openai_reasoning_model
from ._openai_models import model_family as openai_model_family
from ._streams import NDJSONParser, SSEEvent, SSEParser, iter_ndjson, iter_sse
from ._tgi import TGIProvider
from ._tgi_models import TGIInfo

# The older names, from before each provider's table was named after its API.

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER",
    "OPENAI_UNKNOWN_MODEL_FEATURES",
    "AnthropicModelFamily",
    "AnthropicProvider",
    "Completion",
    "DisabledProvider",
    "HTTPProvider",
    "HealthProbe",
    "InBandError",
    "Latency",
    "MockFailure",
    "MockOptions",
    "MockProvider",
    "MockReply",
    "ModelInfo",
    "NDJSONParser",
    "OllamaModelDetails",
    "OllamaProvider",
    "OpenAIModelFamily",
    "OpenAIProvider",
    "Provider",
    "RateLimitInfo",
    "SSEEvent",
    "SSEParser",
    "StreamDelta",
    "StreamEnd",
    "StreamEvent",
    "TGIInfo",
    "TGIProvider",
    "TokenCount",
    "WireFormatError",
    "anthropic_image_problem",
    "anthropic_model_family",
    "cap_wait",
    "heuristic_token_count",
    "is_openai_reasoning_model",
    "iter_ndjson",
    "iter_sse",
    "kind_for_status",
    "max_retry_after",
    "mock_answer",
    "ollama_canonical_model_name",
    "openai_model_family",
    "parse_duration",
    "parse_rate_limit",
    "parse_retry_after",
]
