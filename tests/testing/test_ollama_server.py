"""The official ``ollama`` Python client (sync, httpx) against our loopback Ollama server.

The server runs in its own Trio loop in a background thread; the test thread talks to it over real
loopback HTTP and reaches into it only through ``trio.from_thread`` (never touching its state directly).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from duckagents.messages import ToolCall
from duckagents.testing import Fault, OllamaServer, ScriptedReply, ThreadedServer

ollama = pytest.importorskip("ollama")


ThreadedOllama = ThreadedServer[OllamaServer]


@pytest.fixture(scope="module")
def threaded() -> Iterator[ThreadedOllama]:
    with ThreadedServer(OllamaServer()) as threaded:
        yield threaded


@pytest.fixture
def client(threaded: ThreadedOllama, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
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


def test_tool_calls(client: Any, threaded: ThreadedOllama) -> None:
    call = ToolCall("x", "get_weather", '{"city": "Paris", "days": 2}')
    threaded.call(threaded.server.script.push, ScriptedReply(tool_calls=(call,)))
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


def test_images_are_sent_as_base64(client: Any, threaded: ThreadedOllama) -> None:
    raw = b"\x89PNG\r\n\x1a\nnot-really-a-png"
    reply = client.chat(model="llava", messages=[{"role": "user", "content": "what?", "images": [raw]}])
    assert reply.message.content == "echo: what?"
    last = threaded.call(lambda: threaded.server.requests[-1].json())
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


def test_error_status_bodies_parse(client: Any, threaded: ThreadedOllama) -> None:
    threaded.call(threaded.server.inject, Fault(status=503, message="server busy"))
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503 and err.value.error == "server busy"
