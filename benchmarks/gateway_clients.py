"""Lean WebSocket subscribers for the gateway fan-out benchmark, run as their own process.

``python -m benchmarks.gateway_clients PORT CLIENTS EXPECTED [TYPE]`` opens ``CLIENTS`` connections to the
gateway, subscribes each to signal type ``TYPE``, prints ``ready``, then counts ``signal`` frames until
each connection has ``EXPECTED`` (received or reported dropped) and prints one JSON line of totals.

Frames are counted from their headers and first bytes only (no JSON or UTF-8 decoding), so the client
side costs little next to the server it measures. Times are ``time.monotonic()`` (system-wide, so the
server process can compare them with its own).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any

import attrs
import trio

SIGNAL_PREFIX = b'{"type":"signal"'
DROPPED_PREFIX = b'{"type":"dropped"'
ACK_PREFIX = b'{"type":"ack"'
TIMEOUT = 120.0


def client_frame(text: str) -> bytes:
    """A masked text frame (clients must mask, RFC 6455 section 5.3)."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65536:
        head = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + masked


def split_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Remove and return the complete (opcode, payload) server frames at the start of ``buffer``."""
    frames = []
    while len(buffer) >= 2:
        opcode, size, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                break
            size, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            if len(buffer) < 10:
                break
            size, offset = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < offset + size:
            break
        frames.append((opcode, bytes(buffer[offset : offset + size])))
        del buffer[: offset + size]
    return frames


@attrs.define
class Tally:
    """What one connection saw."""

    signals: int = 0
    dropped: int = 0
    first: float | None = None
    last: float | None = None


async def _handshake(stream: trio.SocketStream, port: int) -> bytearray:
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("gateway closed during the handshake")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"handshake refused: {head[:80]!r}")
    return bytearray(rest)


async def subscriber(port: int, expected: int, signal_type: str, tally: Tally, ready: trio.Semaphore) -> None:
    """One connection: subscribe, report ready, count signal frames until ``expected``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        buffer = await _handshake(stream, port)
        subscribe = {"type": "subscribe", "id": "s", "filter": {"types": [signal_type]}}
        await stream.send_all(client_frame(json.dumps(subscribe)))
        subscribed = False
        while tally.signals + tally.dropped < expected:
            for opcode, payload in split_frames(buffer):
                if opcode == 0x8:
                    raise ConnectionError(f"gateway closed the connection: {payload[2:80]!r}")
                if payload.startswith(SIGNAL_PREFIX):
                    now = time.monotonic()
                    tally.first = tally.first or now
                    tally.last = now
                    tally.signals += 1
                elif payload.startswith(DROPPED_PREFIX):
                    tally.dropped += int(json.loads(payload)["count"])
                elif payload.startswith(ACK_PREFIX) and not subscribed:
                    subscribed = True
                    ready.release()
            if tally.signals + tally.dropped >= expected:
                break
            chunk = await stream.receive_some(262144)
            if not chunk:
                raise ConnectionError("gateway closed the connection")
            buffer += chunk


async def main(port: int, clients: int, expected: int, signal_type: str) -> dict[str, Any]:
    """Run every subscriber; print ``ready`` once all are subscribed; return the totals."""
    tallies = [Tally() for _ in range(clients)]
    ready = trio.Semaphore(0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for tally in tallies:
                nursery.start_soon(subscriber, port, expected, signal_type, tally, ready)
            for _ in range(clients):
                await ready.acquire()
            print("ready", flush=True)
    firsts = [t.first for t in tallies if t.first is not None]
    lasts = [t.last for t in tallies if t.last is not None]
    return {
        "received": sum(t.signals for t in tallies),
        "dropped": sum(t.dropped for t in tallies),
        "first": min(firsts) if firsts else None,
        "last": max(lasts) if lasts else None,
    }


if __name__ == "__main__":
    port_arg, clients_arg, expected_arg = (int(a) for a in sys.argv[1:4])
    kind = sys.argv[4] if len(sys.argv) > 4 else "provider_chunk"
    print(json.dumps(trio.run(main, port_arg, clients_arg, expected_arg, kind)), flush=True)
