"""Shared helpers of the live-view tests: a ``duckagents serve --gateway`` subprocess in front of a loopback
OpenAI server and two mock agents, a small synchronous gateway client to send it requests, and Chromium
through Playwright. Not a test module itself (it has no tests).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from duckagents.testing import Fault, OpenAIRateLimits, OpenAIServer, ThreadedServer

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "docs" / "img"
#: Set to 1 to write the screenshots into docs/img (they are committed); otherwise they go to a temp dir.
UPDATE_SCREENSHOTS = os.environ.get("DUCKAGENTS_UPDATE_SCREENSHOTS") == "1"
CLI = [sys.executable, "-m", "duckagents"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DUCKAGENTS_")} | {
    "LIVE_OPENAI_KEY": "sk-live"
}
#: A prompt containing this crashes the agent "beta" (its mock's ``crash_on`` option).
CRASH = "CRASH-BETA"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

CONFIG = """
health_interval = 2.0

[router]
max_attempts = 2
backoff_initial = 0.01

[supervision]
agent_max_restarts = 50
agent_period = 60.0
agent_backoff_initial = 0.05

[[providers]]
name = "alpha"
kind = "openai"
base_url = "{openai}"
api_key_env = "LIVE_OPENAI_KEY"
default_model = "gpt-4o-mini"
models = ["gpt-4o-mini"]
limits = {{ requests_per_minute = 600, tokens_per_minute = 200000 }}
breaker = {{ failure_threshold = 2, open_timeout = 30.0 }}

[[providers]]
name = "beta"
kind = "mock"
default_model = "mock-1"
models = ["mock-1", "gpt-4o-mini"]
limits = {{ requests_per_minute = 120 }}
options = {{ crash_on = "{crash}", latency = {{ kind = "uniform", low = 0.02, high = 0.09 }}, seed = 7 }}

[[providers]]
name = "gamma"
kind = "mock"
default_model = "llama3.2"
models = ["llama3.2"]
options = {{ latency = {{ kind = "uniform", low = 0.1, high = 0.3 }}, seed = 3 }}
"""


def chromium_or_skip() -> str:
    """The Chromium executable, or skip with the reason (``.ci/run`` installs it with apt-get)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium; .ci/run does it as root)")
    return path


class Server:
    """``duckagents serve --gateway --http`` on free loopback ports, restartable on the same ports. The
    dashboard is served by both: the front door at ``http_url`` and the gateway at ``gateway_page_url``."""

    def __init__(self, config: Path, upstream: ThreadedServer[OpenAIServer]) -> None:
        self.config = config
        self.upstream = upstream
        self.port = 0  # the gateway's
        self.http_port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def http_url(self) -> str:
        """The dashboard as the HTTP front door serves it."""
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def gateway_page_url(self) -> str:
        """The dashboard as the gateway serves it on its own address."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def origins(self) -> tuple[str, ...]:
        """Every address of this server a page may use."""
        return tuple(
            f"{scheme}://127.0.0.1:{port}/"
            for port in (self.port, self.http_port)
            for scheme in ("http", "ws")
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *CLI, "--config", str(self.config), "serve", "--gateway", "--port", str(self.port),
                "--http", f"127.0.0.1:{self.http_port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )  # fmt: skip
        # In the order serve prints them: the front door, the gateway, the dashboard on both.
        self.http_port = int(read_line_with(self.proc, "http listening on").strip().rsplit(":", 1)[1])
        self.port = int(
            read_line_with(self.proc, "gateway listening on").strip().rstrip("/").rsplit(":", 1)[1]
        )
        read_line_with(self.proc, "(front door)")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        finally:
            self.proc.kill()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
            self.proc = None

    def fail_next(self, count: int, status: int = 500, headers: dict[str, str] | None = None) -> None:
        """Make alpha's upstream answer the next ``count`` chat requests with ``status``."""
        fault = Fault(
            status=status, message="injected outage", headers=headers or {}, path="/v1/chat/completions"
        )
        faults = [fault] * count
        self.upstream.call(self.upstream.server.inject, *faults)


_PENDING: dict[int, bytes] = {}  # by process id: output read past the last line handed out


def read_line_with(proc: subprocess.Popen[str], needle: str, timeout: float = 30) -> str:
    """The next line of ``proc``'s stdout containing ``needle`` (earlier lines are skipped).

    Reads the pipe's file descriptor directly: a buffered reader may hold several lines already, which
    ``select`` on the descriptor would never report."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pending = _PENDING.get(proc.pid, b"")
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            _PENDING[proc.pid] = pending
            if needle in line.decode(errors="replace"):
                return line.decode(errors="replace") + "\n"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            data = os.read(fd, 65536)
            if not data and proc.poll() is not None:
                break
            _PENDING[proc.pid] = pending + data
    stderr = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
    raise AssertionError(f"no line containing {needle!r} (exit {proc.poll()}): {stderr[-2000:]}")


@contextmanager
def running_server(tmp: Path) -> Iterator[Server]:
    """The loopback OpenAI upstream and the serve subprocess in front of it, for the block."""
    limits = OpenAIRateLimits(limit_requests=600, limit_tokens=200_000, reset_requests="100ms")
    with ThreadedServer(OpenAIServer(rate_limits=limits)) as upstream:
        config = tmp / "live.toml"
        config.write_text(CONFIG.format(openai=upstream.server.base_url, crash=CRASH))
        server = Server(config, upstream)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def ask(
    url: str, prompt: str, *, model: str | None = None, timeout: float = 30
) -> tuple[str, dict[str, Any]]:
    """Send one request through the gateway and wait for its final result: (request id, final event)."""
    message: dict[str, Any] = {
        "type": "request",
        "id": "q",
        "v": 1,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"stream": False},
        "timeout": timeout,
    }
    if model is not None:
        message["model"] = model
    with ws_connect(url, open_timeout=10) as ws:
        request_id = ""
        ws.send(json.dumps(message))
        end = time.monotonic() + timeout + 5
        while time.monotonic() < end:
            frame = json.loads(ws.recv(timeout=max(0.1, end - time.monotonic())))
            if frame["type"] == "ack" and frame.get("id") == "q":
                request_id = frame["request_id"]
            elif frame["type"] == "error":
                raise AssertionError(f"gateway refused the request: {frame}")
            elif frame["type"] == "signal" and frame.get("request") == "q":
                event = frame["event"]
                if event["type"] in ("provider_response", "provider_error"):
                    return request_id, event
    raise AssertionError("no final result")


def screenshot_path(name: str, tmp: Path) -> Path:
    """Where a screenshot goes: docs/img when updating them, else the test's temp dir."""
    directory = IMAGES if UPDATE_SCREENSHOTS else tmp
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


class Terminal:
    """A command on a pseudo-terminal of ``columns`` x ``lines``, its screen read back by pyte (a VT100
    emulator), so a test sees what a person would."""

    def __init__(self, argv: list[str], *, columns: int = 150, lines: int = 40) -> None:
        import fcntl
        import pty
        import struct
        import termios

        import pyte

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = ENV | {"TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(lines)}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, close_fds=True
        )
        os.close(slave)
        self.fd = master
        self.screen = pyte.Screen(columns, lines)
        self._stream = pyte.ByteStream(self.screen)

    def pump(self, timeout: float = 0.1) -> None:
        """Feed whatever the program wrote within ``timeout`` seconds to the screen."""
        end = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the program ended and the terminal closed
                return
            if not data:
                return
            self._stream.feed(data)

    @property
    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, check: Any, timeout: float = 20.0, what: str = "") -> str:
        """Pump until ``check(screen text)`` is true; returns the text."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump(0.1)
            if check(self.text):
                return self.text
        raise AssertionError(f"the screen never showed {what or check}:\n{self.text}")

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.fd)
