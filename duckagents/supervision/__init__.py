"""Erlang/OTP-style supervision on Trio: a :class:`Supervisor` runs children (:class:`ChildSpec`) and
restarts them by :class:`Restart` type and :class:`Strategy`, up to an :class:`Intensity`
(docs/supervision.md)."""

from ._actor import Actor
from ._events import EMIT_TIMEOUT, MAX_EVENTS
from ._faults import FaultLog
from ._specs import Backoff, ChildSpec, Intensity, Restart, Strategy
from ._supervisor import Supervisor, open_supervisor

__all__ = [
    "EMIT_TIMEOUT",
    "MAX_EVENTS",
    "Actor",
    "Backoff",
    "ChildSpec",
    "FaultLog",
    "Intensity",
    "Restart",
    "Strategy",
    "Supervisor",
    "open_supervisor",
]
