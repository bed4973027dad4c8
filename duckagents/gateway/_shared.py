"""What the connections of one gateway share: the router, the configuration, the fan-out, counters."""

from __future__ import annotations

import attrs

from ..config import GatewayConfig
from ..validation import ValidationLimits
from ._fanout import Fanout
from ._flight import RouterLike
from ._log import ThrottledLog
from ._wire import FrameCache


@attrs.define
class Counters:
    """Gateway-wide counters, shared by every connection."""

    connections: int = 0
    accepted: int = 0
    dropped: int = 0
    slow_disconnects: int = 0
    idle_disconnects: int = 0
    flood_disconnects: int = 0
    rejected: dict[int, int] = attrs.field(factory=dict)


@attrs.define
class Intake:
    """Whether the gateway still takes new requests (a graceful stop closes it first)."""

    closed: bool = False


@attrs.frozen
class Shared:
    """What every connection of one gateway shares."""

    router: RouterLike
    config: GatewayConfig
    cache: FrameCache
    fanout: Fanout
    counters: Counters
    server: str
    close_timeout: float
    limits: ValidationLimits
    #: Faults clients can trigger (unexpected exceptions per message), logged at most once a minute each.
    faults: ThrottledLog
    intake: Intake = attrs.field(factory=Intake)
