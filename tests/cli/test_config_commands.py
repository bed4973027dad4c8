"""``duckagents config check`` and ``duckagents config init``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from duckagents.config import parse_config

from .support import ENV, one_line_error, run

SECRET = "sk-check-" + "4" * 30


def test_check_prints_the_resolved_config_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "duck.toml"
    config.write_text(
        '[router]\nmax_attempts = 2\n'
        '[[providers]]\nname = "gpt"\nkind = "openai"\napi_key_env = "CHECK_KEY"\n'
        'limits = { requests_per_minute = 500 }\n'
        '[[providers]]\nname = "claude"\nkind = "anthropic"\napi_key_env = "UNSET_KEY"\n'
        '[gateway]\n[[gateway.tokens]]\nenv = "CHECK_TOKEN"\nscopes = ["subscribe"]\n'
    )
    env = {**ENV, "CHECK_KEY": SECRET, "CHECK_TOKEN": SECRET + "-token"}
    result = run("--config", str(config), "config", "check", env=env)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    resolved = parse_config(tomllib.loads(result.stdout))  # the output is a valid config...
    assert resolved.router.max_attempts == 2 and resolved.router.backoff_max == 2.0  # ...defaults filled in
    assert resolved.providers[0].limits.requests == 500
    assert resolved.gateway.tokens[0].scopes == ("subscribe",)
    assert "#   CHECK_KEY (provider gpt): set" in result.stdout
    assert "#   UNSET_KEY (provider claude): NOT SET" in result.stdout
    assert "#   CHECK_TOKEN (gateway token (subscribe)): set" in result.stdout
    assert "valid: 2 provider(s); disabled: provider claude (UNSET_KEY is not set)" in result.stderr

    as_json = run("--config", str(config), "config", "check", "--json", env=env)
    data = json.loads(as_json.stdout)
    assert data["providers"][0]["api_key_env"] == "CHECK_KEY" and SECRET not in as_json.stdout
    assert {s["variable"]: s["set"] for s in data["secrets"]} == {
        "CHECK_KEY": True, "UNSET_KEY": False, "CHECK_TOKEN": True
    }


def test_check_of_the_embedded_default() -> None:
    result = run("config", "check")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in parse_config(tomllib.loads(result.stdout)).providers][-1] == "mock"
    assert "the embedded default is valid" in result.stderr


def test_check_of_an_invalid_file_exits_1_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[router]\nmax_atempts = 2\nbackoff_initial = nan\n')
    result = run("--config", str(config), "config", "check")
    assert result.returncode == 1
    message = one_line_error(result)
    assert "unknown key 'max_atempts' (did you mean 'max_attempts'?) @ $.router" in message
    assert "must be a finite number, got nan @ $.router.backoff_initial" in message


def test_init_writes_a_starter_that_runs_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "duckagents.toml"
    written = run("config", "init", str(path))
    assert written.returncode == 0, written.stderr
    config = parse_config(tomllib.loads(path.read_text()))
    assert [p.kind for p in config.providers] == ["mock"]
    asked = run("--config", str(path), "ask", "hello", "starter")
    assert asked.returncode == 0 and "You said: hello starter" in asked.stdout

    path.write_text("# mine\n")
    again = run("config", "init", str(path))
    assert again.returncode == 1 and "exists; not overwriting it" in one_line_error(again)
    assert path.read_text() == "# mine\n"
    forced = run("config", "init", str(path), "--force")
    assert forced.returncode == 0 and "[[providers]]" in path.read_text()


def test_the_starters_commented_providers_are_valid_when_uncommented(tmp_path: Path) -> None:
    path = tmp_path / "duckagents.toml"
    assert run("config", "init", str(path)).returncode == 0
    lines = []
    for line in path.read_text().splitlines():
        body = line.removeprefix("# ")
        # Uncomment the example blocks (TOML lines after "# "), keep the prose comments as comments.
        key = body.split(" = ")[0]
        looks_like_toml = body.startswith("[") or (" = " in body and key.isidentifier())
        lines.append(body if line.startswith("# ") and looks_like_toml else line)
    config = parse_config(tomllib.loads("\n".join(lines)))
    assert [p.kind for p in config.providers] == ["mock", "openai", "anthropic", "ollama"]
    assert config.providers[0].options["failures"][0]["count"] == 2
    assert config.gateway.tokens[0].env == "DUCKAGENTS_TOKEN"
