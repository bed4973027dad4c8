"""Running the ``duckagents`` command as a subprocess, and a ``duckagents serve`` to talk to."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "duckagents"]
# No stray config or URL from the developer's shell.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DUCKAGENTS_")}


def run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``duckagents ARGS...`` to completion."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env or ENV, check=False,
        input=stdin if stdin is not None else "",
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed run, asserted to be exactly one line, no traceback; returns it."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


class Process:
    """A long-running ``duckagents`` subprocess whose stdout lines are read by a thread as they come."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV,
            stdin=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.seen_errors: list[str] = []
        for pipe, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors)):
            threading.Thread(target=self._read, args=(pipe, into), daemon=True).start()

    @staticmethod
    def _read(pipe: Any, into: queue.Queue[str | None]) -> None:
        for line in pipe:
            into.put(line.rstrip("\n"))
        into.put(None)

    def line_with(self, needle: str, timeout: float = 30, *, stderr: bool = False) -> str:
        """The next stdout (or stderr) line containing ``needle``; earlier lines are kept in :attr:`seen`
        (:attr:`seen_errors`)."""
        lines, seen = (self.errors, self.seen_errors) if stderr else (self.lines, self.seen)
        end = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no line containing {needle!r}; got {seen} (exit {self.proc.poll()})")
            seen.append(line)
            if needle in line:
                return line

    def available(self) -> list[str]:
        """The stdout lines already read and not yet taken (without waiting); also kept in :attr:`seen`."""
        taken = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return taken
            if line is None:
                return taken
            taken.append(line)
            self.seen.append(line)

    def rest(self, *, stderr: bool = False, timeout: float = 15) -> list[str]:
        """The remaining lines of stdout (or stderr), once the process closed it."""
        lines = self.errors if stderr else self.lines
        rest = []
        while (line := lines.get(timeout=timeout)) is not None:
            rest.append(line)
        return rest

    def stop(self, how: int = signal.SIGINT, timeout: float = 15) -> int:
        """Signal the process and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(how)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()



def serve(
    config: Path | None = None, *extra: str, env: dict[str, str] | None = None
) -> tuple[Process, str]:
    """``duckagents serve --gateway --port 0`` and its ws:// URL."""
    args = [*(["--config", str(config)] if config else []), "serve", "--gateway", "--port", "0", *extra]
    process = Process(args, env=env)
    url = process.line_with("gateway listening on").split()[-1]
    return process, url
