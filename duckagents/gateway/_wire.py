"""Frames on the wire: encoded once, shared by every connection, written in batches.

Fan-out is the gateway's hot path: one signal goes to hundreds of clients. Its CloudEvents JSON is
encoded once (:class:`FrameCache`), and so is the whole WebSocket frame for each distinct subscription
prefix, since server-to-client frames are unmasked and therefore byte-identical on every connection. A
connection's writer then sends everything queued with one socket write (:func:`send_batch`).
"""

from __future__ import annotations

import struct
from collections import OrderedDict

import trio
import trio_websocket
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage

from ..codec import dumps_signal
from ..signals import Signal

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text), RFC 6455 section 5.2


def encode_text_frame(text: str) -> bytes:
    """One complete, unmasked (server-to-client) WebSocket text frame carrying ``text``."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", _FIN_TEXT, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", _FIN_TEXT, 126, size)
    else:
        head = struct.pack("!BBQ", _FIN_TEXT, 127, size)
    return head + payload


class Frame:
    """A server frame: its encoded ``wire`` bytes (``text`` decodes them back). Signal frames are
    ``droppable``. Only the bytes are kept: a frame of a 450 KB prompt costs 450 KB, not twice that."""

    __slots__ = ("droppable", "wire")

    def __init__(self, text: str, *, droppable: bool) -> None:
        self.wire = encode_text_frame(text)
        self.droppable = droppable

    @property
    def text(self) -> str:
        """The JSON text of the frame (decoded on demand: only the fallback writer and tests need it)."""
        wire = self.wire
        skip = 2 if wire[1] < 126 else 4 if wire[1] == 126 else 10
        return wire[skip:].decode("utf-8")

    @property
    def size(self) -> int:
        """Bytes this frame holds (its wire form)."""
        return len(self.wire)

    def __repr__(self) -> str:
        return f"Frame({self.text[:60]!r}, droppable={self.droppable})"


#: Default bounds of a :class:`FrameCache`: entries, and bytes of encoded text they hold.
CACHE_ENTRIES = 8192
CACHE_BYTES = 16 * 1024 * 1024


class FrameCache:
    """Encodes each signal once, and each (signal, frame prefix) frame once, however many clients get it.

    Keyed by object identity (signals are immutable and the cache keeps them alive). Bounded twice, oldest
    out: at most ``size`` entries of each kind, and at most ``max_bytes`` of encoded JSON and frames in all
    (each entry is charged twice its encoded size, since the signal it keeps alive holds about as much).
    An encoding larger than a quarter of ``max_bytes`` is returned but not kept.
    """

    def __init__(self, size: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self._size = size
        self.max_bytes = max_bytes
        #: Bytes charged for what the cache holds now.
        self.bytes = 0
        self._events: OrderedDict[int, tuple[Signal, str, int]] = OrderedDict()
        self._frames: OrderedDict[tuple[int, str], tuple[Signal, Frame, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events) + len(self._frames)

    def event_json(self, signal: Signal) -> str:
        """The CloudEvents JSON text of ``signal`` (see :func:`duckagents.codec.dumps_signal`, whose
        exceptions propagate: a signal that cannot be encoded is the caller's to drop)."""
        key = id(signal)
        entry = self._events.get(key)
        if entry is not None and entry[0] is signal:
            return entry[1]
        text = dumps_signal(signal)
        cost = 2 * len(text)
        if cost <= self.max_bytes // 4:
            if entry is not None:  # a dead signal's id was reused
                self.bytes -= entry[2]
            self._events[key] = (signal, text, cost)
            self.bytes += cost
            self._trim()
        return text

    def frame(self, signal: Signal, prefix: str) -> Frame:
        """The droppable ``signal`` frame ``prefix + event JSON + "}"`` (see ``protocol.signal_prefix``)."""
        key = (id(signal), prefix)
        entry = self._frames.get(key)
        if entry is not None and entry[0] is signal:
            return entry[1]
        frame = Frame(prefix + self.event_json(signal) + "}", droppable=True)
        cost = 2 * frame.size
        if cost <= self.max_bytes // 4:
            if entry is not None:
                self.bytes -= entry[2]
            self._frames[key] = (signal, frame, cost)
            self.bytes += cost
            self._trim()
        return frame

    def _trim(self) -> None:
        events, frames = self._events, self._frames
        while len(events) > self._size:
            self.bytes -= events.popitem(last=False)[1][2]
        while len(frames) > self._size:
            self.bytes -= frames.popitem(last=False)[1][2]
        while self.bytes > self.max_bytes and (events or frames):
            # Frames are made from events, so the older half goes first; then the rest.
            if frames and (not events or len(frames) >= len(events)):
                self.bytes -= frames.popitem(last=False)[1][2]
            else:
                self.bytes -= events.popitem(last=False)[1][2]


def _internals(ws: trio_websocket.WebSocketConnection) -> bool:
    return all(hasattr(ws, name) for name in ("_wsproto", "_stream", "_stream_lock", "_close_reason"))


def _plain(proto: object) -> bool:
    """True when no extension (permessage-deflate...) was negotiated, so pre-encoded frames are valid."""
    connection = getattr(proto, "connection", None)
    return getattr(getattr(connection, "_proto", None), "extensions", None) == []


async def send_batch(ws: trio_websocket.WebSocketConnection, frames: list[Frame]) -> None:
    """Send frames in order, raising ``ConnectionClosed`` like ``send_message`` does.

    trio-websocket makes one socket write per message, and a socket write costs far more than framing a
    message. When the connection exposes its internals (trio-websocket 0.11-0.12; checked, with a
    fallback to the public API) the batch goes out in one ``send_all`` under the connection's own stream
    lock, after the same closed-state checks ``send_message`` makes; frames are pre-encoded unless an
    extension was negotiated (trio-websocket's server negotiates none), then wsproto frames each one.
    """
    if not _internals(ws):
        for frame in frames:
            await ws.send_message(frame.text)
        return
    async with ws._stream_lock:
        proto = ws._wsproto
        if ws._close_reason is not None or proto.state is not ConnectionState.OPEN:
            raise trio_websocket.ConnectionClosed(ws._close_reason)
        if _plain(proto):
            data = b"".join([frame.wire for frame in frames])
        else:
            data = b"".join([proto.send(TextMessage(data=frame.text)) for frame in frames])
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise trio_websocket.ConnectionClosed(ws._close_reason) from None
