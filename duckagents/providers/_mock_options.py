"""The ``options`` table of a ``kind = "mock"`` provider: its schema, validation and the latency model."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import cattrs

from ..codec import converter, describe_error
from ..config import register_options
from ..errors import ConfigError
from ..messages import Features
from ._mock_script import MockFailure, MockReply


def _at_least(minimum: float) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
        if not (value >= minimum and math.isfinite(value)):  # NaN fails too
            raise ValueError(f"{attribute.name} must be a finite number >= {minimum:g}, got {value!r}")

    return check


@attrs.frozen
class Latency:
    """Delay before each answer: ``fixed`` (``low`` seconds) or ``uniform`` in ``[low, high]``."""

    kind: Literal["fixed", "uniform"] = "fixed"
    low: float = attrs.field(default=0.0, validator=_at_least(0.0))
    high: float = attrs.field(default=0.0, validator=_at_least(0.0))

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds, drawn from ``rng`` (so a seeded provider is reproducible)."""
        if self.kind == "uniform":
            return rng.uniform(self.low, max(self.low, self.high))
        return self.low


def as_latency(value: Any) -> Latency:
    """A :class:`Latency` from itself, a number of seconds (fixed) or a config table."""
    if isinstance(value, Latency):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not (0 <= value < math.inf):
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {value!r}")
        return Latency("fixed", float(value))
    if not isinstance(value, Mapping):
        raise TypeError(f"latency is seconds or a table like {{kind = \"uniform\", low = 0.1, high = 0.3}}, "
                        f"got {type(value).__name__}")
    return converter.structure(value, Latency)


def _latency(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | Latency):
        raise TypeError(
            f"{attribute.name} must be seconds or a table like {{kind = \"uniform\", low = 0.1, high = 0.3}}"
        )
    if isinstance(value, int | float) and not (0 <= value < math.inf):
        raise ValueError(f"{attribute.name} must be a finite number of seconds >= 0, got {value!r}")


@attrs.frozen
class MockOptions:
    """The ``options`` table of a ``kind = "mock"`` provider (validated, unknown keys rejected)."""

    #: Scripted answers, in order (a string, or a table like ``MockReply``); then the default answer.
    replies: tuple[str | MockReply, ...] = ()
    #: Scripted failures of the first calls, in order (``MockFailure`` tables).
    failures: tuple[MockFailure, ...] = ()
    #: Characters per streamed chunk.
    chunk_size: int = attrs.field(default=8, validator=_at_least(1))
    #: Seconds between two streamed chunks.
    chunk_delay: float = attrs.field(default=0.0, validator=_at_least(0.0))
    #: Delay before each answer: seconds, or a ``Latency`` table.
    latency: float | Latency = attrs.field(default=0.0, validator=_latency)
    #: Seed of the latency draws (reproducible runs).
    seed: int = 0
    #: Overrides of the mock's default features, e.g. ``{vision = false}``.
    features: dict[str, Any] = attrs.field(factory=dict)
    #: Per-model overrides of the provider-wide features.
    model_features: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: Model names the mock lists (``list_models``).
    models: tuple[str, ...] = ()
    #: What its health probe says.
    healthy: bool = True
    #: A prompt whose last user turn contains this text crashes the agent running the mock (as
    #: ``crash_agent_next`` does): a crash a running server can be asked for, for demos and end-to-end tests.
    crash_on: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.min_len(1))
    )


def _structure_reply(value: Any, _: Any) -> str | MockReply:
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"a reply is a string or a table like {{text = \"...\"}}, got {type(value).__name__}")
    return converter.structure(value, MockReply)


def _structure_latency(value: Any, _: Any) -> float | Latency:
    return as_latency(value)


# Scoped to this module's types (a copy of the shared converter), so the global one stays untouched.
_options_converter = converter.copy()
def _structure_replies(value: Any, _: Any) -> tuple[str | MockReply, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected an array, got {type(value).__name__}")
    return tuple(_structure_reply(item, None) for item in value)


# Predicate hooks: a plain registration of a union loses to cattrs' union passthrough (and the shared
# converter's array hook would structure the elements without this converter's hooks).
_options_converter.register_structure_hook_func(
    lambda t: t == tuple[str | MockReply, ...], _structure_replies
)
_options_converter.register_structure_hook_func(lambda t: t == float | Latency, _structure_latency)


def parse_options(
    options: Mapping[str, Any], defaults: Features
) -> tuple[MockOptions, Features, dict[str, Features]]:
    """The validated options, the provider-wide features (``defaults`` with the overrides) and the
    per-model features. Raises :class:`ConfigError` naming the bad key."""
    unknown = set(options) - set(attrs.fields_dict(MockOptions))
    if unknown:
        raise ConfigError(f"mock provider: unknown option(s) {', '.join(sorted(unknown))}")
    try:
        opts = _options_converter.structure(dict(options), MockOptions)
        features = _evolve_features(defaults, opts.features, "features")
        per_model = {
            m: _evolve_features(features, f, f"model_features.{m}") for m, f in opts.model_features.items()
        }
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise ConfigError(f"mock provider: invalid options: {describe_error(exc)}") from None
    return opts, features, per_model


def _evolve_features(base: Features, overrides: Mapping[str, Any], where: str) -> Features:
    unknown = set(overrides) - set(attrs.fields_dict(Features))
    if unknown:
        raise ValueError(f"{where}: unknown feature(s) {', '.join(sorted(unknown))}")
    merged = converter.unstructure(base) | dict(overrides)
    return converter.structure(merged, Features)


def check_options(options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when ``options`` is not a valid mock ``options`` table (paths relative to it)."""
    try:
        parse_options(options, Features())
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix("mock provider: invalid options: ")) from None


# The config checks a mock provider's options with this schema (config sits below providers).
register_options("mock", MockOptions, check_options)
