"""The official ``ollama`` Python client (sync, httpx) against our loopback Ollama server.

The server runs in its own Trio loop in a background thread; the test thread talks to it over real
loopback HTTP and reaches into it only through ``trio.from_thread`` (never touching its state directly).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import pytest
import trio

from duckagents.messages import ToolCall
from duckagents.testing._script import ScriptedReply
from duckagents.testing._server import Fault
from duckagents.testing.ollama import OllamaServer, open_ollama_server

ollama = pytest.importorskip("ollama")

T = TypeVar("T")


class ThreadedServer:
    """An :class:`OllamaServer` in a Trio loop on a daemon thread; ``with`` starts and stops it."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._error: BaseException | None = None
        self.server: OllamaServer | None = None

    async def _main(self) -> None:
        try:
            async with open_ollama_server(**self._options) as server:
                self.server, self._token, self._stop = (
                    server,
                    trio.lowlevel.current_trio_token(),
                    trio.Event(),
                )
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # surfaced to the test thread by __enter__
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None or self.server is None:
            raise RuntimeError(f"loopback server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.call(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` inside the server's Trio loop (thread-safe access to its state)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url


@pytest.fixture(scope="module")
def threaded() -> Iterator[ThreadedServer]:
    with ThreadedServer() as threaded:
        yield threaded


@pytest.fixture
def client(threaded: ThreadedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)  # the client would send it as a bearer token
    with ollama.Client(host=threaded.url, timeout=10) as client:
        yield client


def test_chat(client: Any) -> None:
    reply = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi there"}])
    assert reply.message.role == "assistant" and reply.message.content == "echo: hi there"
    assert reply.done and reply.done_reason == "stop"
    assert reply.prompt_eval_count == 2 and reply.eval_count == 4
    assert reply.total_duration and reply.eval_duration and reply.model == "llama3.2:latest"


def test_streamed_chat(client: Any) -> None:
    parts = list(
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "stream me"}], stream=True)
    )
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts) == "echo: stream me"
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == len(parts) - 1


def test_tool_calls(client: Any, threaded: ThreadedServer) -> None:
    call = ToolCall("x", "get_weather", '{"city": "Paris", "days": 2}')
    threaded.call(threaded.server.script.push, ScriptedReply(tool_calls=(call,)))  # type: ignore[union-attr]
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    reply = client.chat(model="llama3.2", messages=[{"role": "user", "content": "weather?"}], tools=[tool])
    calls = reply.message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert dict(calls[0].function.arguments) == {"city": "Paris", "days": 2}


def test_images_are_sent_as_base64(client: Any, threaded: ThreadedServer) -> None:
    raw = b"\x89PNG\r\n\x1a\nnot-really-a-png"
    reply = client.chat(model="llava", messages=[{"role": "user", "content": "what?", "images": [raw]}])
    assert reply.message.content == "echo: what?"
    last = threaded.call(lambda: threaded.server.requests[-1].json())  # type: ignore[union-attr]
    assert last["messages"][0]["images"] == [base64.b64encode(raw).decode()]


def test_list_show_and_ps(client: Any) -> None:
    models = client.list().models
    assert [m.model for m in models][:3] == ["llama3.2:latest", "llava:latest", "gemma:2b"]
    assert (
        models[0].size and models[0].details.family == "llama" and isinstance(models[0].modified_at, datetime)
    )
    shown = client.show("llama3.2")
    assert shown.modelinfo["llama.context_length"] == 131072 and "tools" in shown.capabilities
    assert shown.details.quantization_level == "Q4_K_M"
    client.chat(model="gemma:2b", messages=[{"role": "user", "content": "load me"}])
    running = {m.model: m for m in client.ps().models}
    assert "gemma:2b" in running and isinstance(running["gemma:2b"].expires_at, datetime)
    assert running["gemma:2b"].size_vram == running["gemma:2b"].size


def test_keep_alive_load_and_unload_show_in_ps(client: Any) -> None:
    loaded = client.generate(model="llava", keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load"
    assert "llava:latest" in [m.model for m in client.ps().models]
    unloaded = client.generate(model="llava", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert "llava:latest" not in [m.model for m in client.ps().models]


def test_generate_stream(client: Any) -> None:
    parts = list(client.generate(model="llama3.2", prompt="say it", stream=True))
    assert "".join(p.response for p in parts) == "echo: say it" and parts[-1].done


def test_pull_progress(client: Any) -> None:
    progress = list(client.pull("tinyllama:1b", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    downloads = [p for p in progress if p.total]
    assert (
        downloads
        and downloads[-1].completed == downloads[-1].total
        and downloads[0].digest.startswith("sha256:")
    )
    assert "tinyllama:1b" in [m.model for m in client.list().models]
    assert client.pull("tinyllama:1b").status == "success"  # non-streamed pull


def test_missing_model_is_404(client: Any) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404 and err.value.error == "model 'nope' not found"
    with pytest.raises(ollama.ResponseError) as shown:
        client.show("nope")
    assert shown.value.status_code == 404


def test_error_status_bodies_parse(client: Any, threaded: ThreadedServer) -> None:
    threaded.call(threaded.server.inject, Fault(status=503, message="server busy"))  # type: ignore[union-attr]
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503 and err.value.error == "server busy"
