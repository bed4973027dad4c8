"""Gateway fan-out: signals/s delivered from the bus to many WebSocket subscribers over loopback.

This process runs the gateway (the thing measured) on a bus with no router traffic; the subscribers run
in another process (:mod:`benchmarks.gateway_clients`) that only counts frames, so the figure is the
gateway's: bus -> per-connection subscription -> outbox -> encoded frames -> socket. The send buffer is
sized above the burst so nothing is dropped; drops, if any, are reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from duckagents.bus import SignalBus
from duckagents.config import GatewayConfig
from duckagents.errors import ErrorKind, ProviderError
from duckagents.gateway import open_gateway
from duckagents.signals import ProviderChunk, ProviderRequest, Signal, make_signal

ROOT = Path(__file__).resolve().parent.parent


class _BusOnlyRouter:
    """What the gateway needs of a router, minus routing: the benchmark only subscribes."""

    def __init__(self, bus: SignalBus) -> None:
        self.bus = bus

    async def submit(self, request: ProviderRequest) -> None:
        """Refuse: no routing here."""
        await trio.lowlevel.checkpoint()
        raise ProviderError(ErrorKind.UNSUPPORTED, "the fan-out benchmark takes no requests")

    def cancel(self, request_id: str) -> bool:
        """Nothing is ever in flight."""
        return False


async def _read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise RuntimeError(f"subscriber process ended early: {bytes(buffer)[-300:]!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


async def _fanout(clients: int, signals: int) -> dict[str, Any]:
    bus = SignalBus()
    config = GatewayConfig(host="127.0.0.1", port=0, send_buffer=signals + 64, max_connections=clients + 8)
    batch: list[Signal] = [
        make_signal(ProviderChunk(f"req-{i % 50}", "openai", i, f"tok{i} "), "/agents/openai")
        for i in range(signals)
    ]
    async with open_gateway(_BusOnlyRouter(bus), config) as gateway:
        command = [
            sys.executable,
            "-m",
            "benchmarks.gateway_clients",
            str(gateway.port),
            str(clients),
            str(signals),
        ]
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, cwd=str(ROOT))
        try:
            assert process.stdout is not None
            buffer = bytearray()
            if await _read_line(process.stdout, buffer) != b"ready":
                raise RuntimeError("subscriber process did not report ready")
            started = time.monotonic()
            for signal in batch:
                await bus.publish(signal)
            published = time.monotonic()
            totals = json.loads(await _read_line(process.stdout, buffer))
            await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    bus.close()
    elapsed = max((totals["last"] or published) - started, 1e-9)
    return {
        "clients": clients,
        "signals": signals,
        "received": totals["received"],
        "dropped": totals["dropped"],
        "deliveries_per_s": totals["received"] / elapsed,
        "signals_per_s_per_client": totals["received"] / clients / elapsed,
        "publish_s": published - started,
        "elapsed_s": elapsed,
    }


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Worker entry: deliveries/s to ``clients`` WebSocket subscribers of ``signals`` published signals."""
    return trio.run(_fanout, int(params.get("clients", 100)), int(params.get("signals", 2000)))
