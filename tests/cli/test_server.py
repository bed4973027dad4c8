"""The CLI against one running ``duckagents serve --gateway`` (token-protected, two mock providers, the
first failing once): ask -v shows the failover, status --url sees the server's breaker, serve prints
health changes only, watch shows each request once (attempts indented with --attempts), and every way of
not reaching a server is one clear line with exit code 4."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ENV, Process, one_line_error, run, serve

TOKEN = "cli-test-token-" + "5" * 20
CONFIG = """
health_interval = 0.3

[router]
max_attempts = 2
backoff_initial = 0
backoff_max = 0

[[providers]]
name = "flaky"
kind = "mock"
default_model = "mock-1"
priority = 0
breaker = { failure_threshold = 1, open_timeout = 600 }
options = { failures = [{ kind = "upstream_5xx", count = 1 }] }

[[providers]]
name = "backup"
kind = "mock"
default_model = "mock-1"
models = ["mock-1", "mock-2"]
priority = 5

[gateway]
[[gateway.tokens]]
env = "CLI_TEST_TOKEN"
"""
CLIENT = {**ENV, "DUCKAGENTS_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str]]:
    """The server and its gateway's ws:// URL; the HTTP front door's http:// URL is :data:`HTTP_URL`."""
    config = tmp_path_factory.mktemp("server") / "duck.toml"
    config.write_text(CONFIG)
    process, url = serve(config, "--http", "127.0.0.1:0", env={**ENV, "CLI_TEST_TOKEN": TOKEN})
    HTTP_URL[:] = [next(line for line in process.seen if "http listening on" in line).split()[-1]]
    try:
        yield process, url
    finally:
        process.stop()


HTTP_URL: list[str] = []


def test_failover_is_visible_end_to_end(server: tuple[Process, str]) -> None:
    process, url = server
    types = ["--type", "provider_request", "--type", "provider_response", "--type", "provider_error"]
    plain = Process(["watch", "--url", url, *types, "--limit", "2"], env=CLIENT)
    attempts = Process(["watch", "--url", url, *types, "--attempts", "--limit", "6"], env=CLIENT)
    try:
        plain.line_with("watching", stderr=True)
        attempts.line_with("watching", stderr=True)

        # ask -v: each attempt, then the summary.
        asked = run("ask", "--url", url, "-v", "fail", "over", env=CLIENT)
        assert asked.returncode == 0, asked.stderr
        assert "You said: fail over" in asked.stdout
        lines = asked.stderr.strip().splitlines()
        assert re.fullmatch(r"attempt 1: flaky/mock-1 upstream_5xx in [0-9.]+ ms", lines[0]), lines
        assert re.fullmatch(r"attempt 2: backup/mock-1 ok in [0-9.]+ ms", lines[1]), lines
        assert lines[2].startswith("[backup/mock-1]")

        # watch: each request once; with --attempts, its attempts indented under it.
        shown = plain.rest()
        assert [line.split()[1] for line in shown] == ["provider_request", "provider_response"]
        detailed = attempts.rest()
        assert [line.startswith("    ") for line in detailed] == [False, True, True, True, True, False]
        assert "flaky" in detailed[1] and "upstream_5xx" in detailed[2] and "backup" in detailed[3]
        assert plain.stop() == 0 and attempts.stop() == 0
    finally:
        plain.stop(signal.SIGKILL)
        attempts.stop(signal.SIGKILL)

    # status --url sees the running server: flaky's breaker is open (a fresh tree would say closed).
    status = run("status", "--url", url, "--json", "--wait", "10", env=CLIENT)
    assert status.returncode == 0, status.stderr
    agents = {a["provider"]: a for a in json.loads(status.stdout)}
    assert agents["flaky"]["breaker_state"] == "open" and agents["flaky"]["state"] == "down"
    assert agents["flaky"]["reason"] == "circuit breaker open"
    assert agents["backup"]["breaker_state"] == "closed"
    assert agents["backup"]["metrics"]["total_requests"] == 1
    table = run("status", "--url", url, "--wait", "10", env=CLIENT)
    assert re.search(r"^flaky +down .* open ", table.stdout, re.M), table.stdout
    checked = run("status", "--url", url, "--check", "--wait", "10", env=CLIENT)
    assert checked.returncode == 5, checked.stderr

    # serve printed each provider's health when known, then only the change: many health intervals
    # passed, yet one line per state.
    process.line_with("flaky down: circuit breaker open")
    time.sleep(1.5)  # five health intervals
    process.available()
    health = [line.split()[1:3] for line in process.seen if " up (" in line or " down: " in line]
    assert health == [["flaky", "up"], ["backup", "up"], ["flaky", "down:"]], process.seen


def test_status_and_models_through_the_http_front_door(server: tuple[Process, str]) -> None:
    _, url = server
    http = HTTP_URL[0]
    run("ask", "--url", url, "make", "sure", "the", "breaker", "opened", env=CLIENT)  # if run alone
    status = run("status", "--url", http, "--json", env=CLIENT)
    assert status.returncode == 0, status.stderr
    agents = {a["provider"]: a for a in json.loads(status.stdout)}
    assert agents["flaky"]["breaker_state"] == "open" and agents["flaky"]["state"] == "down"
    assert agents["backup"]["state"] == "up"
    assert run("status", "--url", http, "--check", env=CLIENT).returncode == 5
    models = run("models", "--url", http, "--json", env=CLIENT)
    assert models.returncode == 0, models.stderr
    listed = {(m["provider"], m["model"]) for m in json.loads(models.stdout)}
    assert listed == {("flaky", "mock-1"), ("backup", "mock-1"), ("backup", "mock-2")}
    wrong = run("status", "--url", http, env={**ENV, "DUCKAGENTS_TOKEN": "not-the-token-4711"})
    assert wrong.returncode == 4 and "HTTP 401 (missing or wrong token" in one_line_error(wrong)
    refused = run("status", "--url", "http://127.0.0.1:9/")
    assert refused.returncode == 4
    assert "connection refused: nothing listens on 127.0.0.1:9" in one_line_error(refused)


def test_in_process_ask_verbose_shows_the_attempts(tmp_path: Path) -> None:
    config = tmp_path / "duck.toml"
    config.write_text(CONFIG.split("[gateway]")[0])
    asked = run("--config", str(config), "ask", "-v", "--no-stream", "hi")
    assert asked.returncode == 0, asked.stderr
    lines = asked.stderr.strip().splitlines()
    assert lines[0].startswith("attempt 1: flaky/mock-1 upstream_5xx in ")
    assert lines[1].startswith("attempt 2: backup/mock-1 ok in ")
    single = run("ask", "-v", "hi")  # one attempt: only the summary line
    assert single.returncode == 0 and single.stderr.strip().startswith("[mock/mock-1]")


def test_a_wrong_token_is_http_401_exit_4(server: tuple[Process, str]) -> None:
    _, url = server
    for args in (["status", "--url", url], ["watch", "--url", url], ["ask", "--url", url, "hi"]):
        result = run(*args, env={**ENV, "DUCKAGENTS_TOKEN": "not-the-token-4711"})
        assert result.returncode == 4, result.stderr
        assert "HTTP 401 (missing or wrong token" in one_line_error(result)
        assert "4711" not in result.stderr  # the token itself is never printed


def test_a_busy_port_is_one_line(server: tuple[Process, str]) -> None:
    _, url = server
    port = url.rsplit(":", 1)[1].strip("/")
    result = run("serve", "--port", port)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in one_line_error(result)


def test_a_server_that_is_not_a_gateway_and_dns_failures_say_so() -> None:
    from duckagents.testing import OllamaServer, ThreadedServer

    with ThreadedServer(OllamaServer()) as http_server:
        ws_url = http_server.url.replace("http://", "ws://") + "/"
        result = run("watch", "--url", ws_url)
    assert result.returncode == 4
    assert "answered HTTP 200 instead of a WebSocket handshake (is this a duckagents gateway?" in (
        one_line_error(result)
    )
    dns = run("status", "--url", "ws://no-such-host.invalid:8765/")
    assert dns.returncode == 4 and "cannot resolve host 'no-such-host.invalid' (DNS" in one_line_error(dns)
    refused = run("status", "--url", "ws://127.0.0.1:9/")
    assert refused.returncode == 4
    assert "connection refused: nothing listens on 127.0.0.1:9" in one_line_error(refused)


def test_watch_says_when_the_server_went_away() -> None:
    process, url = serve()
    watch = Process(["watch", "--url", url])
    try:
        watch.line_with("watching", stderr=True)
        process.stop()
        assert watch.proc.wait(timeout=15) == 4
        assert any(f"the gateway at {url} went away" in line for line in watch.rest(stderr=True))
    finally:
        watch.stop(signal.SIGKILL)
        process.stop(signal.SIGKILL)


def test_a_failing_pull_is_one_line(tmp_path: Path) -> None:
    from duckagents.testing import OllamaServer, ThreadedServer

    with ThreadedServer(OllamaServer(registry=["tinyduck:1b"])) as upstream:
        config = tmp_path / "local.toml"
        config.write_text(f'[[providers]]\nname = "gpu"\nkind = "ollama"\nbase_url = "{upstream.url}"\n')
        result = run("--config", str(config), "pull", "nosuchduck:9b")
    assert result.returncode == 1
    assert "pull of nosuchduck:9b into gpu failed" in one_line_error(result)


def test_models_of_a_gateway_come_from_its_status_message(server: tuple[Process, str]) -> None:
    _, url = server
    result = run("models", "--url", url, "--json", env=CLIENT)
    assert result.returncode == 0, result.stderr
    listed = {(m["provider"], m["model"]) for m in json.loads(result.stdout)}
    assert listed == {("flaky", "mock-1"), ("backup", "mock-1"), ("backup", "mock-2")}
