"""CLI habits: --version, python -m, --config anywhere, prompts from words or stdin, logging, completion,
one-line usage errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from duckagents import __version__

from .support import ENV, one_line_error, run

FAILING = (
    '[router]\nmax_attempts = 1\n[[providers]]\nname = "flaky"\nkind = "mock"\n'
    'options = { failures = [{ kind = "upstream_5xx", count = 5 }] }\n'
)


def test_version_and_module_entry_points() -> None:
    assert run("--version").stdout.strip() == f"duckagents {__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "duckagents.cli", "--version"], capture_output=True, text=True, env=ENV,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == f"duckagents {__version__}"


def test_help_documents_the_exit_codes() -> None:
    result = run("--help")
    assert result.returncode == 0
    for line in ("0    ok", "2    usage error", "3    the request failed", "4    the server (--url) is"):
        assert line in result.stdout
    assert "exit codes:" in run("ask", "--help").stdout


def test_unquoted_words_and_stdin_make_the_prompt() -> None:
    words = run("ask", "hello", "there", "duck")
    assert words.returncode == 0, words.stderr
    assert words.stdout.strip().endswith("You said: hello there duck")
    piped = run("ask", "-", stdin="from a pipe\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip().endswith("You said: from a pipe")
    empty = run("ask", "-", stdin="")
    assert empty.returncode == 2 and "stdin held no prompt" in one_line_error(empty)


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_config_before_or_after_the_command_or_from_the_environment(tmp_path: Path, where: str) -> None:
    config = tmp_path / "failing.toml"
    config.write_text(FAILING)
    if where == "before":
        result = run("--config", str(config), "ask", "hi")
    elif where == "after":
        result = run("ask", "hi", "--config", str(config))
    else:
        result = run("ask", "hi", env={**ENV, "DUCKAGENTS_CONFIG": str(config)})
    # The failing mock of the file answered, not the embedded default.
    assert result.returncode == 3, result.stderr
    assert "upstream_5xx" in one_line_error(result)


def test_a_config_given_before_the_command_is_not_reset_by_it(tmp_path: Path) -> None:
    config = tmp_path / "failing.toml"
    config.write_text(FAILING)
    result = run("-c", str(config), "--log-level", "info", "ask", "hi")
    assert result.returncode == 3


def test_json_logs_are_one_object_per_line_and_never_hold_a_secret(tmp_path: Path) -> None:
    key = "sk-test-" + "9" * 32
    config = tmp_path / "keyed.toml"
    config.write_text('[[providers]]\nname = "m"\nkind = "mock"\napi_key_env = "MOCK_KEY"\n')
    result = run(
        "--log-format", "json", "--log-level", "debug", "--config", str(config), "ask", "hi",
        env={**ENV, "MOCK_KEY": key},
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["logger"] == "duckagents.cli" for line in lines)
    assert key not in result.stderr and key not in result.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_completion_scripts_cover_the_commands(shell: str) -> None:
    result = run("completion", shell)
    assert result.returncode == 0, result.stderr
    for command in ("ask", "status", "serve", "watch", "--config"):
        assert command in result.stdout


def test_bash_completion_script_is_valid_bash(tmp_path: Path) -> None:
    script = tmp_path / "duckagents.bash"
    script.write_text(run("completion", "bash").stdout)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ask", "--max-tokens", "-5", "hi"], "--max-tokens: must be from 1"),
        (["ask", "--timeout", "nan", "hi"], "--timeout: must be a finite number of seconds > 0, got 'nan'"),
        (["ask", "--timeout", "-1", "hi"], "--timeout: must be a finite number"),
        (["serve", "--port", "70000"], "--port: a port is 0 to 65535"),
        (["serve", "--port", "-1"], "--port: a port is 0 to 65535"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["ask"], "the following arguments are required: PROMPT"),
        (["ask", "hi", "--url", "http://127.0.0.1:8765/"], "takes a ws:// or wss:// URL"),
        (["ask", "hi", "--url", "127.0.0.1:8765"], "takes a ws:// or wss:// URL"),
        (["watch", "--url", "http://127.0.0.1:8765/"], "that is an HTTP URL; the gateway speaks WebSocket"),
        (["watch", "--type", "provider_reply"], "invalid choice: 'provider_reply'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert fragment in one_line_error(result)


def test_watch_lists_the_known_types_when_one_is_unknown() -> None:
    message = one_line_error(run("watch", "--type", "nope"))
    for known in ("provider_request", "provider_response", "provider_status", "supervisor_event"):
        assert known in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('[[providers]]\nname = "m"\nkind = "mock"\nbreaker = { open_timeout = nan }\n',
         "must be a finite number, got nan @ $.providers[0].breaker.open_timeout"),
        ("health_interval = -1\n", "health_interval must be a finite number > 0, got -1"),
        ("[router]\nrequest_timeout = -1\n", "request_timeout must be a finite number > 0, got -1"),
        ("[router]\nbackoff_initial = -0.5\n", "backoff_initial must be a finite number >= 0, got -0.5"),
        ("[router]\nbackoff_max = inf\n", "must be a finite number, got inf @ $.router.backoff_max"),
        ('[[providers]]\nname = "m"\nkind = "mock"\noptions = { latency = -2 }\n',
         "latency must be a finite number of seconds >= 0, got -2"),
        ('[[providers]]\nname = "m"\nkind = "mock"\noptions = { chunk_size = 0 }\n',
         "chunk_size must be a finite number >= 1, got 0 @ $.providers[0].options"),
        ('[[providers]]\nname = ""\nkind = "mock"\n', "name must not be empty @ $.providers[0]"),
        ("[gateway]\nport = 70000\n", "port must be a TCP port from 0 to 65535, got 70000"),
        ("[gateway]\nprot = 8000\n", "unknown key 'prot' (did you mean 'port'?) @ $.gateway"),
    ],
)
def test_bad_config_values_are_one_line_exit_1(tmp_path: Path, content: str, fragment: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    result = run("--config", str(config), "status")
    assert result.returncode == 1, result.stderr
    assert fragment in one_line_error(result)


def test_a_directory_or_a_binary_file_as_config_is_one_line(tmp_path: Path) -> None:
    as_dir = run("--config", str(tmp_path), "ask", "hi")
    assert as_dir.returncode == 1 and f"{tmp_path} is a directory" in one_line_error(as_dir)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    as_binary = run("ask", "hi", env={**ENV, "DUCKAGENTS_CONFIG": str(binary)})
    assert as_binary.returncode == 1 and "not UTF-8 text" in one_line_error(as_binary)


def test_models_and_providers_of_the_embedded_default() -> None:
    models = run("models")
    assert models.returncode == 0, models.stderr
    assert models.stdout.splitlines()[2].split() == ["mock", "mock-1", "default"]
    assert run("models", "list", "--json").stdout.count('"provider": "mock"') == 1
    providers = json.loads(run("providers", "--json").stdout)
    assert providers[0]["provider"] == "mock" and providers[0]["features"]["streaming"] is True
