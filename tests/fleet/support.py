"""Helpers of the fleet tests: configs with a private key prefix."""

from __future__ import annotations

import uuid

from duckagents.config import FleetConfig

#: Why the fleet tests skip (only where redis-server cannot be installed).
NO_REDIS = (
    "redis-server is not installed, and the fleet tests need a real one: .ci/run and `nox -s tests` "
    "install it with apt-get when they run as root; elsewhere install the redis-server package"
)

#: Generous bound for tests whose Redis must answer (a loaded 2-core machine can stall for a while);
#: tests of the fallback pass their own short timeout.
ANSWERING_TIMEOUT = 5.0


def unique_prefix() -> str:
    """A key prefix no other test uses, so tests can share one server."""
    return f"t{uuid.uuid4().hex[:16]}"


def fleet_config(url: str, **overrides: object) -> FleetConfig:
    """A fleet config on ``url`` with a fresh key prefix."""
    settings: dict[str, object] = {
        "redis_url": url,
        "key_prefix": unique_prefix(),
        "instance": "a",
        "timeout": ANSWERING_TIMEOUT,
        "probe_interval": 0.05,
    }
    settings.update(overrides)
    return FleetConfig(**settings)  # type: ignore[arg-type]
