"""Load: 200 subscribed connections, a burst of 10,000 signals; every reading client gets all, in order.

The clients run in a child process (the gateway keeps this one), so the two cores share the work. Parsing
two million frames with a general-purpose WebSocket library in Python would take longer than the
gateway takes to send them, so most connections use a minimal RFC 6455 reader (it checks the handshake's
Sec-WebSocket-Accept and every frame header); two connections parse with wsproto and decode every frame as
JSON and as a CloudEvent; two more subscribe and then never read (they must not slow anyone down).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from functools import partial
from typing import Any, cast

import trio

from duckagents.signals import ProviderChunk, make_signal

from .support import fake_router, running_gateway

CONNECTIONS = 200
SIGNALS = 10_000
STALLED = 2
CHECKED = 2  # parsed with wsproto + JSON + codec
REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
INDEX = b'"index":'


def _masked_text(text: str) -> bytes:
    """A client-to-server text frame (clients must mask, RFC 6455 section 5.3)."""
    payload = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + body


class RawReader:
    """Reads server frames from a byte buffer: FIN + text only, unmasked, exact lengths."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.last = -1

    def frames(self, data: bytes) -> list[bytes]:
        self.buf += data
        buf, pos, out = self.buf, 0, []
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 != 0x81 or b1 & 0x80:
                raise SystemExit(f"bad frame header {b0:#x} {b1:#x}")
            size, head = b1 & 0x7F, 2
            if size == 126:
                if len(buf) - pos < 4:
                    break
                size, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif size == 127:
                if len(buf) - pos < 10:
                    break
                size, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if len(buf) - pos < head + size:
                break
            out.append(bytes(buf[pos + head : pos + head + size]))
            pos += head + size
        del buf[:pos]
        return out


def client_main(port: int, connections: int, signals: int, stalled: int, checked: int) -> None:
    """The child process: connect, subscribe, count. Prints READY, then one JSON line of results."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    from duckagents.codec import signal_from_dict

    sel = selectors.DefaultSelector()
    state: dict[socket.socket, dict] = {}
    for number in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        kind = "stalled" if number < stalled else "checked" if number < stalled + checked else "raw"
        st: dict = {"kind": kind, "count": 0, "last": -1, "acked": False}
        if kind == "checked":
            ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(ws.send(Request(host="127.0.0.1", target="/")))
            st["ws"] = ws
        else:
            key = base64.b64encode(os.urandom(16))
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            st["accept"] = base64.b64encode(hashlib.sha1(key + GUID).digest())
            st["head"] = b""
            st["reader"] = RawReader()
        sock.setblocking(False)
        state[sock] = st
        sel.register(sock, selectors.EVENT_READ)

    def handle(sock: socket.socket, st: dict, text: bytes | str) -> None:
        if not st["acked"]:
            frame = json.loads(text)
            if frame["type"] == "hello":
                sub = json.dumps({"type": "subscribe", "id": "all", "filter": {"types": ["provider_chunk"]}})
                data = st["ws"].send(TextMessage(sub)) if "ws" in st else _masked_text(sub)
                sock.setblocking(True)
                sock.sendall(data)
                sock.setblocking(False)
            elif frame["type"] == "ack":
                st["acked"] = True
                if st["kind"] == "stalled":
                    sel.unregister(sock)  # subscribed, and never reads again
            return
        if st["kind"] == "checked":
            frame = json.loads(text)
            data = signal_from_dict(frame["event"]).data
            assert isinstance(data, ProviderChunk)
            index = data.index
            assert frame["type"] == "signal" and frame["subscription"] == "all"
        else:
            at = text.find(INDEX) + len(INDEX)  # type: ignore[arg-type]
            index = int(text[at : text.index(b",", at)])  # type: ignore[arg-type]
        if index != st["last"] + 1:
            raise SystemExit(f"out of order: {index} after {st['last']}")
        st["last"] = index
        st["count"] += 1

    ready = False
    done = lambda: all(s["count"] == signals for s in state.values() if s["kind"] != "stalled")  # noqa: E731
    deadline = time.monotonic() + 120
    while not done() and time.monotonic() < deadline:
        if not ready and all(s["acked"] for s in state.values()):
            ready = True
            print("READY", flush=True)
        for ready_key, _ in sel.select(timeout=1):
            sock = cast(socket.socket, ready_key.fileobj)
            st = state[sock]
            data = sock.recv(1 << 18)
            if not data:
                raise SystemExit("the gateway closed a connection")
            if "ws" in st:
                st["ws"].receive_data(data)
                for event in st["ws"].events():
                    if isinstance(event, TextMessage):
                        st["parts"] = st.get("parts", "") + event.data
                        if event.message_finished:
                            handle(sock, st, st.pop("parts"))
                    elif not isinstance(event, AcceptConnection):
                        raise SystemExit(f"unexpected {event!r}")
                continue
            if not st["head"].endswith(b"\r\n\r\n"):
                st["head"] += data
                if b"\r\n\r\n" not in st["head"]:
                    continue
                head, _, data = st["head"].partition(b"\r\n\r\n")
                st["head"] = head + b"\r\n\r\n"
                assert head.startswith(b"HTTP/1.1 101") and st["accept"] in head, head
            for payload in st["reader"].frames(data):
                handle(sock, st, payload)
    counts = {
        kind: sorted({s["count"] for s in state.values() if s["kind"] == kind}) for kind in ("raw", "checked")
    }
    print(json.dumps(counts), flush=True)


async def test_200_connections_get_every_signal_of_a_10000_burst_in_order() -> None:
    code = (
        f"import sys; sys.path.insert(0, {REPO_DIR!r}); import tests.gateway.test_load as t; "
        "t.client_main(*map(int, sys.argv[1:]))"
    )
    config: dict[str, Any] = {"send_buffer": SIGNALS, "max_connections": CONNECTIONS + 10}
    async with fake_router() as router, running_gateway(router, **config) as gateway:
        args = [str(a) for a in (gateway.port, CONNECTIONS, SIGNALS, STALLED, CHECKED)]
        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                command = [sys.executable, "-c", code, *args]
                proc: trio.Process = await nursery.start(
                    partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
                )
                assert proc.stdout is not None
                output = b""
                while b"READY" not in output:
                    chunk = await proc.stdout.receive_some()
                    assert chunk, output
                    output += chunk
                assert gateway.stats().connections == CONNECTIONS
                for index in range(SIGNALS):
                    await router.bus.publish(
                        make_signal(ProviderChunk("burst", "load", index, "tok"), "/load")
                    )
                while chunk := await proc.stdout.receive_some():
                    output += chunk
                await proc.wait()
    assert proc.returncode == 0, output
    result = json.loads(output.decode().strip().splitlines()[-1])
    assert result == {"raw": [SIGNALS], "checked": [SIGNALS]}
    assert gateway.stats().dropped == 0
