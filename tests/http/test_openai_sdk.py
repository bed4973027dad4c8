"""The official ``openai`` SDK (sync and async) against a ``duckagents serve --http`` subprocess, with the
loopback OpenAI, Anthropic and Ollama servers behind its router: what a user of any OpenAI client sees.

The upstream servers run on threads of the test process (their state is read through
``ThreadedServer.call``); the server under test is a real ``duckagents`` process on a free port.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from duckagents.messages import ToolCall
from duckagents.testing import (
    AnthropicServer,
    Fault,
    OllamaServer,
    OpenAIServer,
    ScriptedReply,
    StreamReply,
    ThreadedServer,
    sse,
)

from .support import sse_events

KEY = "sk-http-sdk-test-0123456789abcdef"
CHAT = "/v1/chat/completions"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DUCKAGENTS_")} | {"SDK_KEY": KEY}
# A 1x1 PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
STARTUP_TIMEOUT = 60.0


class Door:
    """The running server and its upstreams."""

    def __init__(
        self, url: str, upstreams: dict[str, ThreadedServer[Any]], proc: subprocess.Popen[str]
    ) -> None:
        self.url = url
        self.base_url = url + "/v1"
        self.upstreams = upstreams
        self.proc = proc

    def server(self, name: str) -> Any:
        return self.upstreams[name].server

    def call(self, name: str, fn: Any, *args: Any) -> Any:
        """Run ``fn`` in the upstream's own thread (its state is not thread-safe)."""
        return self.upstreams[name].call(fn, *args)

    def push(self, name: str, *replies: ScriptedReply) -> None:
        self.call(name, self.server(name).script.push, *replies)

    def inject(self, name: str, *faults: Fault) -> None:
        self.call(name, self.server(name).inject, *faults)

    def chat_requests(self, name: str) -> list[Any]:
        """Bodies of the chat requests the upstream received, oldest first."""
        recorded = self.call(name, lambda: list(self.server(name).requests))
        return [r.json() for r in recorded if r.path in (CHAT, "/v1/messages", "/api/chat")]

    def client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url, api_key="sk-unused", max_retries=0, timeout=20, **options
        )


def _config(upstreams: dict[str, ThreadedServer[Any]]) -> str:
    def provider(
        name: str, kind: str, url: str, models: list[str], priority: int = 0, key: bool = True
    ) -> str:
        lines = [
            "[[providers]]",
            f'name = "{name}"',
            f'kind = "{kind}"',
            f'base_url = "{url}"',
            f"models = {json.dumps(models)}",
            f'default_model = "{models[0]}"',
            f"priority = {priority}",
        ]
        if key:
            lines.append('api_key_env = "SDK_KEY"')
        return "\n".join(lines) + "\n"

    up = {name: server.server for name, server in upstreams.items()}
    return (
        "[router]\nmax_attempts = 2\nbackoff_initial = 0.0\nrequest_timeout = 20\n\n"
        + provider("gpt", "openai", up["gpt"].base_url, ["gpt-4o-mini"])
        + provider("claude", "anthropic", up["claude"].url, ["claude-sonnet-4-5"])
        + provider("llama", "ollama", up["llama"].url, ["llama3.2"], key=False)
        + provider("primary", "openai", up["primary"].base_url, ["gpt-4.1"], priority=0)
        + provider("backup", "openai", up["backup"].base_url, ["gpt-4.1"], priority=1)
        + provider("limited", "openai", up["limited"].base_url, ["gpt-4.1-mini"])
    )


def _wait_for_line(path: Path, needle: str, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {needle!r} from the server (exit {proc.poll()}): {path.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    servers: dict[str, Any] = {
        "gpt": OpenAIServer(api_key=KEY),
        "claude": AnthropicServer(api_key=KEY),
        "llama": OllamaServer(),
        "primary": OpenAIServer(api_key=KEY),
        "backup": OpenAIServer(api_key=KEY),
        "limited": OpenAIServer(api_key=KEY),
    }
    tmp = tmp_path_factory.mktemp("door")
    with ExitStack() as stack:
        upstreams = {name: stack.enter_context(ThreadedServer(s)) for name, s in servers.items()}
        config = tmp / "duckagents.toml"
        config.write_text(_config(upstreams))
        out, err = tmp / "stdout.txt", tmp / "stderr.txt"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "duckagents.cli",
                    "--config",
                    str(config),
                    "serve",
                    "--http",
                    "127.0.0.1:0",
                ],
                stdout=stdout,
                stderr=stderr,
                text=True,
                env=ENV,
            )
        try:
            url = _wait_for_line(out, "http listening on", proc).split()[-1]
            yield Door(url, upstreams, proc)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            finally:
                proc.kill()
        assert proc.returncode in (0, 130), err.read_text()[-3000:]
        assert "Traceback" not in err.read_text(), err.read_text()[-3000:]


# --- plain completions through each provider kind ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model"), [("gpt", "gpt-4o-mini"), ("claude", "claude-sonnet-4-5"), ("llama", "llama3.2")]
)
def test_plain_completion_through_each_provider_kind(door: Door, name: str, model: str) -> None:
    door.push(name, ScriptedReply(text=f"hello from {name}", prompt_tokens=11, completion_tokens=4))
    with door.client() as client:
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            max_tokens=50,
            temperature=0.2,
        )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == f"hello from {name}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model.startswith(model.split(":")[0])  # the model that answered
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    assert completion.usage.completion_tokens == 4 and completion.usage.total_tokens == 15
    sent = door.chat_requests(name)[-1]
    assert sent["messages"][-1]["content"] in ("hi", [{"type": "text", "text": "hi"}])


def test_streaming_text_with_usage(door: Door) -> None:
    door.push(
        "gpt",
        ScriptedReply(text="a streamed answer in pieces", chunk_size=3, prompt_tokens=5, completion_tokens=6),
    )
    with door.client() as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "a streamed answer in pieces"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 6)
    assert all(c.model == "gpt-4o-mini" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_streaming_tool_calls_assemble_like_openai(door: Door) -> None:
    call = ToolCall(id="call_weather_1", name="get_weather", arguments='{"city": "Paris", "unit": "celsius"}')
    door.push("gpt", ScriptedReply(tool_calls=(call,), chunk_size=5))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    with door.client() as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=tools,  # type: ignore[arg-type]
            tool_choice="auto",
            stream=True,
        )
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or ():
                    entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] += delta.id or ""
                    if delta.function is not None:
                        entry["name"] += delta.function.name or ""
                        entry["arguments"] += delta.function.arguments or ""
                finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {0: {"id": "call_weather_1", "name": "get_weather", "arguments": call.arguments}}
    sent = door.chat_requests("gpt")[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "auto"


def test_tools_round_trip_through_anthropic(door: Door) -> None:
    call = ToolCall(id="toolu_01", name="lookup", arguments='{"q": "ducks"}')
    door.push("claude", ScriptedReply(tool_calls=(call,)))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with door.client() as client:
        first = client.chat.completions.create(
            model="claude-sonnet-4-5",
            messages=[{"role": "user", "content": "find ducks"}],
            tools=tools,  # type: ignore[arg-type]
        )
        message = first.choices[0].message
        assert first.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls is not None and message.tool_calls[0].function.name == "lookup"
        assert json.loads(message.tool_calls[0].function.arguments) == {"q": "ducks"}
        door.push("claude", ScriptedReply(text="Found 3 ducks."))
        second = client.chat.completions.create(
            model="claude-sonnet-4-5",
            messages=[
                {"role": "user", "content": "find ducks"},
                message.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "3 ducks"},
            ],
            tools=tools,  # type: ignore[arg-type]
        )
    assert second.choices[0].message.content == "Found 3 ducks."
    sent = door.chat_requests("claude")[-1]
    assert sent["tools"][0]["name"] == "lookup"
    blocks = [b for m in sent["messages"] for b in (m["content"] if isinstance(m["content"], list) else [])]
    assert any(b.get("type") == "tool_result" and b.get("tool_use_id") == "toolu_01" for b in blocks)


def test_images_reach_a_vision_upstream(door: Door) -> None:
    door.push("claude", ScriptedReply(text="a tiny picture"))
    with door.client() as client:
        completion = client.chat.completions.create(
            model="claude-sonnet-4-5",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                }
            ],
        )
    assert completion.choices[0].message.content == "a tiny picture"
    content = door.chat_requests("claude")[-1]["messages"][-1]["content"]
    image = next(b for b in content if b["type"] == "image")
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}


def test_json_mode_reaches_the_upstream(door: Door) -> None:
    with door.client() as client:
        completion = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "answer in JSON"}],
            response_format={"type": "json_object"},
        )
    assert json.loads(completion.choices[0].message.content or "") == {"echo": "answer in JSON"}
    assert door.chat_requests("gpt")[-1]["response_format"] == {"type": "json_object"}


# --- failures ------------------------------------------------------------------------------------


def test_upstream_429_is_a_rate_limit_error_with_its_retry_after(door: Door) -> None:
    # retry-after beyond the request's deadline (20 s): the router cannot wait it out, so it says so.
    door.inject("limited", Fault(status=429, headers={"retry-after": "30"}, path=CHAT))
    with door.client() as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 429
    assert 29 <= int(info.value.response.headers["retry-after"]) <= 30
    assert info.value.type == "rate_limited" and info.value.code == "rate_limit_exceeded"


def test_unknown_model_is_not_found(door: Door) -> None:
    with door.client() as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-99-turbo", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with door.client() as client:
        listed = sorted(m.id for m in client.models.list())
        assert listed == sorted(["gpt-4o-mini", "claude-sonnet-4-5", "llama3.2", "gpt-4.1", "gpt-4.1-mini"])
        assert client.models.retrieve("gpt-4.1").owned_by == "primary"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-99-turbo")


def test_failover_is_invisible_to_the_client(door: Door) -> None:
    before = len(door.chat_requests("primary"))
    door.inject("primary", Fault(status=503, path=CHAT))
    door.push("backup", ScriptedReply(text="the backup answered"))
    with door.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
        )
        completion = raw.parse()
    assert raw.status_code == 200 and completion.choices[0].message.content == "the backup answered"
    assert completion.model == "gpt-4.1"
    assert len(door.chat_requests("primary")) == before + 1  # it was tried, and failed
    assert raw.headers["x-duckagents-provider"] == "backup"


def test_a_stream_cut_upstream_after_chunks_fails_with_an_error_event(door: Door) -> None:
    door.push("gpt", ScriptedReply(text="this answer will be cut short", chunk_size=2))
    door.inject("gpt", Fault(cut_after=4, path=CHAT))
    with door.client() as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        received = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received.append(chunk)
    assert received, "chunks before the cut reach the client"
    assert "protocol" in str(info.value) or "network" in str(info.value)


def test_closing_the_stream_cancels_the_upstream_request(door: Door) -> None:
    pulled = [0]
    total = 400

    async def pieces() -> AsyncIterator[bytes]:
        head = {
            "id": "chatcmpl-slow",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
        }
        for i in range(total):
            pulled[0] += 1
            delta = {"role": "assistant", "content": f"w{i} "} if i == 0 else {"content": f"w{i} "}
            yield sse(None, {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        yield b"data: [DONE]\n\n"

    slow = StreamReply(pieces(), headers={"content-type": "text/event-stream"}, interval=0.05)
    aborted_before = door.call("gpt", lambda: door.server("gpt").loopback.aborted)
    door.inject("gpt", Fault(reply=slow, path=CHAT))
    with door.client() as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "tell me everything"}], stream=True
        )
        got = [chunk for _, chunk in zip(range(3), stream, strict=False)]
        stream.close()
    assert [c.choices[0].delta.content for c in got] == ["w0 ", "w1 ", "w2 "]
    deadline = time.monotonic() + 10
    while door.call("gpt", lambda: door.server("gpt").loopback.aborted) == aborted_before:
        assert time.monotonic() < deadline, "the upstream request was never cancelled"
        time.sleep(0.05)
    stopped_at = pulled[0]
    time.sleep(0.5)
    assert pulled[0] == stopped_at < total  # nothing more is produced for a client that left
    metrics = httpx.get(door.url + "/metrics").text
    assert 'kind="cancelled"' in metrics


# --- the async client --------------------------------------------------------------------------------


async def test_async_client_plain_and_streaming(door: Door) -> None:
    # From a Trio task the upstream's thread is reached through a worker thread.
    await trio.to_thread.run_sync(
        door.push, "gpt", ScriptedReply(text="async hello"), ScriptedReply(text="async stream", chunk_size=2)
    )
    async with openai.AsyncOpenAI(base_url=door.base_url, api_key="sk-unused", max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "async hello"
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == "async stream"
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


async def test_async_client_cancelled_mid_stream(door: Door) -> None:
    await trio.to_thread.run_sync(door.push, "gpt", ScriptedReply(text="x" * 400, chunk_size=1))
    async with openai.AsyncOpenAI(base_url=door.base_url, api_key="sk-unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for _ in stream:
            break
        await stream.close()
    # The server is unharmed: the next request is served.
    async with openai.AsyncOpenAI(base_url=door.base_url, api_key="sk-unused", max_retries=0) as client:
        await trio.to_thread.run_sync(door.push, "gpt", ScriptedReply(text="still here"))
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content == "still here"


def test_curl_level_stream_is_well_formed_sse(door: Door) -> None:
    door.push("llama", ScriptedReply(text="sse by hand", chunk_size=4))
    body = {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(door.base_url + "/chat/completions", json=body, timeout=20)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert (
        "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
        == "sse by hand"
    )
