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


def test_testing_example_runs_as_written_and_its_fault_reaches_the_call() -> None:
    """README 'Testing your own application': the example is a test; run it as written. It passes only if
    the injected 429 reaches the chat call (not the agent's startup health probe)."""
    code = _block("python", "## Testing your own application")
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trio.run(namespace["test_my_app_sees_the_rate_limit"])  # type: ignore[arg-type]


def test_testing_example_would_fail_if_the_fault_missed_the_call() -> None:
    """The example's check has teeth: the fault as the README used to inject it (before the router starts,
    for any path) is consumed by the agent's startup health probe, the call succeeds, the example fails."""
    import pytest

    code = _block("python", "## Testing your own application")
    fault = 'Fault(status=429, headers={"retry-after": "2"}'
    inject = f'            upstream.inject({fault}, path="/v1/chat/completions"))\n'
    assert inject in code
    opening = "        async with open_router("
    old_way = code.replace(inject, "").replace(opening, f"        upstream.inject({fault}))\n{opening}")
    namespace: dict[str, object] = {}
    exec(compile(old_way, "README.md", "exec"), namespace)
    with pytest.raises(BaseException) as failed:  # pytest's Failed, inside a nursery's exception group
        trio.run(namespace["test_my_app_sees_the_rate_limit"])  # type: ignore[arg-type]
    leaf = failed.value
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, pytest.fail.Exception) and "DID NOT RAISE" in str(leaf)


def test_quick_start_has_a_venv_step_and_the_ci_test_command() -> None:
    quick = README[README.index("## Quick start") : README.index("## What you get")]
    assert "Python 3.11 or newer" in quick
    commands = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert commands[0].startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert commands[1].strip() == 'python3 -m pip install -e . && duckagents ask "hello"'
    assert commands[2].strip() == "python3 -m pip install nox && nox -s tests"
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "python3 -m pip install --quiet --disable-pip-version-check nox" in ci
    assert ci.rstrip().endswith("nox -s tests")


def test_config_example_shows_the_models_key() -> None:
    import tomllib

    config = parse_config(tomllib.loads(_block("toml", "## Configuration")))
    assert config.providers[0].models == ("gpt-4o*", "gpt-4.1*")


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
        [sys.executable, "-m", "duckagents", "serve", "--http", "127.0.0.1:0"],
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
