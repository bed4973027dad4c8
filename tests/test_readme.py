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
