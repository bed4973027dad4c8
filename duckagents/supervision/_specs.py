"""What a supervisor runs and how it restarts: :class:`ChildSpec`, :class:`Restart`, :class:`Strategy`,
:class:`Intensity` and :class:`Backoff`. Plain data, re-exported by :mod:`duckagents.supervision._supervisor`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

__all__ = ["Backoff", "ChildSpec", "Intensity", "Restart", "Strategy"]


class Restart(enum.Enum):
    """When a child is restarted: always, only after a crash (an exception), or never."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    """Which children are restarted when one of them is."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


@attrs.frozen
class ChildSpec:
    """How to run one child: ``await start(*args, task_status=...)``; it is up once it calls
    ``task_status.started()``. ``shutdown_timeout`` is how long it may take to exit once cancelled."""

    id: str
    start: Callable[..., Awaitable[None]]
    args: tuple[Any, ...] = ()
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))


@attrs.frozen
class Intensity:
    """More than ``max_restarts`` restarts within ``period`` seconds make the supervisor give up."""

    max_restarts: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    period: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))


@attrs.frozen
class Backoff:
    """Delay before a restart: ``initial * factor**n`` capped at ``max``, ±``jitter`` (a fraction), where
    ``n`` counts the child's earlier restarts within the intensity period. ``initial=0`` turns it off."""

    initial: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    max: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)])

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before restart number ``attempt`` (0-based) of a child."""
        if self.initial <= 0:
            return 0.0
        base = min(self.max, self.initial * self.factor ** min(attempt, 64))
        return min(self.max, max(0.0, base * (1.0 + rng.uniform(-self.jitter, self.jitter))))
