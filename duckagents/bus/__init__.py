"""The signal bus: in-process publish/subscribe of :class:`~duckagents.signals.Signal` envelopes over
bounded Trio memory channels (see :class:`SignalBus`)."""

from ._bus import BusStats, Overflow, SignalBus, Subscription, TerminalWaiter
from ._claims import TerminalClaims
from ._filter import SignalFilter

__all__ = [
    "BusStats",
    "Overflow",
    "SignalBus",
    "SignalFilter",
    "Subscription",
    "TerminalClaims",
    "TerminalWaiter",
]
