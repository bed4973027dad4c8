"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a
``duckagents serve --gateway --http`` subprocess whose agents are a loopback OpenAI server and two mocks.
The page is opened where the HTTP front door serves it (``/``), and once where the gateway does.

Every page a test opens is watched: each request it makes (HTTP and WebSocket) must go to the server
itself (its two addresses), and it must log no error. The last test takes the README's screenshot
(docs/img/dashboard.png when DUCKAGENTS_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import (
    CHROMIUM_ARGS,
    CLI,
    CRASH,
    ENV,
    Server,
    ask,
    chromium_or_skip,
    read_line_with,
    running_server,
    screenshot_path,
)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_or_skip()
    with playwright_api.sync_playwright() as pw:
        # Playwright gives each launch a fresh, temporary profile (user-data-dir).
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("live")) as running:
        yield running


class Watched:
    """A page and everything it asked for."""

    def __init__(self, browser: Any, origins: tuple[str, ...]) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.origins = origins
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page.on("websocket", lambda ws: self.requests.append(ws.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def outside(self) -> list[str]:
        """Requests to anything but the server (``scheme://host:port/...`` of one of its addresses)."""
        return [url for url in self.requests if not url.startswith(self.origins)]


@pytest.fixture
def watched(browser: Any, server: Server) -> Iterator[Watched]:
    page = Watched(browser, server.origins)
    yield page
    assert page.requests, "the page made no request at all"
    assert page.outside() == [], "the page loaded something from outside the server"
    # Connection failures while the server restarts are the browser's own log lines, not the page's.
    errors = [e for e in page.errors if "WebSocket connection to" not in e]
    assert errors == []
    page.context.close()


def card(page: Any, provider: str) -> Any:
    return page.locator(f'article.card[data-provider="{provider}"]')


def open_dashboard(watched: Watched, server: Server, url: str | None = None) -> Any:
    page = watched.page
    page.goto(url or server.http_url)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=10_000)
    for provider in ("alpha", "beta", "gamma"):  # every card has had its first status
        expect(card(page, provider).locator(".breaker")).not_to_have_attribute(
            "data-state", "unknown", timeout=10_000
        )
    return page


def test_the_page_shows_every_agent(watched: Watched, server: Server) -> None:
    page = open_dashboard(watched, server)
    assert page.locator("article.card").count() == 3
    for provider in ("alpha", "beta", "gamma"):
        expect(card(page, provider).locator(".breaker")).to_have_attribute("data-state", "closed")
        expect(card(page, provider).locator(".up")).to_have_text("up")
    expect(card(page, "alpha").locator(".model")).to_have_text("openai · gpt-4o-mini")
    expect(card(page, "beta").locator(".model")).to_have_text("mock · mock-1")
    expect(card(page, "gamma").locator(".model")).to_have_text("mock · llama3.2")
    # alpha's limits are configured: its headroom is a bar out of the limit; gamma has none.
    expect(card(page, "alpha").locator(".bar-row.requests .value")).to_have_text(re.compile(r"^\d+ / 600$"))
    expect(card(page, "gamma").locator(".bar-row.requests .value")).to_have_text("unlimited")
    assert page.locator("#login").is_hidden()


def test_the_gateway_serves_the_same_page_on_its_own_address(watched: Watched, server: Server) -> None:
    page = open_dashboard(watched, server, server.gateway_page_url)
    assert page.locator("article.card").count() == 3
    assert {url.split("/")[2] for url in watched.requests} == {f"127.0.0.1:{server.port}"}


def test_a_request_appears_in_the_feed_with_the_provider_that_answered(
    watched: Watched, server: Server
) -> None:
    page = open_dashboard(watched, server)
    request_id, final = ask(server.ws_url, "hello feed")
    assert final["type"] == "provider_response"
    row = page.locator(f'#feed tr[data-request-id="{request_id}"]')
    expect(row.locator(".provider")).to_have_text("alpha", timeout=5_000)
    expect(row.locator(".model")).to_have_text("gpt-4o-mini")
    expect(row.locator(".outcome")).to_have_text("stop")
    expect(row.locator(".attempts")).to_have_text("1")
    # The filter by provider hides it when another provider is chosen.
    page.select_option("#filter-provider", "gamma")
    expect(row).to_have_count(0)
    page.select_option("#filter-provider", "alpha")
    expect(row).to_have_count(1)


def test_a_breaker_opening_shows_on_its_card_within_a_second(watched: Watched, server: Server) -> None:
    page = open_dashboard(watched, server)
    flashes = int(card(page, "alpha").get_attribute("data-flashes") or 0)
    server.fail_next(2)  # alpha's breaker opens after 2 failures in a row
    answered = [ask(server.ws_url, f"outage {n}") for n in range(2)]
    opened_at = time.monotonic()
    breaker = card(page, "alpha").locator(".breaker")
    expect(breaker).to_have_attribute("data-state", "open", timeout=1_000)
    assert time.monotonic() - opened_at < 1.0
    expect(breaker).to_have_text("open")
    expect(card(page, "alpha").locator(".eta")).to_have_text(re.compile(r"^half-open in \d+ s$"))
    assert int(card(page, "alpha").get_attribute("data-flashes") or 0) > flashes  # it flashed
    # Both requests failed over to beta: marked in the feed with the agent they left.
    for request_id, final in answered:
        assert final["data"]["provider"] == "beta"
        row = page.locator(f'#feed tr[data-request-id="{request_id}"]')
        expect(row).to_have_class(re.compile(r"\bfailover\b"))
        expect(row.locator(".provider")).to_have_text("beta ← alpha")
    page.select_option("#filter-kind", "failover")
    expect(page.locator("#feed tbody tr")).to_have_count(2)
    expect(page.locator("#error-legend")).to_contain_text("upstream_5xx")


def test_an_operators_force_open_shows_on_the_card_and_reset_closes_it(
    watched: Watched, server: Server
) -> None:
    page = open_dashboard(watched, server)
    breaker = card(page, "alpha").locator(".breaker")
    operator("reset", server)  # an earlier test may have left it open
    expect(breaker).to_have_attribute("data-state", "closed", timeout=2_000)
    try:
        operator("force-open", server)
        expect(breaker).to_have_attribute("data-state", "forced_open", timeout=2_000)
        expect(breaker).to_have_text("forced open")
        # Held open: alpha gets nothing, beta answers.
        request_id, final = ask(server.ws_url, "while alpha is held open")
        assert final["data"]["provider"] == "beta"
        expect(page.locator(f'#feed tr[data-request-id="{request_id}"] .provider')).to_have_text("beta")
    finally:
        operator("reset", server)
    expect(breaker).to_have_attribute("data-state", "closed", timeout=2_000)


def operator(switch: str, server: Server) -> None:
    """``duckagents breaker SWITCH alpha`` against the running server, as an operator types it."""
    done = subprocess.run(
        [*CLI, "breaker", switch, "alpha", "--url", server.ws_url],
        capture_output=True, text=True, env=ENV, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_crash_shows_the_restart_count_go_up(watched: Watched, server: Server) -> None:
    page = open_dashboard(watched, server)
    restarts = card(page, "beta").locator(".figures .restarts dd")
    before = int(restarts.inner_text())
    request_id, final = ask(server.ws_url, f"please {CRASH}", model="mock-1")
    assert final["data"]["kind"] == "agent_crashed"
    page.wait_for_function(
        "([el, before]) => Number(el.textContent) > before",
        arg=[restarts.element_handle(), before],
        timeout=5_000,
    )
    expect(card(page, "beta").locator(".crash")).to_contain_text("asked the mock to crash")
    expect(page.locator(f'#feed tr[data-request-id="{request_id}"] .outcome')).to_have_text("agent_crashed")


def test_the_page_reconnects_after_the_server_restarts(watched: Watched, server: Server) -> None:
    page = open_dashboard(watched, server)
    server.stop()
    connection = page.locator("#connection")
    expect(connection).to_have_attribute("data-state", "disconnected", timeout=5_000)
    expect(connection).to_contain_text("disconnected")
    server.start()  # the same port
    expect(connection).to_have_attribute("data-state", "live", timeout=15_000)
    request_id, _ = ask(server.ws_url, "after the restart")
    expect(page.locator(f'#feed tr[data-request-id="{request_id}"] .provider')).to_have_text(
        "alpha", timeout=5_000
    )


def test_a_gateway_with_tokens_asks_for_one_and_keeps_it_out_of_cookies(browser: Any, tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "tokens.toml"
    config.write_text(
        '[gateway]\ntokens = [{ env = "LIVE_TOKEN", scopes = ["subscribe"] }]\n'
        '[[providers]]\nname = "solo"\nkind = "mock"\n'
    )
    proc = subprocess.Popen(
        [*CLI, "--config", str(config), "serve", "--gateway", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV | {"LIVE_TOKEN": "let-me-watch"},
    )
    try:
        url = read_line_with(proc, "dashboard at").split()[-1]
        watched = Watched(browser, (url, url.replace("http://", "ws://")))
        page = watched.page
        page.goto(url)
        expect(page.locator("#login")).to_be_visible(timeout=5_000)
        assert page.locator("#connection").get_attribute("data-state") != "live"
        page.fill("#token", "let-me-watch")
        page.click("#login button")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=10_000)
        assert watched.context.cookies() == []
        assert page.evaluate("sessionStorage.length") == 0  # not stored without the box ticked
        # From the URL fragment: used, then wiped from the address bar; a wrong one brings the form back.
        second = watched.context.new_page()
        second.goto(url + "#token=let-me-watch")
        expect(second.locator("#connection")).to_have_attribute("data-state", "live", timeout=10_000)
        assert "token" not in second.url
        third = watched.context.new_page()
        third.goto(url + "#token=wrong")
        expect(third.locator("#login")).to_be_visible(timeout=10_000)
        assert watched.outside() == []
        watched.context.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_screenshot_of_a_busy_dashboard(watched: Watched, server: Server, tmp_path: Path) -> None:
    """Traffic for the README's picture: answers, failovers, an outage that opens a breaker, a crash."""
    page = open_dashboard(watched, server)
    end = time.monotonic() + 16
    n = 0
    while time.monotonic() < end:
        n += 1
        if n == 4:  # the next request (to alpha: n % 3 != 0) meets a 429, which alpha honours for 1 s
            server.fail_next(1, status=429, headers={"retry-after": "1"})
        elif n % 9 == 4:
            server.fail_next(1, status=503)
        ask(server.ws_url, f"question {n}", model=("llama3.2" if n % 3 == 0 else None))
        if n % 4 == 0:
            ask(server.ws_url, f"mock {n}", model="mock-1")
        time.sleep(0.15)
    ask(server.ws_url, f"one more {CRASH}", model="mock-1")
    time.sleep(1.2)  # no 429 of alpha's still being honoured: the outage requests go to alpha first
    server.fail_next(2)
    for k in range(2):
        ask(server.ws_url, f"outage {k}")
    expect(card(page, "alpha").locator(".breaker")).to_have_attribute("data-state", "open", timeout=2_000)
    page.wait_for_timeout(1_800)  # let the flash fade
    path = screenshot_path("dashboard.png", tmp_path)
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000
