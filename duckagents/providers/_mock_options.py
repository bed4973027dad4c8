"""The ``options`` table of a ``kind = "mock"`` provider: its schema, validation and the latency model."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import cattrs

from ..codec import converter, describe_error
from ..errors import ConfigError
from ..messages import Features
from ._mock_script import MockFailure, MockReply


@attrs.frozen
class Latency:
    """Delay before each answer: ``fixed`` (``low`` seconds) or ``uniform`` in ``[low, high]``."""

    kind: Literal["fixed", "uniform"] = "fixed"
    low: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    high: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds, drawn from ``rng`` (so a seeded provider is reproducible)."""
        if self.kind == "uniform":
            return rng.uniform(self.low, max(self.low, self.high))
        return self.low


def as_latency(value: Any) -> Latency:
    """A :class:`Latency` from itself, a number of seconds (fixed) or a config table."""
    if isinstance(value, Latency):
        return value
    if isinstance(value, int | float):
        return Latency("fixed", float(value))
    return converter.structure(value, Latency)


@attrs.frozen
class MockOptions:
    """The ``options`` table of a ``kind = "mock"`` provider (validated, unknown keys rejected)."""

    replies: tuple[str | MockReply, ...] = ()
    failures: tuple[MockFailure, ...] = ()
    chunk_size: int = 8
    chunk_delay: float = 0.0
    latency: float | Latency = 0.0
    seed: int = 0
    #: Overrides of the mock's default features, e.g. ``{vision = false}``.
    features: dict[str, Any] = attrs.field(factory=dict)
    #: Per-model overrides of the provider-wide features.
    model_features: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    models: tuple[str, ...] = ()
    healthy: bool = True


def _structure_reply(value: Any, _: Any) -> str | MockReply:
    if isinstance(value, str):
        return value
    return converter.structure(value, MockReply)


def _structure_latency(value: Any, _: Any) -> float | Latency:
    return as_latency(value)


# Scoped to this module's types (a copy of the shared converter), so the global one stays untouched.
_options_converter = converter.copy()
_options_converter.register_structure_hook(str | MockReply, _structure_reply)
_options_converter.register_structure_hook(float | Latency, _structure_latency)


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
