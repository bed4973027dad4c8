"""The operator commands end to end: a real ``duckagents serve --gateway`` subprocess, driven by the real
``duckagents`` command (breaker, drain, resume, models, reload) and observed through its gateway."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from duckagents.gateway import ask, connect, control, fetch_status
from duckagents.testing import open_ollama_server

CLI = [sys.executable, "-m", "duckagents"]
ADMIN, READ = "ops-token-3c9d1e77", "dash-token-81f0a2b4"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DUCKAGENTS_")} | {
    "OPS_TOKEN": ADMIN, "DASH_TOKEN": READ, "DUCKAGENTS_TOKEN": ADMIN,
}
GATEWAY = (
    '[[gateway.tokens]]\nenv = "OPS_TOKEN"\nscopes = ["admin", "subscribe", "request"]\n'
    '[[gateway.tokens]]\nenv = "DASH_TOKEN"\nscopes = ["subscribe"]\n'
)
STEP = 30.0


def mock(name: str, priority: int = 0, latency: float = 0.0) -> str:
    return (
        f'[[providers]]\nname = "{name}"\nkind = "mock"\npriority = {priority}\n'
        f"options = {{ latency = {latency} }}\n"
    )


@attrs.define
class Served:
    """A running ``duckagents serve --gateway``: its process, gateway URL and the lines it printed."""

    process: trio.Process
    url: str
    lines: list[str]
    changed: trio.Event = attrs.field(factory=trio.Event)

    async def line_with(self, needle: str, after: int = 0) -> str:
        with trio.fail_after(STEP):
            while True:
                for line in self.lines[after:]:
                    if needle in line:
                        return line
                await self.changed.wait()


@asynccontextmanager
async def serving(config: Path, tmp_path: Path) -> AsyncIterator[Served]:
    stderr = (tmp_path / "serve.err").open("wb")
    process = await trio.lowlevel.open_process(
        [*CLI, "--config", str(config), "serve", "--gateway", "--port", "0"],
        stdout=subprocess.PIPE, stderr=stderr, env=ENV,
    )
    served = Served(process, "", [])
    try:
        async with trio.open_nursery() as nursery:

            async def read() -> None:  # drained all along: a full pipe would stall the server
                assert process.stdout is not None
                buffer = b""
                async for data in process.stdout:
                    buffer += data
                    *complete, buffer = buffer.split(b"\n")
                    served.lines += [line.decode() for line in complete]
                    served.changed.set()
                    served.changed = trio.Event()

            nursery.start_soon(read)
            served.url = (await served.line_with("gateway listening on")).split()[-1]
            yield served
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(15):
                await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        stderr.close()


async def cli(*args: str, token: str = ADMIN) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(STEP):
        return await trio.run_process(
            [*CLI, *args], capture_stdout=True, capture_stderr=True, check=False,
            env=ENV | {"DUCKAGENTS_TOKEN": token},
        )


def text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode() + result.stderr.decode()


async def agents(url: str) -> dict[str, dict[str, Any]]:
    return {a["provider"]: a for a in (await fetch_status(url, token=READ))["data"]}


async def test_breaker_switches_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "duck.toml"
    config.write_text(GATEWAY + mock("a") + mock("b", priority=1))
    async with serving(config, tmp_path) as server:
        url = server.url
        forced = await cli("breaker", "force-open", "a", "--url", url)
        assert forced.returncode == 0, text(forced)
        assert forced.stdout.decode().strip() == "a: breaker forced_open (by token:OPS_TOKEN)"
        # The gateway's status document of the running server, and `status --url --json` rendering it.
        status = await agents(url)
        assert (status["a"]["breaker_state"], status["b"]["breaker_state"]) == ("forced_open", "closed")
        shown = await cli("status", "--url", url, "--json", token=READ)
        assert shown.returncode == 0, text(shown)
        rows = {row["provider"]: row for row in json.loads(shown.stdout)}
        assert rows["a"]["breaker_state"] == "forced_open" and rows["a"]["state"] == "down"
        checked = await cli("status", "--url", url, "--check", token=READ)
        assert checked.returncode == 5  # a provider is down
        answer = await ask(url, "who answers?", token=ADMIN, out=io.StringIO())
        assert answer.provider == "b"
        assert (await agents(url))["b"]["metrics"]["total_requests"] == 1  # as it ended, no status interval
        assert not (await agents(url))["a"]["serving"]

        disabled = await cli("breaker", "disable", "a", "--url", url)
        assert disabled.returncode == 0 and "breaker disabled" in disabled.stdout.decode()
        assert (await ask(url, "again", token=ADMIN, out=io.StringIO())).provider == "a"
        reset = await cli("breaker", "reset", "a", "--url", url)
        assert reset.returncode == 0 and "breaker closed" in reset.stdout.decode()
        assert (await agents(url))["a"]["breaker_state"] == "closed"

        unknown = await cli("breaker", "reset", "nope", "--url", url)
        assert unknown.returncode == 1 and "unknown provider 'nope'; known: a, b" in text(unknown)
        read_only = await cli("breaker", "force-open", "a", "--url", url, token=READ)
        assert read_only.returncode == 1 and "forbidden" in text(read_only) and READ not in text(read_only)
        assert (await agents(url))["a"]["breaker_state"] == "closed"
        # serve prints who did what.
        await server.line_with("control_reply")
    assert not any(ADMIN in line for line in server.lines)


async def test_drain_under_load_loses_nothing_and_sends_no_new_attempts(tmp_path: Path) -> None:
    config = tmp_path / "duck.toml"
    router = '[router]\nstrategy = "round_robin"\n'
    config.write_text(GATEWAY + router + mock("a", latency=0.3) + mock("b", latency=0.3))
    async with serving(config, tmp_path) as server:
        url = server.url
        frames: list[dict[str, Any]] = []
        answers: list[Any] = []
        async with connect(url, ADMIN) as watcher, trio.open_nursery() as nursery:
            await watcher.send_message(json.dumps(
                {"type": "subscribe", "id": "w", "filter": {"types": ["provider_request", "control_reply"]}}
            ))

            async def record() -> None:
                while True:
                    frames.append(json.loads(await watcher.get_message()))

            async def client(i: int) -> None:
                for k in range(6):
                    answers.append(await ask(url, f"c{i}-{k}", token=ADMIN, out=io.StringIO()))

            nursery.start_soon(record)
            async with trio.open_nursery() as load:
                for i in range(12):
                    load.start_soon(client, i)
                await trio.sleep(1.0)
                drained = await cli("drain", "a", "--url", url)
                assert drained.returncode == 0, text(drained)
                assert "a: draining" in drained.stdout.decode()
                await watcher.send_message(json.dumps({"type": "ping", "id": "after-drain"}))
            assert (await agents(url))["a"]["draining"]
            resumed = await cli("resume", "a", "--url", url)
            assert resumed.returncode == 0 and "taking requests again" in resumed.stdout.decode()
            after_resume = [await ask(url, f"r{k}", token=ADMIN, out=io.StringIO()) for k in range(4)]
            nursery.cancel_scope.cancel()
    assert len(answers) == 72  # every request answered: none lost
    mark = next(i for i, f in enumerate(frames) if f.get("id") == "after-drain")
    signals = [f for f in frames if f.get("type") == "signal"]
    attempts = [f["event"] for f in signals if f["event"]["type"] == "provider_request"]
    late = [
        f for f in frames[mark:]
        if f in signals and f["event"]["type"] == "provider_request"
        and f["event"].get("provider") == "a" and f["event"]["source"] == "/router/dispatch"
    ]
    resume_at = next(
        i for i, f in enumerate(frames) if f in signals and f["event"]["data"].get("action") == "resume"
    )
    assert [f for f in late if frames.index(f) < resume_at] == []  # no attempt to a while it drained
    assert any(a.get("provider") == "a" for a in attempts) and any(r.provider == "a" for r in answers)
    assert {r.provider for r in after_resume} == {"a", "b"}


async def test_model_pull_goes_on_when_the_cli_leaves(tmp_path: Path) -> None:
    async with open_ollama_server(pull_chunks=8, pull_interval=0.25) as upstream:
        config = tmp_path / "local.toml"
        local = f'[[providers]]\nname = "gpu"\nkind = "ollama"\nbase_url = "{upstream.url}"\n'
        config.write_text(GATEWAY + local)
        async with serving(config, tmp_path) as server:
            url = server.url
            async with connect(url, ADMIN) as watcher:
                await watcher.send_message(json.dumps(
                    {"type": "subscribe", "id": "p", "filter": {"types": ["progress"], "providers": ["gpu"]}}
                ))
                puller = await trio.lowlevel.open_process(
                    [*CLI, "models", "pull", "tinyduck:1b", "--url", url], stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, env=ENV,
                )
                shown = b""
                assert puller.stdout is not None
                with trio.fail_after(STEP):
                    while b"%" not in shown:  # the CLI shows the progress...
                        shown += await puller.stdout.receive_some()
                puller.kill()  # ...and leaves in the middle
                await puller.wait()
                assert b"gpu: pulling" in shown
                with trio.fail_after(STEP):  # the pull goes on in the server, to its end
                    while True:
                        frame = json.loads(await watcher.get_message())
                        event = frame.get("event", {})
                        if event.get("type") == "progress" and event["data"]["outcome"]:
                            break
                assert event["data"]["outcome"] == "success" and event["data"]["task"] == "pull tinyduck:1b"
            # The server's own list (the models_list control) has it now.
            listed = await control(url, "gpu", "models_list", token=ADMIN)
            assert "tinyduck:1b" in [m["name"] for m in listed["models"]]
            loaded = await cli("models", "load", "tinyduck:1b", "--url", url)
            assert loaded.returncode == 0 and "loaded tinyduck:1b" in loaded.stdout.decode(), text(loaded)
            assert "tinyduck:1b" in upstream.loaded_models()
            # models list --live: the agent's own list, the loaded model marked.
            live = await cli("models", "list", "--live", "--json", "--url", url)
            assert live.returncode == 0, text(live)
            rows = {(r["provider"], r["model"]): r["note"] for r in json.loads(live.stdout)}
            assert rows[("gpu", "tinyduck:1b")].startswith("loaded")
            one = await cli("models", "list", "--live", "--provider", "gpu", "--url", url)
            assert one.returncode == 0 and "tinyduck:1b" in one.stdout.decode(), text(one)
            refused = await cli("models", "list", "--live", "--url", url, token=READ)
            assert refused.returncode != 0 and "admin" in refused.stderr.decode(), text(refused)
            unloaded = await cli("models", "unload", "tinyduck:1b", "--provider", "gpu", "--url", url)
            assert unloaded.returncode == 0, text(unloaded)
            pulled = await cli("models", "pull", "another:2b", "--url", url)  # followed to the end this time
            assert pulled.returncode == 0, text(pulled)
            lines = pulled.stdout.decode().splitlines()
            assert lines[-1] == "pulled another:2b into gpu" and lines[-2] == "gpu: success"
            assert [line.split()[3] for line in lines if "%" in line][-1] == "100.0%"


async def test_reload_from_the_command_line_and_on_sighup(tmp_path: Path) -> None:
    config = tmp_path / "duck.toml"
    config.write_text(GATEWAY + mock("a"))
    async with serving(config, tmp_path) as server:
        url = server.url
        config.write_text(GATEWAY + mock("a") + mock("b"))
        reloaded = await cli("reload", "--url", url)
        assert reloaded.returncode == 0, text(reloaded)
        assert reloaded.stdout.decode().strip() == "reloaded: added b"
        assert list(await agents(url)) == ["a", "b"]

        typo = '[[providers]]\nname = "k"\nkind = "mock"\nprioritty = 2\n'
        config.write_text(GATEWAY + mock("a") + typo)
        at_start = await cli("--config", str(config), "ask", "hi")  # what the same file says at start
        refused = await cli("reload", "--url", url)
        assert refused.returncode == 1
        assert at_start.stderr.decode().strip() in refused.stderr.decode()
        assert "prioritty" in refused.stderr.decode() and "Traceback" not in refused.stderr.decode()
        assert list(await agents(url)) == ["a", "b"]  # the running config keeps serving
        assert (await ask(url, "still?", token=ADMIN, out=io.StringIO())).content

        config.write_text(GATEWAY + mock("b", priority=3))
        mark = len(server.lines)
        server.process.send_signal(signal.SIGHUP)
        assert "removed a; changed b" in await server.line_with("reloaded:", after=mark)
        status = await agents(url)
        assert list(status) == ["b"]
