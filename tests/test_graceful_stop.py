"""Graceful stop of ``duckagents serve --gateway`` (issue 10, item 7), as a real subprocess under load.

Clients connected over real WebSockets have requests in flight (the mock provider answers slowly) and a
subscriber watches every signal when SIGTERM or SIGINT arrives. Each round checks: exit status, every
accepted request got exactly one terminal frame, every client saw the close frame 1001 (never a
connection dropped without one, 1006), and the stop takes the time it should. Rounds repeat, since the
1006 used to be intermittent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

CLI = [sys.executable, "-m", "duckagents.cli"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DUCKAGENTS_")}
CLIENTS = 5
REQUESTS_PER_CLIENT = 3
STEP = 20.0


@attrs.define
class Seen:
    """What one client saw: the requests acked, the terminal frames per request, the close code."""

    acked: set[str] = attrs.field(factory=set)
    terminals: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict)
    close_code: int | None = None
    signals: int = 0


def write_config(tmp_path: Path, *, latency: float, drain_timeout: float) -> Path:
    path = tmp_path / f"serve-{latency:g}-{drain_timeout:g}.toml"
    path.write_text(
        f"drain_timeout = {drain_timeout}\n"
        '[[providers]]\nname = "mock"\nkind = "mock"\n'
        f"options = {{ latency = {latency}, chunk_size = 4 }}\n"
    )
    return path


async def start_serve(config: Path) -> tuple[trio.Process, str, list[bytes]]:
    """The serve subprocess, its gateway URL, and its output so far (kept being read by the caller)."""
    proc = await trio.lowlevel.open_process(
        [*CLI, "--config", str(config), "serve", "--gateway", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    assert proc.stdout is not None
    output: list[bytes] = []
    with trio.fail_after(STEP):
        while b"gateway listening on" not in b"".join(output):
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, b"".join(output).decode(errors="replace")
            output.append(chunk)
    line = next(x for x in b"".join(output).decode().splitlines() if "gateway listening on" in x)
    return proc, line.split()[-1], output


async def read_rest(proc: trio.Process, output: list[bytes]) -> None:
    assert proc.stdout is not None
    while chunk := await proc.stdout.receive_some(4096):
        output.append(chunk)


async def client(url: str, name: str, requests: int, ready: trio.Semaphore, seen: Seen) -> None:
    """Submit ``requests`` requests (half streamed), release ``ready`` once all are acked, then read every
    frame until the server closes the connection."""
    async with trio_websocket.open_websocket_url(url, connect_timeout=STEP) as ws:
        hello = json.loads(await ws.get_message())
        assert hello["type"] == "hello"
        if requests == 0:
            await ws.send_message(json.dumps({"type": "subscribe", "id": "all"}))
        for index in range(requests):
            message = {
                "type": "request",
                "id": f"{name}-{index}",
                "messages": [{"role": "user", "content": f"question {index} from {name}"}],
                "options": {"stream": index % 2 == 0},
            }
            await ws.send_message(json.dumps(message))
        released = False
        try:
            while True:
                frame = json.loads(await ws.get_message())
                kind = frame.get("type")
                if kind == "ack" and "request_id" in frame:
                    seen.acked.add(frame["id"])
                elif kind == "ack" and frame.get("subscription") == "all":
                    seen.acked.add("all")
                elif kind == "signal" and "request" in frame:
                    if frame["event"]["type"] in ("provider_response", "provider_error"):
                        seen.terminals.setdefault(frame["request"], []).append(frame["event"])
                elif kind == "signal":
                    seen.signals += 1
                elif kind == "error":
                    raise AssertionError(f"{name}: unexpected error frame {frame}")
                if not released and len(seen.acked) == max(requests, 1):
                    released = True
                    ready.release()
        except trio_websocket.ConnectionClosed as closed:
            seen.close_code = closed.reason.code if closed.reason is not None else None
        finally:
            if not released:
                ready.release()


@attrs.frozen
class Round:
    """How one round goes: the mock's latency, the drain timeout, a second signal or not."""

    latency: float
    drain_timeout: float
    second_signal: bool = False

    @property
    def finish(self) -> bool:
        """The requests in flight finish within the drain (else they are stopped with ``shutdown``)."""
        return self.latency < self.drain_timeout and not self.second_signal


async def run_round(tmp_path: Path, signum: int, plan: Round) -> None:
    config = write_config(tmp_path, latency=plan.latency, drain_timeout=plan.drain_timeout)
    proc, url, output = await start_serve(config)
    seen = {f"c{i}": Seen() for i in range(CLIENTS)}
    watcher = Seen()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_rest, proc, output)
            ready = trio.Semaphore(0)
            nursery.start_soon(client, url, "watch", 0, ready, watcher)
            for name, record in seen.items():
                nursery.start_soon(client, url, name, REQUESTS_PER_CLIENT, ready, record)
            with trio.fail_after(STEP):
                for _ in range(CLIENTS + 1):
                    await ready.acquire()
            await trio.sleep(0.2)  # the requests are with the (slow) agent now
            assert all(not record.terminals for record in seen.values())
            started = time.monotonic()
            proc.send_signal(signum)
            if plan.second_signal:
                await trio.sleep(0.3)
                proc.send_signal(signum)
            with trio.fail_after(STEP + plan.drain_timeout):
                await proc.wait()
            elapsed = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
    text = b"".join(output).decode(errors="replace")
    expected_rc = 128 + signum if plan.second_signal else 0
    assert proc.returncode == expected_rc, text
    assert "Traceback" not in text, text
    for name, record in [*seen.items(), ("watch", watcher)]:
        assert record.close_code == 1001, (name, record, text)
    for name, record in seen.items():
        assert len(record.acked) == REQUESTS_PER_CLIENT, (name, record)
        assert set(record.terminals) == record.acked, (name, record)
        for msg_id, terminals in record.terminals.items():
            assert len(terminals) == 1, (msg_id, terminals)
            event = terminals[0]
            if plan.finish:
                assert event["type"] == "provider_response", event
            else:
                assert event["type"] == "provider_error" and event["data"]["kind"] == "shutdown", event
    assert watcher.signals > 0  # the subscriber was served until the end
    if plan.second_signal:
        assert elapsed < 5.0, elapsed  # at once, not after the 30 s drain
    elif plan.finish:
        assert elapsed < plan.latency + 5.0, elapsed
    else:
        assert plan.drain_timeout <= elapsed < plan.drain_timeout + 5.0, elapsed


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_drains_serve_under_load_and_clients_see_terminals_then_1001(
    tmp_path: Path, signum: int
) -> None:
    rounds = [
        Round(latency=1.0, drain_timeout=30.0),  # in flight, finished within the drain
        Round(latency=60.0, drain_timeout=0.5),  # past the drain timeout: stopped with shutdown
        Round(latency=1.0, drain_timeout=30.0),
        Round(latency=60.0, drain_timeout=0.5),
        Round(latency=60.0, drain_timeout=30.0, second_signal=True),  # a second signal: at once
    ]
    with trio.fail_after(len(rounds) * (STEP + 5)):
        for plan in rounds:
            await run_round(tmp_path, signum, plan)
