"""The HTTP front doors under test, as servers of their own: ``duckagents serve --http``, LiteLLM's
proxy server (``litellm --config``) and the floor (a bare hypercorn forwarder, :mod:`benchmarks.door_floor`),
all in front of the same upstream.

Each runs as a subprocess for the whole HTTP section (started once, before the first run, so start-up is
never measured), with the settings a user gets from a minimal config file. The load generator sends them
the same OpenAI request it sends to the upstream directly. nginx cannot branch on a body, so each door
serves two model names: ``bench-json`` (to the upstream's JSON base URL) and ``bench-sse`` (to its SSE
one). What the doors cost in memory is their process's peak RSS (``VmHWM``) at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from .upstream import Upstream, free_port

JSON_MODEL = "bench-json"
SSE_MODEL = "bench-sse"
KEY_ENV = "DUCKAGENTS_BENCH_API_KEY"
TOKEN_ENV = "BENCH_DOOR_TOKEN"
#: The upstream's (ignored) API key, and the key clients present to both doors (the load generator
#: sends it as its bearer token; LiteLLM's proxy refuses to start without a master key).
DUMMY_KEY = "sk-bench-dummy-key-not-a-secret"
ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 180.0  # LiteLLM's proxy imports a lot: on a busy 2-core machine it takes a while
STOP_TIMEOUT = 10.0


@attrs.frozen
class Door:
    """A running front door: its OpenAI base URL (ending in /v1) and process id."""

    name: str
    base_url: str
    pid: int
    note: str = ""


def model_for(stream: bool) -> str:
    """The model name a door routes to the upstream base URL of this mode."""
    return SSE_MODEL if stream else JSON_MODEL


def duckagents_config(upstream: Upstream) -> str:
    """The TOML config of the duckagents door: one OpenAI agent per upstream base URL, defaults otherwise
    (so the door and the router run as a user would have them)."""
    blocks = []
    for name, model, url in (("json", JSON_MODEL, upstream.json_base), ("sse", SSE_MODEL, upstream.sse_base)):
        blocks.append(
            f'[[providers]]\nname = "{name}"\nkind = "openai"\nbase_url = "{url}"\n'
            f'api_key_env = "{KEY_ENV}"\nmodels = ["{model}"]\ndefault_model = "{model}"\ntimeout = 60\n'
        )
    # Clients authenticate as with LiteLLM's master key: the same bearer key, checked by both doors.
    tokens = f'[gateway]\ntokens = [{{ env = "{TOKEN_ENV}", scopes = ["request", "subscribe"] }}]\n'
    return "\n".join(blocks) + "\n[http]\nenabled = true\nport = 0\n\n" + tokens


def litellm_config(upstream: Upstream) -> str:
    """LiteLLM's proxy config (YAML is a superset of JSON): one deployment per upstream base URL."""
    models = [
        {
            "model_name": model,
            "litellm_params": {"model": "openai/bench-model", "api_base": url, "api_key": DUMMY_KEY},
        }
        for model, url in ((JSON_MODEL, upstream.json_base), (SSE_MODEL, upstream.sse_base))
    ]
    settings = {"num_retries": 0, "request_timeout": 60, "telemetry": False}
    general = {"master_key": DUMMY_KEY}
    return json.dumps(
        {"model_list": models, "litellm_settings": settings, "general_settings": general}, indent=1
    )


def _ready(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-1500:] if path.exists() else ""


@contextmanager
def run_duckagents_door(upstream: Upstream) -> Iterator[Door]:
    """``python -m duckagents.cli serve`` with the door on a free port; stopped (SIGINT) on exit."""
    with tempfile.TemporaryDirectory(prefix="duckagents-bench-door-") as tmp:
        config, out = Path(tmp) / "duckagents.toml", Path(tmp) / "out.txt"
        config.write_text(duckagents_config(upstream))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKAGENTS_")}
        env |= {KEY_ENV: DUMMY_KEY, TOKEN_ENV: DUMMY_KEY}
        with out.open("w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "duckagents.cli", "--config", str(config), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(ROOT),
            )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            url = None
            while url is None and time.monotonic() < deadline and proc.poll() is None:
                url = next(
                    (ln.split()[-1] for ln in out.read_text().splitlines() if "http listening on" in ln), None
                )
                time.sleep(0.05)
            if url is None:
                raise RuntimeError(f"duckagents serve --http did not start: {_tail(out)}")
            yield Door("door-duckagents", f"{url}/v1", proc.pid, "duckagents serve (router, 2 OpenAI agents)")
        finally:
            _stop(proc)


@contextmanager
def run_door_floor(upstream: Upstream) -> Iterator[Door]:
    """The floor (:mod:`benchmarks.door_floor`): bare hypercorn on Trio forwarding with httpx."""
    with tempfile.TemporaryDirectory(prefix="duckagents-bench-floor-") as tmp:
        port = free_port()
        bases = (upstream.json_base, upstream.sse_base)
        argv = [sys.executable, "-m", "benchmarks.door_floor", str(port), *bases]
        with _listening(argv, Path(tmp), port, "/health", "the hypercorn floor", cwd=ROOT, poll=0.05) as pid:
            note = "bare hypercorn/Trio + httpx forwarder"
            yield Door("door-floor", f"http://127.0.0.1:{port}/v1", pid, note)


@contextmanager
def _listening(
    argv: list[str],
    tmp: Path,
    port: int,
    ready_path: str,
    what: str,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    poll: float,
) -> Iterator[int]:
    """Run ``argv`` (output to a file in ``tmp``) until ``GET ready_path`` on ``port`` answers 200; yield
    its process id; stop it on exit."""
    out = tmp / "out.txt"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=str(cwd)
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _ready(port, ready_path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {_tail(out)}")
            time.sleep(poll)
        yield proc.pid
    finally:
        _stop(proc)


def find_litellm() -> str | None:
    """The ``litellm`` command (installed with ``litellm[proxy]``) next to this Python, or on PATH."""
    beside = Path(sys.executable).with_name("litellm")
    return str(beside) if beside.exists() else shutil.which("litellm")


@contextmanager
def run_litellm_proxy(upstream: Upstream) -> Iterator[Door]:
    """``litellm --config ... --port N`` (uvicorn, one worker, default settings); stopped on exit."""
    binary = find_litellm()
    if binary is None:
        raise RuntimeError("the litellm command is not installed (pip install 'litellm[proxy]')")
    with tempfile.TemporaryDirectory(prefix="duckagents-bench-litellm-") as tmp:
        config = Path(tmp) / "litellm.yaml"
        config.write_text(litellm_config(upstream))
        # The cost map is otherwise fetched from the internet at start; no telemetry either.
        env = dict(os.environ) | {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
        port = free_port()
        argv = [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        with _listening(
            argv, Path(tmp), port, "/health/liveliness", "litellm proxy", cwd=Path(tmp), env=env, poll=0.2
        ) as pid:
            note = "litellm proxy (uvicorn, 1 worker)"
            yield Door("door-litellm", f"http://127.0.0.1:{port}/v1", pid, note)


def peak_rss_mib(pid: int) -> float | None:
    """Peak RSS (``VmHWM``) of a process and its children, in MiB; None when /proc cannot tell."""
    total_kib = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
        except OSError:
            if p == pid:
                return None
    return total_kib / 1024.0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process used so far (from /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)
