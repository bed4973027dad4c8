"""One client subscription as the fan-out sees it: :class:`Route`."""

from __future__ import annotations

import attrs

from ..bus import SignalFilter
from ._outbox import Outbox

__all__ = ["Route"]


@attrs.define(eq=False)
class Route:
    """One client subscription: its filter, the frame prefix naming it, and its connection's outbox."""

    filter: SignalFilter
    prefix: str
    outbox: Outbox
    #: Fleet gateways: the stream position up to which this route has its signals (a resumed
    #: subscription's replay); live delivery skips events at or before it. None: nothing to skip.
    after: tuple[int, int] | None = None
    #: False while a resumed subscription replays the stream: live delivery leaves it out meanwhile.
    live: bool = True
