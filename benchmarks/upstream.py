"""The benchmark upstream: nginx answering fixed OpenAI-style bodies, so the server is never the bottleneck.

nginx runs as a non-daemon child process from a config rendered into a temp dir, on a free loopback port,
and is stopped when the block ends. Without nginx, duckagents.testing's loopback OpenAI server runs in a
subprocess instead (slower, so the printed note says the numbers are then a lower bound).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

import attrs

MODEL = "bench-model"
PROMPT = "Say hello"
CONTENT_CHUNKS = 20
EXPECTED_TEXT = "".join(f"w{i} " for i in range(CONTENT_CHUNKS))
TEMPLATE = Path(__file__).with_name("nginx.conf.template")
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

UpstreamKind = Literal["nginx", "loopback"]


@attrs.frozen
class Upstream:
    """Where the clients send requests. ``json_base``/``sse_base`` are OpenAI base URLs (ending in /v1).

    ``expected_text`` / ``expected_chunks`` are what every answer must contain (None: not fixed, the
    loopback server echoes), so a client that returns wrong answers fast is counted as failing.
    """

    kind: UpstreamKind
    json_base: str
    sse_base: str
    expected_text: str | None = None
    expected_chunks: int | None = None
    note: str = ""


def completion_body() -> str:
    """The fixed non-streaming chat.completion JSON."""
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": EXPECTED_TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": CONTENT_CHUNKS, "total_tokens": 29},
        },
        separators=(",", ":"),
    )


def _chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse_body() -> str:
    """The fixed SSE stream: ``CONTENT_CHUNKS`` content chunks, a usage chunk, then ``[DONE]``."""
    events = []
    for i in range(CONTENT_CHUNKS):
        delta = {"role": "assistant", "content": f"w{i} "} if i == 0 else {"content": f"w{i} "}
        events.append(_chunk(delta, "stop" if i == CONTENT_CHUNKS - 1 else None))
    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": CONTENT_CHUNKS, "total_tokens": 29},
    }
    events.append(usage)
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events]
    return "".join(lines) + "data: [DONE]\n\n"


def _nginx_string(text: str) -> str:
    # Bodies go inside a single-quoted nginx string: `$` would be read as a variable and a quote or
    # backslash would end/escape it, so refuse them rather than emit a silently different body.
    for bad in ("$", "'", "\\"):
        if bad in text:
            raise ValueError(f"upstream body must not contain {bad!r}")
    return text.replace("\n", "\\n")


def render_nginx_config(prefix: str | Path, port: int) -> str:
    """The nginx config for ``prefix`` (a writable dir) and ``port`` on 127.0.0.1."""
    return (
        TEMPLATE.read_text(encoding="utf-8")
        .replace("@PREFIX@", str(prefix))
        .replace("@PORT@", str(port))
        .replace("@COMPLETION_BODY@", _nginx_string(completion_body()))
        .replace("@SSE_BODY@", _nginx_string(sse_body()))
    )


def find_nginx() -> str | None:
    """The nginx binary, also where /usr/sbin is not on PATH."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the caller retries if another process takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, path: str, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return True
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    return False


def _stop(proc: subprocess.Popen[Any], sig: int) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def run_nginx(binary: str) -> Iterator[Upstream]:
    """Start nginx from a rendered config in a temp dir; stop it (graceful, then forced) on exit."""
    with tempfile.TemporaryDirectory(prefix="duckagents-bench-nginx-") as prefix:
        conf = Path(prefix) / "nginx.conf"
        for _attempt in range(3):
            port = free_port()
            conf.write_text(render_nginx_config(prefix, port), encoding="utf-8")
            proc = subprocess.Popen(
                [binary, "-p", prefix, "-c", str(conf), "-e", f"{prefix}/error.log"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                if not _wait_ready(port, "/healthz", proc):
                    continue  # most likely the port was taken between free_port() and bind
                base = f"http://127.0.0.1:{port}"
                yield Upstream(
                    kind="nginx",
                    json_base=f"{base}/json/v1",
                    sse_base=f"{base}/sse/v1",
                    expected_text=EXPECTED_TEXT,
                    expected_chunks=CONTENT_CHUNKS,
                    note=f"nginx ({binary}), 1 worker process, fixed bodies",
                )
                return
            finally:
                # SIGQUIT: graceful shutdown of master and worker; the temp dir goes after it exits.
                _stop(proc, signal.SIGQUIT)
        log = Path(prefix, "error.log")
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"nginx did not start: {detail}")


@contextmanager
def run_loopback(hang: int = 0) -> Iterator[Upstream]:
    """Run duckagents.testing's loopback OpenAI server in a subprocess (the fallback upstream).

    ``hang``: that many chat completions never answer (see :mod:`benchmarks.fallback_server`).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fallback_server", "--hang", str(hang)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http://"):
            raise RuntimeError(f"fallback upstream did not start (said {line!r})")
        yield Upstream(
            kind="loopback",
            json_base=f"{line}/v1",
            sse_base=f"{line}/v1",
            note="duckagents.testing loopback OpenAI server (Python): slower than nginx, numbers are a floor",
        )
    finally:
        _stop(proc, signal.SIGTERM)


@contextmanager
def open_upstream(prefer: Literal["auto", "nginx", "loopback"] = "auto") -> Iterator[Upstream]:
    """nginx when available (or required), else the loopback fallback with a printed note."""
    binary = find_nginx() if prefer != "loopback" else None
    if prefer == "nginx" and binary is None:
        raise RuntimeError("nginx not found (apt-get install -y nginx)")
    with ExitStack() as stack:
        upstream: Upstream | None = None
        if binary is not None:
            try:
                upstream = stack.enter_context(run_nginx(binary))
            except RuntimeError as exc:
                if prefer == "nginx":
                    raise
                print(f"note: {exc}", file=sys.stderr)
        if upstream is None:
            if prefer == "auto":
                print(
                    "note: nginx unavailable; using duckagents.testing's loopback OpenAI server as "
                    "upstream (slower than nginx, it may be the bottleneck)",
                    file=sys.stderr,
                )
            upstream = stack.enter_context(run_loopback())
        yield upstream
