"""duckagents: supervised LLM provider agents on Trio, talking through typed signals."""

from .app import open_router, open_tree
from .bus import Overflow, SignalBus, SignalFilter, Subscription
from .config import Config, FleetConfig, ProviderConfig, load_config, parse_config
from .errors import (
    AgentFault,
    BusClosed,
    ConfigError,
    DuckAgentsError,
    ErrorKind,
    FleetUnavailable,
    GatewayError,
    GatewayUnreachable,
    ProviderError,
    Secret,
    StreamProtocolError,
    SupervisorGaveUp,
)
from .messages import (
    Features,
    FinishReason,
    ImagePart,
    Message,
    RequestOptions,
    TextPart,
    ToolCall,
    ToolSpec,
    Usage,
)
from .signals import (
    FeatureCheck,
    FeatureReply,
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    Signal,
    TokenEstimate,
    TokenEstimateReply,
    make_signal,
)
from .supervision import ChildSpec, Restart, Strategy, Supervisor, open_supervisor

#: The former name of :class:`ProviderErrorData` (deprecated alias, kept so existing imports work).
ProviderFailure = ProviderErrorData

__version__ = "0.1.0"

__all__ = [
    "AgentFault",
    "BusClosed",
    "ChildSpec",
    "Config",
    "ConfigError",
    "DuckAgentsError",
    "ErrorKind",
    "FeatureCheck",
    "FeatureReply",
    "Features",
    "FinishReason",
    "FleetConfig",
    "FleetUnavailable",
    "GatewayError",
    "GatewayUnreachable",
    "ImagePart",
    "Message",
    "Overflow",
    "ProviderChunk",
    "ProviderConfig",
    "ProviderError",
    "ProviderErrorData",
    "ProviderFailure",
    "ProviderRequest",
    "ProviderResponse",
    "ProviderStatus",
    "RequestOptions",
    "Restart",
    "Secret",
    "Signal",
    "SignalBus",
    "SignalFilter",
    "Strategy",
    "StreamProtocolError",
    "Subscription",
    "Supervisor",
    "SupervisorGaveUp",
    "TextPart",
    "TokenEstimate",
    "TokenEstimateReply",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "__version__",
    "load_config",
    "make_signal",
    "open_router",
    "open_supervisor",
    "open_tree",
    "parse_config",
]
