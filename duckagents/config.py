"""Configuration: a TOML file structured by the shared cattrs converter, with clear errors.

API keys are never in the file: a provider names the environment variable that holds its key
(``api_key_env``), and :meth:`ProviderConfig.api_key` reads it as a :class:`~duckagents.errors.Secret`.

A provider's ``limits`` and ``breaker`` tables structure directly into the resilience types they
configure (:class:`~duckagents.resilience.RateLimits`, :class:`~duckagents.resilience.BreakerConfig`);
the limits are written per minute in the file (``requests_per_minute``, ``tokens_per_minute``).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

from .codec import converter, describe_error
from .errors import ConfigError, Secret
from .resilience import BreakerConfig, RateLimits
from .validation import ValidationLimits

ProviderKind = Literal["openai", "anthropic", "ollama", "tgi", "mock"]
StrategyName = Literal["priority", "round_robin", "least_busy", "lowest_latency", "cheapest"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434",
    "tgi": "http://127.0.0.1:8080",
    "mock": "mock://",
}


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:  # written so that NaN fails too
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


#: The keys of a provider's ``limits`` table and the :class:`RateLimits` field each one sets.
PER_MINUTE_LIMITS: dict[str, str] = {"requests_per_minute": "requests", "tokens_per_minute": "tokens"}


def _structure_limits(value: Any, _: Any) -> RateLimits:
    """A ``limits`` table (``requests_per_minute``, ``tokens_per_minute``) as per-minute RateLimits."""
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a table, got {type(value).__name__}")
    unknown = set(value) - set(PER_MINUTE_LIMITS)
    if unknown:
        known = " and ".join(PER_MINUTE_LIMITS)
        raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; the keys are {known}")
    fields: dict[str, int] = {}
    for key, field in PER_MINUTE_LIMITS.items():
        number = value.get(key)
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"{key} must be an integer, got {type(number).__name__}")
        if number <= 0:
            raise ValueError(f"{key} must be > 0, got {number!r}")
        fields[field] = number
    return RateLimits(**fields, period=60.0)


# The file spells limits per minute; the agent uses them as the RateLimits they are.
converter.register_structure_hook(RateLimits, _structure_limits)


@attrs.frozen
class ProviderConfig:
    """One provider agent."""

    name: str
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    models: tuple[str, ...] = ()
    default_model: str | None = None
    priority: int = 0
    #: Prices in USD per 1,000 tokens, for the ``cheapest`` strategy.
    cost_per_1k_input: float = 0.0
    cost_per_1k_output: float = 0.0
    #: Limits the config sets (per minute in the file); a dimension left ``None`` takes the agent's
    #: per-model default, if it has one, else is unlimited.
    limits: RateLimits = RateLimits()
    #: The circuit breaker (the seed's defaults: 5 consecutive failures, 60 s open).
    breaker: BreakerConfig = BreakerConfig()
    max_concurrency: int = attrs.field(default=64, validator=_positive)
    timeout: float = attrs.field(default=120.0, validator=_positive)
    #: Provider-specific extras (e.g. the mock's scripted behaviour).
    options: dict[str, Any] = attrs.field(factory=dict)

    @property
    def url(self) -> str:
        """The base URL, or the kind's default."""
        return self.base_url or DEFAULT_BASE_URLS[self.kind]

    def api_key(self, environ: Mapping[str, str] | None = None) -> Secret | None:
        """The API key from the environment variable named by ``api_key_env``.

        Raises :class:`ConfigError` when the variable is named but not set.
        """
        if not self.api_key_env:
            return None
        env = os.environ if environ is None else environ
        value = env.get(self.api_key_env)
        if not value:
            raise ConfigError(
                f"provider {self.name!r}: environment variable {self.api_key_env} (api_key_env) is not set"
            )
        return Secret(value)


@attrs.frozen
class RouterConfig:
    """How the router chooses agents and retries."""

    strategy: StrategyName = "priority"
    max_attempts: int = attrs.field(default=3, validator=_positive)
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    request_timeout: float = attrs.field(default=120.0, validator=_positive)
    #: The longest wait an upstream may impose (``retry-after``, rate-limit reset headers): longer hints
    #: are clamped to it, NaN, infinite or negative ones ignored.
    max_retry_after: float = attrs.field(default=300.0, validator=_positive)


@attrs.frozen
class SupervisionConfig:
    """Restart budgets of the tree (docs/supervision.md).

    The root supervisor's budget is the router's: ``max_restarts`` restarts within ``period`` seconds, then
    the tree gives up. Each provider agent has a supervisor of its own with its own budget
    (``agent_max_restarts`` within ``agent_period``), restarting it after a backoff from
    ``agent_backoff_initial`` doubling up to ``agent_backoff_max`` seconds; an agent that exhausts it is
    marked down for good, and the rest of the tree keeps serving.
    """

    max_restarts: int = attrs.field(default=3, validator=_non_negative)
    period: float = attrs.field(default=10.0, validator=_positive)
    agent_max_restarts: int = attrs.field(default=5, validator=_non_negative)
    agent_period: float = attrs.field(default=60.0, validator=_positive)
    agent_backoff_initial: float = attrs.field(default=0.2, validator=_non_negative)
    agent_backoff_max: float = attrs.field(default=5.0, validator=_non_negative)


@attrs.frozen
class TokenConfig:
    """A gateway bearer token, read from ``env``; ``scopes`` are ``subscribe`` and/or ``request``."""

    env: str
    scopes: tuple[Literal["subscribe", "request"], ...] = ("subscribe", "request")


@attrs.frozen
class GatewayConfig:
    """The optional WebSocket gateway."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8765
    tokens: tuple[TokenConfig, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_connections: int = attrs.field(default=1000, validator=_positive)
    max_subscriptions: int = attrs.field(default=32, validator=_positive)
    max_in_flight: int = attrs.field(default=16, validator=_positive)
    max_frame_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    send_buffer: int = attrs.field(default=1024, validator=_positive)
    slow_consumer: Literal["drop_oldest", "disconnect"] = "drop_oldest"
    #: Bytes of signal frames waiting for one slow client (and, apart, of its control frames).
    send_buffer_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    #: Bytes of encoded signals the gateway keeps to share one encoding between its connections.
    frame_cache_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    #: Client messages per connection: sustained rate and burst (a token bucket); beyond, error frames,
    #: and a flood of another ``message_burst`` refused messages in a row closes the connection (1008).
    max_messages_per_second: float = attrs.field(default=100.0, validator=_positive)
    message_burst: int = attrs.field(default=200, validator=_positive)
    #: Error frames per connection: sustained rate and burst; a client that keeps getting errors faster
    #: is closed with 1008, whatever its message rate.
    max_errors_per_second: float = attrs.field(default=5.0, validator=_positive)
    error_burst: int = attrs.field(default=50, validator=_positive)
    #: Seconds a connection may stay without any subscription or request in flight before it is closed.
    idle_timeout: float = attrs.field(default=60.0, validator=_positive)


def _host(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{attribute.name} must be a host name or address, got {value!r}")


def _port(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a TCP port from 0 to 65535, got {value!r}")


@attrs.frozen
class HttpConfig:
    """The optional HTTP front door: OpenAI-compatible API, health checks, Prometheus metrics.

    Bearer tokens and their scopes are the gateway's (``[gateway] tokens``), so one token table serves
    both doors; bodies are bounded by ``[validation]`` (``max_bytes``, ``max_depth``...) as at every door.
    """

    enabled: bool = False
    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=8080, validator=_port)
    #: Seconds a client has to send the whole body once the headers arrived (408 beyond).
    body_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Chat completions in flight at once through this door (503 with retry-after beyond).
    max_in_flight: int = attrs.field(default=1024, validator=_positive)
    #: Seconds an idle keep-alive connection stays open.
    keep_alive_timeout: float = attrs.field(default=5.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        for name in ("body_timeout", "keep_alive_timeout"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number of seconds")


@attrs.frozen
class Config:
    """The whole configuration."""

    providers: tuple[ProviderConfig, ...] = ()
    router: RouterConfig = RouterConfig()
    gateway: GatewayConfig = GatewayConfig()
    validation: ValidationLimits = ValidationLimits()
    supervision: SupervisionConfig = SupervisionConfig()
    http: HttpConfig = HttpConfig()
    health_interval: float = attrs.field(default=30.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        names = [p.name for p in self.providers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate provider names: {', '.join(dupes)}")


def parse_config(data: Mapping[str, Any]) -> Config:
    """Structure a mapping (e.g. parsed TOML) into a :class:`Config`; raises :class:`ConfigError`."""
    if "providers" in data and isinstance(data["providers"], list):
        for index, entry in enumerate(data["providers"]):
            if isinstance(entry, dict):
                unknown = set(entry) - set(attrs.fields_dict(ProviderConfig))
                if unknown:
                    raise ConfigError(f"providers[{index}]: unknown key(s) {', '.join(sorted(unknown))}")
    http = data.get("http")
    if isinstance(http, dict):
        unknown = set(http) - set(attrs.fields_dict(HttpConfig))
        if unknown:
            raise ConfigError(f"http: unknown key(s) {', '.join(sorted(unknown))}")
    unknown_top = set(data) - set(attrs.fields_dict(Config))
    if unknown_top:
        raise ConfigError(f"unknown top-level key(s): {', '.join(sorted(unknown_top))}")
    try:
        return converter.structure(dict(data), Config)
    except cattrs.BaseValidationError as exc:
        raise ConfigError(f"invalid configuration: {describe_error(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def default_config(*, with_ollama: bool = False) -> Config:
    """The embedded default: the mock provider (no keys), plus a local Ollama when one answers."""
    providers = [ProviderConfig(name="mock", kind="mock", default_model="mock-1", priority=10)]
    if with_ollama:
        providers.insert(0, ProviderConfig(name="ollama", kind="ollama", priority=0, max_concurrency=2))
    return Config(providers=tuple(providers))
