"""The ``duckagents`` command, run as a real subprocess (real sockets for serve / watch / ask --url)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .support import Process, one_line_error, run, serve


def test_ask_streams_the_mock_answer_with_no_config_and_no_keys() -> None:
    result = run("ask", "hello", "-v")
    assert result.returncode == 0, result.stderr
    assert "You said: hello" in result.stdout
    assert "[mock/mock-1]" in result.stderr and "finish=stop" in result.stderr


def test_ask_for_a_misspelt_model_exits_3_with_the_suggestion() -> None:
    result = run("ask", "--model", "mock1", "hello", "-v")
    assert result.returncode == 3  # the request failed (no_provider)
    assert "[no_provider" in result.stderr and "did you mean 'mock-1'?" in result.stderr
    assert result.stdout.strip() == ""  # no other model answered in its place


def test_ask_without_streaming() -> None:
    result = run("ask", "--no-stream", "plain please")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("You said: plain please")


def test_status_and_providers_print_tables() -> None:
    status = run("status")
    assert status.returncode == 0, status.stderr
    header, rule, row = status.stdout.splitlines()[:3]
    assert header.split()[:4] == ["provider", "state", "health", "breaker"] and set(rule) <= {"-", " "}
    assert row.split()[:4] == ["mock", "up", "1.00", "closed"]
    providers = run("providers")
    assert providers.returncode == 0, providers.stderr
    assert providers.stdout.splitlines()[2].split()[:2] == ["mock", "mock-1"]


def test_failed_request_exits_3_with_the_error_kind(tmp_path: Path) -> None:
    config = tmp_path / "failing.toml"
    config.write_text(
        '[router]\nmax_attempts = 1\n[[providers]]\nname = "flaky"\nkind = "mock"\n'
        'options = { failures = [{ kind = "upstream_5xx", count = 5 }] }\n'
    )
    result = run("--config", str(config), "ask", "hi")
    assert result.returncode == 3
    assert "request failed" in result.stderr and "upstream_5xx" in result.stderr


def test_bad_config_exits_1_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[providers]]\nname = "x"\nkind = "mock"\nmax_concurency = 2\n')
    result = run("--config", str(config), "ask", "hi")
    assert result.returncode == 1
    assert "unknown key 'max_concurency' (did you mean 'max_concurrency'?)" in one_line_error(result)
    result = run("--config", str(tmp_path / "absent.toml"), "status")
    assert result.returncode == 1 and "not found" in one_line_error(result)


def test_a_missing_api_key_disables_only_that_provider(tmp_path: Path) -> None:
    config = tmp_path / "keys.toml"
    config.write_text(
        '[[providers]]\nname = "gpt"\nkind = "openai"\napi_key_env = "NOPE_NOT_SET"\npriority = 0\n'
        '[[providers]]\nname = "backup"\nkind = "mock"\npriority = 5\nmodels = ["*"]\n'
    )
    asked = run("--config", str(config), "ask", "hi", "-v")
    assert asked.returncode == 0, asked.stderr
    assert "[backup/" in asked.stderr
    assert "provider 'gpt' is disabled: NOPE_NOT_SET is not set" in asked.stderr
    status = run("--config", str(config), "status", "--json", "--check")
    assert status.returncode == 5, status.stderr
    agents = {a["provider"]: a for a in json.loads(status.stdout)}
    assert agents["gpt"]["state"] == "down" and agents["gpt"]["reason"] == "NOPE_NOT_SET is not set"
    assert agents["backup"]["state"] == "up" and agents["backup"]["breaker_state"] == "closed"


def test_serve_gateway_watch_and_ask_see_each_other() -> None:
    """The README's three-terminal demo: serve --gateway, watch, and ask --url flowing by."""
    server, url = serve()
    try:
        types = ["--type", "provider_request", "--type", "provider_response"]
        watch = Process(["watch", "--url", url, *types, "--limit", "2"])
        try:
            watch.line_with("watching", stderr=True)
            asked = run("ask", "--url", url, "ducks in a row", "-v")
            assert asked.returncode == 0, asked.stderr
            assert "You said: ducks in a row" in asked.stdout
            lines = watch.rest()
            assert watch.stop() == 0
        finally:
            watch.stop(signal.SIGKILL)
        # Each request once: its intake and its final result, not the attempt's own signals.
        assert len(lines) == 2, lines
        assert "provider_request" in lines[0] and "ducks in a row" in lines[0]
        assert "provider_response" in lines[1] and "#" not in lines[1]
    finally:
        assert server.stop() in (0, 130)


@pytest.mark.parametrize(
    "args", [["watch", "--url", "ws://127.0.0.1:9/"], ["ask", "--url", "ws://127.0.0.1:9/", "x"]]
)
def test_unreachable_gateway_is_a_clear_error(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 4
    assert "cannot connect" in result.stderr and "connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_pull_shows_progress_from_a_loopback_ollama(tmp_path: Path) -> None:
    from duckagents.testing import OllamaServer, ThreadedServer

    with ThreadedServer(OllamaServer(pull_chunks=4)) as upstream:
        config = tmp_path / "local.toml"
        config.write_text(f'[[providers]]\nname = "gpu"\nkind = "ollama"\nbase_url = "{upstream.url}"\n')
        result = run("--config", str(config), "pull", "tinyduck:1b")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "gpu: pulling manifest"
    shares = [line for line in lines if "%" in line]
    assert [line.split()[3] for line in shares] == ["25.0%", "50.0%", "75.0%", "100.0%"]
    assert lines[-2] == "gpu: success" and lines[-1] == "pulled tinyduck:1b into gpu"


def test_pull_without_a_local_provider_is_a_clear_error() -> None:
    result = run("pull", "x")
    assert result.returncode == 1 and "no local (ollama) provider" in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("70000", "invalid port '70000'"),
        ("-1", "invalid port"),
        ("localhost:http", "invalid port 'http'"),
        ("::1:8080", "IPv6 hosts go in brackets"),
        (":8080", "invalid host"),
        ("[::1]8080", "invalid address"),
    ],
)
def test_serve_http_rejects_a_bad_address_with_a_usage_error(value: str, message: str) -> None:
    result = run("serve", f"--http={value}", timeout=30)
    assert result.returncode == 2
    assert "--http" in result.stderr and message in one_line_error(result)


def test_serve_http_on_a_busy_port_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--http", f"127.0.0.1:{port}", timeout=30)
    assert result.returncode == 1
    assert f"http: cannot listen on 127.0.0.1:{port}" in one_line_error(result)


def test_serve_http_answers_curl_and_stops_on_sigint() -> None:
    import httpx

    serve = Process(["serve", "--http", "127.0.0.1:0", "--gateway", "--port", "0"])
    try:
        url = serve.line_with("http listening on").split()[-1]
        assert url.startswith("http://127.0.0.1:")
        serve.line_with("gateway listening on")
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        body = {"model": "mock-1", "messages": [{"role": "user", "content": "curl me"}]}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=20).json()
        assert "You said: curl me" in answer["choices"][0]["message"]["content"]
        assert "duckagents_gateway_connections" in httpx.get(f"{url}/metrics").text
    finally:
        code = serve.stop()
    assert code in (0, 130)


def test_serve_serves_the_dashboard_unless_turned_off(tmp_path: Path) -> None:
    import httpx

    config = tmp_path / "quiet.toml"
    for dashboard, status in (("true", 200), ("false", 426)):
        config.write_text(f'[gateway]\ndashboard = {dashboard}\n[[providers]]\nname = "m"\nkind = "mock"\n')
        process, url = serve(config)
        try:
            page = httpx.get("http" + url.removeprefix("ws"), timeout=10)
            assert page.status_code == status
            if status == 200:
                assert "dashboard.js" in page.text
                assert process.line_with("dashboard at").split()[-1] == "http" + url.removeprefix("ws")
        finally:
            process.stop()


def test_top_refuses_a_silly_refresh_rate() -> None:
    result = run("top", "--refresh", "0")
    assert result.returncode == 2 and "between 0.1 and 60" in result.stderr
