"""A real ``redis-server`` for tests and benchmarks: loopback only, a free port, no persistence.

``with RedisServer() as server:`` starts it (``server.url``); :meth:`RedisServer.kill`,
:meth:`RedisServer.start` (same port again), :meth:`RedisServer.pause` / :meth:`RedisServer.resume`
simulate an outage, a restart and a server too slow to answer. The methods block (up to a few seconds);
from Trio, call them through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "redis_server_path"]

_READY_TIMEOUT = 10.0


def redis_server_path() -> str | None:
    """The ``redis-server`` executable on PATH, or None when it is not installed."""
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, its data and log in a private temporary directory."""

    def __init__(self, executable: str | None = None, *, password: str | None = None) -> None:
        found = executable or redis_server_path()
        if found is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install -y redis-server)")
        self.executable = found
        #: When set, the server requires it (``requirepass``); :attr:`url` then carries it.
        self.password = password
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._directory = tempfile.TemporaryDirectory(prefix="duckagents-redis-")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (with ``:<password>@`` when there is one)."""
        if self.port is None:
            raise RuntimeError("the server was never started")
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = Path(self._directory.name) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def running(self) -> bool:
        """True while the process is alive (paused counts as alive)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (on its previous port after a kill or stop, else on a free one)."""
        if self.running:
            return
        attempts = 1 if self.port is not None else 5
        for _ in range(attempts):
            port = self.port if self.port is not None else _free_port()
            if self._spawn(port):
                self.port = port
                return
        raise RuntimeError(f"redis-server did not start; its log:\n{self.log[-2000:]}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): every connection drops, every key is lost."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT); it answers what queued up meanwhile."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._directory.cleanup()

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _spawn(self, port: int) -> bool:
        directory = self._directory.name
        args = [
            self.executable,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", directory,
            "--logfile", str(Path(directory) / "redis.log"),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False  # most likely the port was taken meanwhile
            if _answers_ping(port):
                self._process = process
                return True
            time.sleep(0.02)
        process.kill()
        process.wait()
        return False


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False
