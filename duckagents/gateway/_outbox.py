"""The outgoing buffer of one connection, bounded, with a slow-consumer policy.

The bus never waits for a gateway client: signals reach a connection through the fan-out (one
DROP_OLDEST bus subscription for the gateway) or a request's own DROP_OLDEST subscription, and are pushed
here without awaiting. When a client reads slower than signals arrive, the buffer fills (in frames or in
bytes, whichever bound comes first) and the connection's policy applies: drop the oldest signal (and tell
the client how many were lost), or disconnect. Control frames (hello, ack, error, request results) are
never dropped; the reader awaits room for them (also bounded in count and bytes), which pushes back on
the client's own flood and on nobody else.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

import trio

from ._frames import dropped_frame
from ._wire import Frame

MAX_BATCH_FRAMES = 1024
MAX_BATCH_BYTES = 512 * 1024
#: Default byte budget of an outbox, for its signal frames and (separately) its control frames.
OUTBOX_BYTES = 8 * 1024 * 1024


class SlowConsumer(str, enum.Enum):
    """What to do when a client's send buffer is full."""

    DROP_OLDEST = "drop_oldest"
    DISCONNECT = "disconnect"


class Outbox:
    """The bounded outgoing queue of one connection.

    ``capacity`` and ``max_bytes`` bound buffered signal frames; ``control_capacity`` and ``max_bytes``
    bound control frames (pushers wait). One frame larger than ``max_bytes`` alone is still taken when
    nothing of its class is queued (the newest signal is always kept, a control frame always goes out).
    ``on_overflow`` is called once when the DISCONNECT policy trips.
    """

    def __init__(
        self,
        capacity: int,
        policy: SlowConsumer,
        *,
        max_bytes: int = OUTBOX_BYTES,
        control_capacity: int = 64,
        on_overflow: Callable[[], None] = lambda: None,
    ) -> None:
        self.capacity = capacity
        self.policy = policy
        self.max_bytes = max_bytes
        self.control_capacity = control_capacity
        self._on_overflow = on_overflow
        self._queue: deque[Frame] = deque()
        self._signals = 0
        self._controls = 0
        self._signal_bytes = 0
        self._control_bytes = 0
        self._pending_drops = 0
        #: Signals lost on this connection so far (buffer overflow here or in the bus subscription).
        self.dropped_total = 0
        #: True once the DISCONNECT policy tripped.
        self.overflowed = False
        self._closed = False
        self._flush = False
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._control_lot = trio.lowlevel.ParkingLot()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called; later pushes are ignored."""
        return self._closed

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def bytes(self) -> int:
        """Bytes of the frames queued now."""
        return self._signal_bytes + self._control_bytes

    def push_signal(self, frame: Frame) -> None:
        """Queue a signal frame without waiting; a full buffer applies the slow-consumer policy."""
        if self._closed:
            return
        size = frame.size
        while self._signals and (
            self._signals >= self.capacity or self._signal_bytes + size > self.max_bytes
        ):
            if self.policy is SlowConsumer.DISCONNECT:
                self._overflow()
                return
            self._drop_oldest_signal()
        queue = self._queue
        queue.append(frame)
        self._signals += 1
        self._signal_bytes += size
        if len(queue) == 1:  # the writer parks only on an empty queue (this is the hot path)
            self._writer_lot.unpark_all()

    async def push_replayed(self, frame: Frame) -> None:
        """Queue a signal frame a client asked to be replayed (a resumed subscription): waits for room
        instead of applying the slow-consumer policy, so a replay is paced by the client's reading."""
        size = frame.size
        while not self._closed and self._signals and (
            self._signals >= self.capacity or self._signal_bytes + size > self.max_bytes
        ):
            await self._control_lot.park()  # woken, like control pushers, after each batch taken
        if self._closed:
            return
        queue = self._queue
        queue.append(frame)
        self._signals += 1
        self._signal_bytes += size
        if len(queue) == 1:
            self._writer_lot.unpark_all()

    def count_dropped(self, lost: int) -> None:
        """Account for signals lost before they reached this buffer (the bus subscription overflowed)."""
        if lost <= 0 or self._closed:
            return
        if self.policy is SlowConsumer.DISCONNECT:
            self._overflow()
            return
        self._pending_drops += lost
        self.dropped_total += lost
        self._writer_lot.unpark_all()

    async def push_control(self, frame: str) -> None:
        """Queue a frame that must not be dropped, waiting while the control budget is used up."""
        encoded = Frame(frame, droppable=False)
        size = encoded.size
        while not self._closed and (
            self._controls >= self.control_capacity
            or (self._controls and self._control_bytes + size > self.max_bytes)
        ):
            await self._control_lot.park()
        if self._closed:
            return
        self._queue.append(encoded)
        self._controls += 1
        self._control_bytes += size
        self._writer_lot.unpark_all()

    async def take(self) -> list[Frame] | None:
        """Wait for frames and return the next batch (oldest first), or None once closed."""
        while not self._queue and not self._pending_drops and not self._closed:
            await self._writer_lot.park()
        if self._closed and not (self._flush and (self._queue or self._pending_drops)):
            return None
        batch: list[Frame] = []
        if self._pending_drops:
            # The lost signals were the oldest, so the notice goes where they would have been.
            batch.append(Frame(dropped_frame(self._pending_drops, self.dropped_total), droppable=False))
            self._pending_drops = 0
        size = 0
        queue = self._queue
        while queue and len(batch) < MAX_BATCH_FRAMES and size < MAX_BATCH_BYTES:
            frame = queue.popleft()
            if frame.droppable:
                self._signals -= 1
                self._signal_bytes -= frame.size
            else:
                self._controls -= 1
                self._control_bytes -= frame.size
            batch.append(frame)
            size += frame.size
        self._control_lot.unpark_all()
        return batch

    def push_control_now(self, frame: str) -> None:
        """Queue a frame that must not be dropped at once, past the control budget if need be: for the
        terminals a closing connection still owes its client (at most its ``max_in_flight``)."""
        if self._closed:
            return
        encoded = Frame(frame, droppable=False)
        self._queue.append(encoded)
        self._controls += 1
        self._control_bytes += encoded.size
        self._writer_lot.unpark_all()

    def close(self, *, flush: bool = False) -> None:
        """Refuse further pushes (waiting pushers return). :meth:`take` then returns None, after handing out
        what is queued when ``flush`` (e.g. the error frames before a protocol-violation close)."""
        if self._closed and not self._flush:
            return
        self._closed = True
        self._flush = flush
        if not flush:
            self._queue.clear()
            self._signals = self._controls = self._signal_bytes = self._control_bytes = 0
        self._writer_lot.unpark_all()
        self._control_lot.unpark_all()

    def _overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            self._on_overflow()

    def _drop_oldest_signal(self) -> None:
        queue = self._queue
        if queue[0].droppable:
            dropped = queue.popleft()
        else:  # control frames are never dropped; they are few (bounded), so a scan is cheap
            for index, frame in enumerate(queue):
                if frame.droppable:
                    dropped = frame
                    del queue[index]
                    break
        self._signals -= 1
        self._signal_bytes -= dropped.size
        self._pending_drops += 1
        self.dropped_total += 1
