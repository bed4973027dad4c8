"""Configuration: a TOML file structured by the shared cattrs converter, with clear errors.

API keys are never in the file: a provider names the environment variable that holds its key
(``api_key_env``), and :meth:`ProviderConfig.api_key` reads it as a :class:`~duckagents.errors.Secret`.

A provider's ``limits`` and ``breaker`` tables structure directly into the resilience types they
configure (:class:`~duckagents.resilience.RateLimits`, :class:`~duckagents.resilience.BreakerConfig`);
the limits are written per minute in the file (``requests_per_minute``, ``tokens_per_minute``). A provider's
``options`` table is checked against its kind's schema (:data:`PROVIDER_OPTIONS`). A provider whose
``api_key_env`` variable is not set is disabled (shown as down, with the reason), not fatal.

Model routing (docs/routing.md): a provider serves the models its ``models`` list matches (glob patterns;
``["*"]`` for any name) plus its default model; ``[models."name"]`` tables give a model its fallback
chains and its price; ``[router] default_model`` names the model of requests that name none. The chains
are checked when the config is loaded: every model they name must be served, and they must not loop or
run deeper than ``[router] max_fallbacks``.

:func:`parse_config` rejects, each with the path of the offending key: unknown keys anywhere (with the
closest known key as a suggestion), non-finite numbers (TOML has ``nan`` and ``inf``), and values out of
range (negative durations, a port above 65535, an empty provider name...). Every table and key is
documented in docs/configuration.md (a test walks :func:`tables` to keep it so).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import socket
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from .codec import converter, describe_error
from .costs import Budget, ModelPrice
from .errors import ConfigError, Secret, did_you_mean
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
#: The model each kind's provider uses when the config names none (the providers' ``DEFAULT_MODEL``).
DEFAULT_MODELS: dict[str, str] = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-6",
    "ollama": "llama3.2",
    "tgi": "tgi",
    "mock": "mock-1",
}
#: Kinds whose built-in per-model rate limits describe their official API host only.
OFFICIAL_HOST_KINDS = frozenset({"openai", "anthropic"})


# --- validators: one message style, "<key> must be ..., got <value>"; NaN fails every range check ---------


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _non_negative(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _port(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a TCP port from 0 to 65535, got {value!r}")


def _host(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{attribute.name} must be a host name or address, got {value!r}")


#: Longest provider name (it appears in signals, subjects and metric labels).
MAX_NAME_LENGTH = 128


def _name(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")
    if value != value.strip() or len(value) > MAX_NAME_LENGTH or not value.isprintable():
        raise ValueError(
            f"{attribute.name} must be printable, without spaces around it, at most {MAX_NAME_LENGTH} "
            f"characters; got {value!r}"
        )


def _non_empty(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{attribute.name} must not be empty")


def _model_names(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for name in value:
        if not name.strip():
            raise ValueError(f"{attribute.name}: a model name must not be empty")


def is_pattern(name: str) -> bool:
    """Is ``name`` a glob pattern (``*``, ``?``, ``[...]``) rather than one model's name?"""
    return any(c in name for c in "*?[")


def _finite_non_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


#: The keys of a provider's ``limits`` table and the :class:`RateLimits` field each one sets.
PER_MINUTE_LIMITS: dict[str, str] = {"requests_per_minute": "requests", "tokens_per_minute": "tokens"}


#: A smaller bucket than a minute's worth, refilled at the same rate (``burst`` requests at once).
BURST = "burst"


def _limit_number(value: Mapping[str, Any], key: str) -> int | None:
    number = value.get(key)
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"{key} must be an integer, got {type(number).__name__}")
    if number <= 0:
        raise ValueError(f"{key} must be > 0, got {number!r}")
    return number


def _structure_limits(value: Any, _: Any) -> RateLimits:
    """A ``limits`` table (``requests_per_minute``, ``tokens_per_minute``, ``burst``) as RateLimits: per
    minute, or with ``burst`` a bucket of ``burst`` requests refilled at ``requests_per_minute`` (its
    period is the time that takes; the token bucket keeps its per-minute rate over the same period)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a table, got {type(value).__name__}")
    unknown = set(value) - {*PER_MINUTE_LIMITS, BURST}
    if unknown:
        known = ", ".join([*PER_MINUTE_LIMITS, BURST])
        raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; the keys are {known}")
    fields: dict[str, int] = {}
    for key, field in PER_MINUTE_LIMITS.items():
        number = _limit_number(value, key)
        if number is not None:
            fields[field] = number
    burst = _limit_number(value, BURST)
    if burst is None:
        return RateLimits(**fields, period=60.0)
    per_minute = fields.get("requests")
    if per_minute is None:
        raise ValueError("burst needs requests_per_minute (the rate its bucket refills at)")
    period = 60.0 * burst / per_minute
    tokens = fields.get("tokens")
    scaled = None if tokens is None else max(1, round(tokens * period / 60.0))
    return RateLimits(requests=burst, tokens=scaled, period=period)


def _unstructure_limits(limits: RateLimits) -> dict[str, Any]:
    per_minute = 60.0 / limits.period
    out: dict[str, Any] = {}
    for key, field in PER_MINUTE_LIMITS.items():
        value = getattr(limits, field)
        if value is not None:
            out[key] = round(value * per_minute)
    if limits.requests is not None and not math.isclose(limits.period, 60.0):
        out[BURST] = limits.requests
    return out


# The file spells limits per minute; the agent uses them as the RateLimits they are.
converter.register_structure_hook(RateLimits, _structure_limits)
converter.register_unstructure_hook(RateLimits, _unstructure_limits)
# The routing tables reject keys they do not know (a misspelt ``perod`` must not silently mean a month).
for _strict in (Budget, ModelPrice):
    converter.register_structure_hook(
        _strict, make_dict_structure_fn(_strict, converter, _cattrs_forbid_extra_keys=True)
    )


# --- a provider's options, per kind -----------------------------------------------------------------


@attrs.frozen
class OpenAIOptions:
    """``options`` of a ``kind = "openai"`` provider (and OpenAI-compatible servers)."""

    #: Sent as the ``OpenAI-Organization`` header.
    organization: str | None = None
    #: Sent as the ``OpenAI-Project`` header.
    project: str | None = None
    #: Ask for token usage at the end of a stream (``stream_options.include_usage``); some compatible
    #: servers reject it.
    stream_usage: bool = True


@attrs.frozen
class AnthropicOptions:
    """``options`` of a ``kind = "anthropic"`` provider."""

    #: The ``anthropic-version`` header.
    api_version: str = "2023-06-01"
    #: ``max_tokens`` sent when a request sets none (the API requires one); default: the model's maximum.
    default_max_tokens: int | None = attrs.field(default=None, validator=_positive)
    #: Caps the context window the agent enforces (fail fast or trim), e.g. to bound cost.
    context_window: int | None = attrs.field(default=None, validator=_positive)


def _keep_alive(_: Any, attribute: attrs.Attribute[Any], value: str | float | None) -> None:
    if isinstance(value, bool) or not (value is None or isinstance(value, str | int | float)):
        raise TypeError(f"{attribute.name} must be a duration like \"5m\" or a number of seconds")
    if isinstance(value, int | float) and not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be finite, got {value!r}")


@attrs.frozen
class OllamaOptions:
    """``options`` of a ``kind = "ollama"`` provider (a local model server)."""

    #: Pull a missing model when a request needs it (with progress signals), then retry once.
    auto_pull: bool = False
    #: Seconds between two polls of the loaded models (``/api/ps``).
    ps_interval: float = attrs.field(default=15.0, validator=_positive)
    #: How long Ollama keeps a model loaded after a request: ``"5m"``, seconds, or ``-1`` for ever.
    keep_alive: Any = attrs.field(default=None, validator=_keep_alive)  # str | float | None
    #: Context window Ollama allocates per request (``options.num_ctx``); default: the model's.
    num_ctx: int | None = attrs.field(default=None, validator=_positive)


@attrs.frozen
class TGIOptions:
    """``options`` of a ``kind = "tgi"`` provider: none (its limits come from the server's ``/info``)."""


#: The schema of each kind's ``options`` table. ``mock`` is registered by the providers layer
#: (:class:`~duckagents.providers.MockOptions`, see :func:`register_options`), which sits above this module.
PROVIDER_OPTIONS: dict[str, type[Any]] = {
    "openai": OpenAIOptions,
    "anthropic": AnthropicOptions,
    "ollama": OllamaOptions,
    "tgi": TGIOptions,
}
#: Checks of a kind's options beyond structuring into its schema (e.g. the mock's feature names).
_OPTION_CHECKS: dict[str, Callable[[Mapping[str, Any]], None]] = {}


def register_options(
    kind: str, schema: type[Any], check: Callable[[Mapping[str, Any]], None] | None = None
) -> None:
    """Check the ``options`` of providers of ``kind`` against ``schema`` (an attrs class: unknown keys,
    types, its validators), and with ``check`` instead of structuring when given (it raises ``ValueError``
    or ``TypeError``)."""
    PROVIDER_OPTIONS[kind] = schema
    if check is not None:
        _OPTION_CHECKS[kind] = check


def check_options(kind: str, options: Any) -> None:
    """Raise ``ValueError`` / ``TypeError`` (or a cattrs validation error) when ``options`` does not fit
    ``kind``'s schema; paths in the message are relative to the options table (``@ $.latency``)."""
    if not isinstance(options, Mapping):
        raise TypeError(f"expected a table, got {type(options).__name__}")
    schema = PROVIDER_OPTIONS.get(kind)
    if schema is None:
        return
    problems = unknown_keys(options, schema, "")
    if problems:
        raise ValueError("; ".join(problems))
    check = _OPTION_CHECKS.get(kind)
    if check is not None:
        check(options)
    else:
        converter.structure(dict(options), schema)


def _check_options(instance: Any, _: attrs.Attribute[Any], value: dict[str, Any]) -> None:
    try:
        check_options(instance.kind, value)
    except cattrs.BaseValidationError as exc:
        raise ValueError(f"options: {describe_error(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"options: {exc}") from None


# --- the configuration ----------------------------------------------------------------------------


@attrs.frozen
class ProviderConfig:
    """One provider agent."""

    name: str = attrs.field(validator=_name)
    kind: ProviderKind
    base_url: str | None = attrs.field(default=None, validator=_non_empty)
    api_key_env: str | None = attrs.field(default=None, validator=_non_empty)
    #: The models it serves besides its default model: names or glob patterns (``"gpt-4o*"``);
    #: ``["*"]`` serves any name. Empty: the default model only.
    models: tuple[str, ...] = attrs.field(default=(), validator=_model_names)
    default_model: str | None = attrs.field(default=None, validator=_non_empty)
    priority: int = 0
    #: Share of the traffic under ``round_robin`` (weighted): 2 gets twice the requests of 1.
    weight: float = attrs.field(default=1.0, validator=_positive)
    #: This provider's prices in USD per 1,000 tokens, for every model it serves; unset, the price
    #: table decides (docs/routing.md). Used for ``usage.cost``, budgets and the ``cheapest`` strategy.
    cost_per_1k_input: float | None = attrs.field(default=None, validator=_non_negative)
    cost_per_1k_output: float | None = attrs.field(default=None, validator=_non_negative)
    #: At most this much spend per day or month (``budget = { usd = 20, period = "day" }``).
    budget: Budget | None = None
    #: Limits the config sets (per minute in the file); a dimension left ``None`` takes the agent's
    #: per-model default, if it has one, else is unlimited.
    limits: RateLimits = RateLimits()
    #: The circuit breaker (the seed's defaults: 5 consecutive failures, 60 s open).
    breaker: BreakerConfig = BreakerConfig()
    max_concurrency: int = attrs.field(default=64, validator=_positive)
    timeout: float = attrs.field(default=120.0, validator=_positive)
    #: A stream whose first chunk has not come this many seconds after the call went upstream fails
    #: with ``timeout`` (retried elsewhere: nothing reached the caller yet).
    first_chunk_timeout: float = attrs.field(default=60.0, validator=_positive)
    #: A stream silent this many seconds between two chunks fails with ``timeout`` (``partial``).
    idle_chunk_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Provider-specific extras, checked against the kind's schema (:data:`PROVIDER_OPTIONS`).
    options: dict[str, Any] = attrs.field(factory=dict, validator=_check_options)

    @property
    def url(self) -> str:
        """The base URL, or the kind's default."""
        return self.base_url or DEFAULT_BASE_URLS[self.kind]

    @property
    def model(self) -> str:
        """The default model: ``default_model``, else the kind's (:data:`DEFAULT_MODELS`)."""
        return self.default_model or DEFAULT_MODELS[self.kind]

    @property
    def price(self) -> ModelPrice | None:
        """The provider's own prices (``cost_per_1k_*``), if it sets any."""
        return ModelPrice.per_1k(self.cost_per_1k_input, self.cost_per_1k_output)

    @property
    def official_host(self) -> bool:
        """True when an OpenAI or Anthropic provider talks to the vendor's own API host, where the
        built-in per-model rate limits describe the upstream."""
        if self.kind not in OFFICIAL_HOST_KINDS:
            return False
        official = urllib.parse.urlsplit(DEFAULT_BASE_URLS[self.kind]).hostname
        return urllib.parse.urlsplit(self.url).hostname == official

    def serves(self, model: str) -> bool:
        """Does this provider serve ``model``: its default model, or one its ``models`` match?"""
        return model == self.model or any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def missing_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Why this provider cannot start for want of its API key (``"OPENAI_API_KEY is not set"``), or
        None when it has its key or needs none."""
        if not self.api_key_env:
            return None
        env = os.environ if environ is None else environ
        return None if env.get(self.api_key_env) else f"{self.api_key_env} is not set"

    def api_key(self, environ: Mapping[str, str] | None = None) -> Secret | None:
        """The API key from the environment variable named by ``api_key_env``.

        Raises :class:`ConfigError` when the variable is named but not set.
        """
        if not self.api_key_env:
            return None
        missing = self.missing_key(environ)
        if missing:
            raise ConfigError(f"provider {self.name!r}: {missing} (api_key_env)")
        env = os.environ if environ is None else environ
        return Secret(env[self.api_key_env])


@attrs.frozen
class ModelConfig:
    """What the config says about one model name (``[models."name"]``): where its requests go when it
    cannot answer, and its price."""

    #: Models to try, in order, when every agent for this one failed (or is out) with a provider-side
    #: error: rate limited, 5xx, timeout, down, model not found, budget exceeded...
    fallbacks: tuple[str, ...] = ()
    #: Models to try when the request does not fit this model's context window (only those whose
    #: window fits it).
    context_window_fallbacks: tuple[str, ...] = ()
    #: Models to try when this one refused or its content filter stopped the answer (opt-in).
    content_policy_fallbacks: tuple[str, ...] = ()
    #: USD per million tokens, over the built-in table (``price = { input = 0.15, output = 0.6 }``).
    price: ModelPrice | None = None

    def chains(self) -> dict[str, tuple[str, ...]]:
        """The three chains by their key."""
        return {
            "fallbacks": self.fallbacks,
            "context_window_fallbacks": self.context_window_fallbacks,
            "content_policy_fallbacks": self.content_policy_fallbacks,
        }


@attrs.frozen
class RouterConfig:
    """How the router chooses agents and retries."""

    strategy: StrategyName = "priority"
    #: Attempts per model of a request (a fallback model gets as many again).
    max_attempts: int = attrs.field(default=3, validator=_positive)
    backoff_initial: float = attrs.field(default=0.05, validator=_non_negative)
    backoff_max: float = attrs.field(default=2.0, validator=_non_negative)
    request_timeout: float = attrs.field(default=120.0, validator=_positive)
    #: The longest wait an upstream may impose (``retry-after``, rate-limit reset headers): longer hints
    #: are clamped to it, NaN, infinite or negative ones ignored.
    max_retry_after: float = attrs.field(default=300.0, validator=_positive)
    #: The model of requests that name none; unset, the default model of the first provider by
    #: (priority, config order).
    default_model: str | None = None
    #: Fallback models one request may go through at most; deeper chains are refused at load.
    max_fallbacks: int = attrs.field(default=5, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.backoff_initial > self.backoff_max:
            raise ValueError(
                f"backoff_initial ({self.backoff_initial:g}) must not exceed "
                f"backoff_max ({self.backoff_max:g})"
            )


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


def _scopes(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must name at least one of subscribe, request, admin")


@attrs.frozen
class TokenConfig:
    """A gateway bearer token, read from ``env``; ``scopes`` are ``subscribe``, ``request`` and/or
    ``admin`` (operator controls and reload; never given unless listed).

    ``name`` (default: ``env``) is how requests submitted with it are known (``ProviderRequest.principal``),
    who the operator controls it sends say acted, and what its ``budget`` is counted against; the token
    itself never appears anywhere.
    """

    env: str = attrs.field(validator=_name)
    scopes: tuple[Literal["subscribe", "request", "admin"], ...] = attrs.field(
        default=("subscribe", "request"), validator=_scopes
    )
    name: str | None = attrs.field(default=None, validator=_non_empty)
    budget: Budget | None = None

    @property
    def label(self) -> str:
        """The token's name: ``name``, else the environment variable's."""
        return self.name or self.env


@attrs.frozen
class GatewayConfig:
    """The optional WebSocket gateway."""

    enabled: bool = False
    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=8765, validator=_port)
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
    #: Serve the dashboard page (docs/dashboard.md) to plain HTTP GETs on the gateway's address.
    dashboard: bool = True

    def __attrs_post_init__(self) -> None:
        labels = [t.label for t in self.tokens]
        dupes = sorted({n for n in labels if labels.count(n) > 1})
        if dupes:
            raise ValueError(f"gateway tokens: duplicate token names: {', '.join(dupes)}")


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


_REDIS_SCHEMES = ("redis", "rediss", "unix")
# Names that go into Redis keys: no braces (they would break the Cluster hash tags), no whitespace.
_KEY_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo, or a ``password=`` query argument) replaced by ``***``.

    A userinfo without ``:`` is masked whole: some clients read a lone userinfo as the password.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


def _redis_url(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    shown = mask_url(value)
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when not a number in 0..65535
    except ValueError:
        raise ValueError(f"fleet.redis_url {shown!r} is not a valid URL") from None
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"fleet.redis_url {shown!r} must start with redis://, rediss:// or unix:// "
            f"(got scheme {parts.scheme!r})"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"fleet.redis_url {shown!r} names no socket path")
        return
    if not parts.hostname:
        raise ValueError(f"fleet.redis_url {shown!r} names no host")
    if port == 0:
        raise ValueError(f"fleet.redis_url {shown!r}: port 0 is not a server port")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"fleet.redis_url {shown!r}: the path must be a database number, got {database!r}")


def _key_name(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _KEY_NAME.fullmatch(value):
        raise ValueError(
            f"fleet.{attribute.name} must be 1 to 64 characters among letters, digits and _ . : @ - "
            f"(it goes into Redis keys), got {value!r}"
        )


def _default_instance() -> str:
    # Unique per process on a host, readable in a status view; hostnames are letters, digits, '.', '-'.
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


@attrs.frozen
class FleetConfig:
    """Fleet mode: several processes share rate limits, breakers and one signal stream through Redis.

    Absent (``Config.fleet is None``), everything stays in-process. The password may be in ``redis_url``
    (it is masked in every repr, log line and error) or, better, in the environment variable named by
    ``password_env``.
    """

    redis_url: str = attrs.field(validator=_redis_url, repr=lambda url: repr(mask_url(url)))
    #: Prefix of every Redis key and channel duckagents uses (several fleets can share one Redis).
    key_prefix: str = attrs.field(default="duckagents", validator=_key_name)
    #: Name of this replica, shown in the fleet's status and stream; unique within the fleet.
    instance: str = attrs.field(factory=_default_instance, validator=_key_name)
    #: Replicas sharing the quotas: while Redis is unreachable, each uses 1/expected_replicas of a limit.
    expected_replicas: int = attrs.field(default=1, validator=_positive)
    #: Approximate cap (``XADD MAXLEN ~``) of the fleet's signal stream: the window a client can resume in.
    stream_maxlen: int = attrs.field(default=10_000, validator=_positive)
    #: Bound (seconds) on every Redis operation on a request's path; beyond it, the local fallback decides.
    timeout: float = attrs.field(default=0.2, validator=[_positive, attrs.validators.le(10.0)])
    #: Seconds between reconnection probes while degraded (Redis unreachable).
    probe_interval: float = attrs.field(default=1.0, validator=_positive)
    #: Seconds between two writes of this replica's status for the fleet's ``status`` (a replica not
    #: heard from for three of them, at least 5 s, is gone).
    status_interval: float = attrs.field(default=2.0, validator=_positive)
    #: Environment variable holding the Redis password (instead of putting it in ``redis_url``).
    password_env: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.password_env and urlsplit(self.redis_url).password:
            raise ValueError("fleet: give the Redis password in redis_url or in password_env, not both")

    @property
    def masked_url(self) -> str:
        """``redis_url`` with its password masked, for logs and status."""
        return mask_url(self.redis_url)

    def password(self, environ: Mapping[str, str] | None = None) -> Secret | None:
        """The password from the variable named by ``password_env``; ``ConfigError`` when it is unset."""
        if not self.password_env:
            return None
        env = os.environ if environ is None else environ
        value = env.get(self.password_env)
        if not value:
            raise ConfigError(f"fleet: environment variable {self.password_env} (password_env) is not set")
        return Secret(value)


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
    #: Per model name: fallback chains and price (``[models."gpt-4o-mini"]``).
    models: dict[str, ModelConfig] = attrs.field(factory=dict)
    #: Fleet mode over Redis; ``None`` keeps every limiter, breaker and signal in this process.
    fleet: FleetConfig | None = None
    #: Graceful stop (SIGTERM / SIGINT, ``Tree.drain``): seconds the requests in flight get to finish
    #: once intake has stopped, before the rest are stopped with a ``shutdown`` result.
    drain_timeout: float = attrs.field(default=30.0, validator=_finite_non_negative)

    def __attrs_post_init__(self) -> None:
        names = [p.name for p in self.providers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate provider names: {', '.join(dupes)}")
        check_routes(self)

    @property
    def default_model(self) -> str | None:
        """The model of requests that name none (see :func:`default_model_of`)."""
        return default_model_of(self.providers, self.router)


def default_model_of(providers: Sequence[ProviderConfig], router: RouterConfig) -> str | None:
    """The model of requests that name none: ``[router] default_model``, else the default model of the
    first provider by (priority, config order); None without providers."""
    if router.default_model is not None:
        return router.default_model
    if not providers:
        return None
    return min(enumerate(providers), key=lambda ip: (ip[1].priority, ip[0]))[1].model


def served_names(providers: Sequence[ProviderConfig]) -> list[str]:
    """What ``providers`` serve, for messages: each default model and each ``models`` entry (patterns
    as written), without repeats."""
    names: dict[str, None] = {}
    for p in providers:
        names[p.model] = None
        names.update(dict.fromkeys(p.models))
    return list(names)


def check_routes(config: Config) -> None:
    """Raise ``ValueError`` when the model routing of ``config`` cannot work: a default model or a
    chain naming a model no provider serves, a chain that loops, or one deeper than ``max_fallbacks``."""
    providers = config.providers
    known = [n for n in served_names(providers) if not is_pattern(n)]

    def require_served(model: str, where: str) -> None:
        if not any(p.serves(model) for p in providers):
            served = ", ".join(served_names(providers)) or "nothing (no providers)"
            raise ValueError(f"{where}: no provider serves model {model!r}{did_you_mean(model, known)}; "
                             f"served: {served}")

    if config.router.default_model is not None:
        require_served(config.router.default_model, "router.default_model")
    graph: dict[str, list[str]] = {}
    for model, settings in config.models.items():
        require_served(model, f"models.{model!r}")
        edges = graph.setdefault(model, [])
        for key, chain in settings.chains().items():
            where = f"models.{model!r}.{key}"
            for target in chain:
                if is_pattern(target):
                    raise ValueError(f"{where}: {target!r} is a pattern; a fallback names one model")
                if target == model:
                    raise ValueError(f"{where}: a model cannot fall back to itself")
                if chain.count(target) > 1:
                    raise ValueError(f"{where}: {target!r} is listed twice")
                require_served(target, where)
                edges.append(target)
    _check_chains(graph, config.router.max_fallbacks)


def _check_chains(graph: Mapping[str, list[str]], limit: int) -> None:
    """No loop in the fallback graph (all three chains together), and no path longer than ``limit``."""
    depth: dict[str, int] = {}
    path: list[str] = []

    def visit(model: str) -> int:
        if model in path:
            loop = " -> ".join([*path[path.index(model):], model])
            raise ValueError(f"models: the fallback chains loop: {loop}")
        if model not in depth:
            path.append(model)
            depth[model] = max((1 + visit(t) for t in graph.get(model, ())), default=0)
            path.pop()
            if depth[model] > limit:
                raise ValueError(
                    f"models.{model!r}: its fallback chains go {depth[model]} models deep; "
                    f"router.max_fallbacks is {limit}"
                )
        return depth[model]

    for model in graph:
        visit(model)


# --- the file's tables and keys, for checking and for the docs -------------------------------------

#: Tables whose keys in the file are not their class's field names.
_FILE_KEYS: dict[type[Any], dict[str, Any]] = {
    RateLimits: {**{key: int | None for key in PER_MINUTE_LIMITS}, BURST: int | None},
}


def file_keys(cls: type[Any]) -> dict[str, Any]:
    """The keys of ``cls``'s table in the file, with their (resolved) types."""
    if cls in _FILE_KEYS:
        return _FILE_KEYS[cls]
    attrs.resolve_types(cls)
    return {f.name: f.type for f in attrs.fields(cls)}


def _attrs_in(type_: Any) -> type[Any] | None:
    """The attrs class a table of this type structures into (``X``, ``X | None``), or None."""
    if attrs.has(type_):
        return type_  # type: ignore[no-any-return]
    if typing.get_origin(type_) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(type_) if attrs.has(a)]
        return found[0] if len(found) == 1 else None
    return None


def _array_of(type_: Any) -> type[Any] | None:
    """The attrs class of an array of tables (``tuple[X, ...]``, ``tuple[str | X, ...]``), or None."""
    if typing.get_origin(type_) in (tuple, list) and typing.get_args(type_):
        return _attrs_in(typing.get_args(type_)[0])
    return None


def _table_per_name(type_: Any) -> type[Any] | None:
    """The attrs class of a table of tables by name (``dict[str, X]``, e.g. ``[models."name"]``), or None."""
    if typing.get_origin(type_) is dict and len(typing.get_args(type_)) == 2:
        return _attrs_in(typing.get_args(type_)[1])
    return None


def _unknown(key: str, known: Mapping[str, Any], path: str) -> str:
    if known:
        hint = did_you_mean(key, known) or f" (the keys here: {', '.join(known)})"
    else:
        hint = " (this table takes no keys)"
    return f"unknown key {key!r}{hint} @ {path or '$'}"


def unknown_keys(value: Any, cls: type[Any], path: str = "$") -> list[str]:
    """Every key in ``value`` (a table for ``cls``) or in the tables under it that ``cls`` does not know,
    each as ``unknown key 'x' (did you mean 'y'?) @ $.path``. Values of the wrong type are left to
    structuring, which names them."""
    if not isinstance(value, Mapping):
        return []
    known = file_keys(cls)
    problems = [_unknown(str(key), known, path) for key in value if key not in known]
    for key, type_ in known.items():
        if key not in value:
            continue
        child, where = value[key], f"{path}.{key}"
        if cls is ProviderConfig and key == "options":
            schema = PROVIDER_OPTIONS.get(str(value.get("kind")))
            if schema is not None:
                problems += unknown_keys(child, schema, where)
        elif (table := _attrs_in(type_)) is not None:
            problems += unknown_keys(child, table, where)
        elif (item := _array_of(type_)) is not None and isinstance(child, list):
            for index, element in enumerate(child):
                problems += unknown_keys(element, item, f"{where}[{index}]")
        elif (named := _table_per_name(type_)) is not None and isinstance(child, Mapping):
            for name, element in child.items():
                problems += unknown_keys(element, named, f"{where}.{name}")
    return problems


def _non_finite(value: Any, path: str = "$") -> list[str]:
    """Every ``nan`` / ``inf`` in the data (TOML has both), with its path."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"must be a finite number, got {value!r} @ {path}"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}[{i}]")]
    return []


@attrs.frozen
class Table:
    """One table of the config file, for documentation: its TOML header and the class of its keys."""

    #: ``"top level"``, ``"[router]"``, ``"[[providers]]"``, ``"[providers.limits]"``,
    #: ``"[providers.options]"`` (with ``kind``), ``"[[providers.options.failures]]"`` ...
    header: str
    cls: type[Any]
    #: For ``[providers.options]`` and the tables under it: the provider kind they belong to.
    kind: str | None = None

    @property
    def keys(self) -> dict[str, Any]:
        """The table's keys and their types."""
        return file_keys(self.cls)


def tables() -> Iterator[Table]:
    """Every table of the file, top level first (what docs/configuration.md documents)."""
    yield Table("top level", Config)
    yield from _tables_under(Config, "", None)


def _tables_under(cls: type[Any], prefix: str, kind: str | None) -> Iterator[Table]:
    for key, type_ in file_keys(cls).items():
        dotted = f"{prefix}.{key}" if prefix else key
        if cls is ProviderConfig and key == "options":
            for option_kind, schema in PROVIDER_OPTIONS.items():
                yield Table(f"[{dotted}]", schema, option_kind)
                yield from _tables_under(schema, dotted, option_kind)
        elif (table := _attrs_in(type_)) is not None:
            yield Table(f"[{dotted}]", table, kind)
            yield from _tables_under(table, dotted, kind)
        elif (item := _array_of(type_)) is not None:
            yield Table(f"[[{dotted}]]", item, kind)
            yield from _tables_under(item, dotted, kind)
        elif (named := _table_per_name(type_)) is not None:
            yield Table(f'[{dotted}."NAME"]', named, kind)
            yield from _tables_under(named, f'{dotted}."NAME"', kind)


# --- reading ----------------------------------------------------------------------------------------


def _option_problems(data: Mapping[str, Any]) -> list[str]:
    """What is wrong in each provider's ``options``, with paths from the top of the file."""
    providers = data.get("providers")
    if not isinstance(providers, list):
        return []
    problems = []
    for index, entry in enumerate(providers):
        if not isinstance(entry, Mapping) or "options" not in entry:
            continue
        where = f"$.providers[{index}].options"
        try:
            check_options(str(entry.get("kind")), entry["options"])
        except cattrs.BaseValidationError as exc:
            problems.append(_rebased(describe_error(exc), where))
        except (ValueError, TypeError) as exc:
            problems.append(_rebased(str(exc), where))
    return problems


def _rebased(message: str, where: str) -> str:
    """``message`` with its ``@ $...`` paths made relative to ``where``, or ``@ where`` appended."""
    if " @ $" not in message:
        return f"{message} @ {where}"
    return message.replace(" @ $", f" @ {where}")


def parse_config(data: Mapping[str, Any]) -> Config:
    """Structure a mapping (e.g. parsed TOML) into a :class:`Config`; raises :class:`ConfigError` naming
    every unknown key (with a suggestion), every non-finite number, or the first invalid value."""
    problems = unknown_keys(data, Config) + _non_finite(data)
    problems = problems or _option_problems(data)
    if problems:
        raise ConfigError("; ".join(problems))
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
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}): a config file is TOML, in UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def default_config(*, with_ollama: bool = False) -> Config:
    """The embedded default: the mock provider (no keys), plus a local Ollama when one answers.

    With Ollama, requests go to its default model (``llama3.2``) and fall back to the mock's ``mock-1``
    when Ollama cannot answer (e.g. the model is not pulled yet); without it, to the mock.
    """
    mock = ProviderConfig(name="mock", kind="mock", default_model="mock-1", priority=10)
    if not with_ollama:
        return Config(providers=(mock,))
    ollama = ProviderConfig(name="ollama", kind="ollama", priority=0, max_concurrency=2)
    chain = {ollama.model: ModelConfig(fallbacks=(mock.model,))}
    return Config(providers=(ollama, mock), models=chain)
