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
