"""Which signals a bus subscription wants: :class:`SignalFilter`, re-exported by :mod:`duckagents.bus._bus`.

Filters look at the envelope only (``type``, ``provider``, ``subject``, ``source``), never at the payload,
so matching costs a few set lookups and the bus can index subscriptions by request id.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ..signals import Signal

__all__ = ["SignalFilter"]


def _names(value: Iterable[str] | None) -> frozenset[str] | None:
    # A lone string is one name, not a set of characters.
    if value is None:
        return None
    return frozenset((value,)) if isinstance(value, str) else frozenset(value)


@attrs.frozen
class SignalFilter:
    """Which signals a subscription wants. ``None`` means any; every given field must match.

    ``exclude_sources`` is the one negative field: signals from these sources are left out (the router
    uses it so that its own signals do not wake it).
    """

    types: frozenset[str] | None = attrs.field(default=None, converter=_names)
    providers: frozenset[str] | None = attrs.field(default=None, converter=_names)
    request_ids: frozenset[str] | None = attrs.field(default=None, converter=_names)
    exclude_sources: frozenset[str] | None = attrs.field(default=None, converter=_names)

    def matches(self, signal: Signal) -> bool:
        """True when ``signal``'s envelope satisfies every given field."""
        return (
            (self.types is None or signal.type in self.types)
            and (self.providers is None or signal.provider in self.providers)
            and (self.request_ids is None or signal.subject in self.request_ids)
            and (self.exclude_sources is None or signal.source not in self.exclude_sources)
        )

    @property
    def matches_all(self) -> bool:
        """True when the filter lets every signal through."""
        return (
            self.types is None
            and self.providers is None
            and self.request_ids is None
            and self.exclude_sources is None
        )
