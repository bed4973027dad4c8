"""The README's examples run as written (config parses, embedding example works on the mock)."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from duckagents.config import parse_config

README = (Path(__file__).parent.parent / "README.md").read_text()


def _block(lang: str, after: str) -> str:
    section = README[README.index(after) :]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block after {after!r}"
    return match.group(1)


def test_config_example_is_valid() -> None:
    import tomllib

    config = parse_config(tomllib.loads(_block("toml", "## Configuration")))
    assert [p.kind for p in config.providers] == ["openai", "anthropic", "ollama", "mock"]
    assert config.router.strategy == "priority"
    # The models key is shown, and the mock is a fallback only because the chain names it.
    gpt, backup = config.providers[0], config.providers[3]
    assert gpt.models and gpt.serves("gpt-4o") and not backup.serves("gpt-4o-mini")
    assert config.models["gpt-4o-mini"].fallbacks == ("claude-sonnet-4-6", "llama3.2", "mock-1")


def test_embedding_example_runs_on_the_embedded_default(capsys) -> None:  # type: ignore[no-untyped-def]
    code = _block("python", "## Embedding it in a Trio application")
    # Same code, on the embedded default instead of a config file, and without the last trio.run().
    code = code.replace('open_router("duckagents.toml")', "open_router(None)").replace("trio.run(main)", "")
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trio.run(namespace["main"])  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "You said: Name three ducks." in out and "mock" in out
    assert "FinishReason.STOP" in out or "stop" in out


async def test_testing_example_fault_reaches_a_duckagents_router() -> None:
    """README 'Testing your own application': inject a 429 and see it come back through the router."""
    import pytest

    from duckagents import ErrorKind, ProviderError, open_router
    from duckagents.config import Config, ProviderConfig, RouterConfig
    from duckagents.testing import Fault, ScriptedReply, open_openai_server

    async with open_openai_server() as upstream:
        config = Config(
            providers=(
                ProviderConfig(
                    name="gpt", kind="openai", base_url=upstream.base_url, api_key_env="TEST_KEY",
                    default_model="gpt-4o-mini",
                ),
            ),
            router=RouterConfig(max_attempts=1),
        )
        async with open_router(config, environ={"TEST_KEY": "sk-test-0123456789abcdef"}) as router:
            upstream.inject(Fault(status=429, headers={"retry-after": "1"}))
            with pytest.raises(ProviderError) as info:
                await router.complete("hi")
            assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.retry_after == 1.0
            upstream.script.push(ScriptedReply(text="scripted!"))
            await trio.sleep(1.2)  # the limiter honours retry-after before admitting again
            assert (await router.complete("hi")).content == "scripted!"
        assert any(r.path == "/v1/chat/completions" for r in upstream.requests)


def test_http_front_door_examples_run_against_serve_http() -> None:
    """README 'The HTTP front door': the curl request and the openai SDK snippet, against a real
    ``duckagents serve --http`` (on a free port instead of 8080)."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    section = "## The HTTP front door"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKAGENTS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "duckagents.cli", "serve", "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        url = ""
        while not url and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "http listening on" in line:
                url = line.split()[-1]
        assert url, "serve --http did not start"
        found = re.search(r"```bash\n(curl .*?)```", README[README.index(section) :], re.S)
        assert found
        curl = found.group(1)
        body = re.search(r"-d '(.*)'", curl, re.S)
        assert body and "http://127.0.0.1:8080/v1/chat/completions" in curl
        answer = httpx.post(f"{url}/v1/chat/completions", content=body.group(1), timeout=20)
        assert "You said: hello" in answer.json()["choices"][0]["message"]["content"]
        code = _block("python", section).replace("http://127.0.0.1:8080", url)
        printed: list[str] = []
        namespace: dict[str, object] = {"print": lambda *a, **k: printed.append("".join(map(str, a)))}
        exec(compile(code, "README.md", "exec"), namespace)
        assert "You said: Why Trio?" in "".join(printed)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
