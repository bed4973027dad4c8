"""The fleet's signal stream: every replica appends its signals to one capped Redis Stream.

On the stream, a signal's CloudEvents ``id`` is its stream entry id (``<milliseconds>-<sequence>``,
assigned by Redis): unique across the fleet, ordered as the entries were appended, and what a client
hands back to resume (``XREAD`` from it returns exactly the entries after it). The id the signal had in
its replica stays in the entry as ``origin_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import attrs
from coredis import PureToken

from ..codec import dumps_signal, loads_signal, parse_stream_id
from ..signals import Signal
from ._fleet import Fleet

__all__ = ["FleetBatch", "FleetEvent", "SignalStream", "parse_stream_id"]

log = logging.getLogger("duckagents.fleet")

@attrs.frozen
class FleetEvent:
    """One signal read from the fleet's stream."""

    #: The stream entry id; also ``signal.id`` (the CloudEvents id a client resumes from).
    id: str
    #: The replica that appended it; also ``signal.instance``.
    instance: str
    signal: Signal
    #: The signal's id in its replica (before it was renamed to the stream id).
    origin_id: str


@attrs.frozen
class FleetBatch:
    """What one read returned. Resume from ``last_id``: it also covers entries skipped as malformed."""

    events: tuple[FleetEvent, ...]
    last_id: str


class SignalStream:
    """Append signals to the fleet's capped stream and read them back from an id.

    The stream is capped with ``XADD MAXLEN ~ stream_maxlen`` (Redis trims whole internal nodes, so it
    may hold somewhat more); an entry holds at most ``max_entry_bytes`` of signal JSON, so the stream
    holds at most about ``stream_maxlen * max_entry_bytes`` bytes. Every operation is bounded by the
    fleet's timeout (a blocking read by its ``block`` on top) and raises
    :class:`~duckagents.errors.FleetUnavailable` on Redis trouble.
    """

    def __init__(self, fleet: Fleet, *, max_entry_bytes: int = 1024 * 1024) -> None:
        if max_entry_bytes < 1:
            raise ValueError(f"max_entry_bytes must be >= 1, got {max_entry_bytes}")
        self.fleet = fleet
        self.key = fleet.keys.signals
        self.maxlen = fleet.config.stream_maxlen
        self.max_entry_bytes = max_entry_bytes

    async def publish(self, signal: Signal) -> str:
        """Append one signal; returns its stream id. ``ValueError`` when its JSON exceeds
        ``max_entry_bytes`` or cannot be encoded (a non-finite number: see ``codec.dumps_signal``)."""
        fields = self._fields(signal)
        return str(
            await self.fleet.call(
                "XADD",
                lambda: self.fleet.client.xadd(
                    self.key,
                    fields,
                    trim_strategy=PureToken.MAXLEN,
                    threshold=self.maxlen,
                    trim_operator=PureToken.APPROXIMATELY,
                ),
            )
        )

    async def publish_many(self, signals: Iterable[Signal], *, skip_invalid: bool = False) -> list[str]:
        """Append several signals in one round trip (a pipeline), in order; returns their stream ids.

        A signal that cannot be appended (too large, not encodable) raises ``ValueError`` for the whole
        batch, or with ``skip_invalid`` is left out (logged) and the others go.
        """
        entries = []
        for signal in signals:
            try:
                entries.append(self._fields(signal))
            except (ValueError, TypeError, RecursionError) as exc:
                if not skip_invalid:
                    raise
                log.warning("fleet: a %s signal left out of the stream: %.200s", signal.type, exc)
        if not entries:
            return []

        async def pipelined() -> list[str]:
            async with self.fleet.client.pipeline(transaction=False) as pipe:
                replies = [
                    pipe.xadd(
                        self.key,
                        fields,
                        trim_strategy=PureToken.MAXLEN,
                        threshold=self.maxlen,
                        trim_operator=PureToken.APPROXIMATELY,
                    )
                    for fields in entries
                ]
            return [str(await reply) for reply in replies]

        return await self.fleet.call(f"XADD x{len(entries)}", pipelined)

    async def read(self, after: str, *, count: int = 256, block: float | None = None) -> FleetBatch:
        """The entries after ``after`` (at most ``count``), waiting up to ``block`` seconds for one.

        ``after`` is an id from this stream (validated: it may come from a client); ``"0-0"`` reads from
        the oldest retained entry, :meth:`last_id` from now on.
        """
        parse_stream_id(after)
        if not 1 <= count <= 10_000:
            raise ValueError(f"count must be in 1..10000, got {count}")
        wait = None if block is None else max(1, round(block * 1000))
        reply: Any = await self.fleet.call(
            "XREAD",
            lambda: self.fleet.client.xread({self.key: after}, count=count, block=wait),
            allowance=block or 0.0,
        )
        entries = (reply or {}).get(self.key, ())
        events = []
        last = after
        for entry in entries:
            last = str(entry.identifier)
            event = self._event(last, entry.field_values)
            if event is not None:
                events.append(event)
        return FleetBatch(tuple(events), last)

    async def last_id(self) -> str:
        """The id of the newest entry ("0-0" when empty): read from it to see only what comes next."""
        newest: Any = await self.fleet.call(
            "XREVRANGE", lambda: self.fleet.client.xrevrange(self.key, count=1)
        )
        return str(newest[0].identifier) if newest else "0-0"

    async def first_id(self) -> str | None:
        """The id of the oldest retained entry (None when empty): the start of the resume window."""
        oldest: Any = await self.fleet.call("XRANGE", lambda: self.fleet.client.xrange(self.key, count=1))
        return str(oldest[0].identifier) if oldest else None

    async def missed(self, after: str) -> bool:
        """May entries after ``after`` have been trimmed away? (the client then lost some).

        True when ``after`` itself is no longer retained (older than the oldest entry). That is exact
        except at the boundary: a client whose last entry was the very last one trimmed is told it may
        have missed some when it missed none.
        """
        position = parse_stream_id(after)
        first = await self.first_id()
        return first is not None and position < parse_stream_id(first) and position != (0, 0)

    def _fields(self, signal: Signal) -> dict[str, str]:
        text = dumps_signal(signal)
        if len(text.encode()) > self.max_entry_bytes:
            raise ValueError(
                f"signal {signal.type} ({len(text.encode())} bytes) exceeds the stream's entry bound "
                f"of {self.max_entry_bytes} bytes"
            )
        return {"instance": self.fleet.instance, "signal": text}

    def _event(self, entry_id: str, fields: Any) -> FleetEvent | None:
        try:
            instance = fields["instance"]
            signal = loads_signal(fields["signal"])
            if not isinstance(instance, str):
                raise ValueError("instance is not a string")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("fleet: skipped malformed stream entry %s: %s", entry_id, exc)
            return None
        return FleetEvent(entry_id, instance, attrs.evolve(signal, id=entry_id, instance=instance), signal.id)
