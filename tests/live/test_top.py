"""``duckagents top`` in a pseudo-terminal (Python's pty), its screen read back with pyte, against a
``duckagents serve --gateway`` subprocess and with a tree of its own. The last test renders the terminal's
screen to the README's picture (docs/img/top.png when DUCKAGENTS_UPDATE_SCREENSHOTS=1) with Chromium."""

from __future__ import annotations

import html
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import (
    CHROMIUM_ARGS,
    CLI,
    CRASH,
    ENV,
    Server,
    Terminal,
    ask,
    chromium_or_skip,
    running_server,
    screenshot_path,
)

pytest.importorskip("pyte")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("top")) as running:
        yield running


@pytest.fixture
def top(server: Server) -> Iterator[Terminal]:
    terminal = Terminal([*CLI, "top", "--url", server.ws_url, "--refresh", "10"])
    yield terminal
    terminal.close()


def agents_shown(text: str) -> bool:
    rows = {line.split()[0] for line in text.splitlines() if line.split()}
    return {"alpha", "beta", "gamma"} <= rows and " live " in text


def row_of(text: str, needle: str) -> str:
    return next((line for line in text.splitlines() if needle in line), "")


def quits_with_q(terminal: Terminal) -> None:
    terminal.send(b"q")
    assert terminal.proc.wait(timeout=10) == 0


def test_top_shows_the_agents_and_a_request_once_it_ends(top: Terminal, server: Server) -> None:
    screen = top.wait_for(agents_shown, what="the three agents, live")
    assert "openai · gpt-4o-mini" in row_of(screen, "alpha") and "closed" in row_of(screen, "alpha")
    assert re.search(r"\d+/600", row_of(screen, "alpha"))  # the request headroom out of the limit
    request_id, _ = ask(server.ws_url, "hello top")
    screen = top.wait_for(lambda text: request_id in text, what=f"the request {request_id}")
    feed_row = row_of(screen, request_id)
    assert "alpha" in feed_row and "gpt-4o-mini" in feed_row and "stop" in feed_row
    quits_with_q(top)


def test_top_shows_a_crash_and_an_open_breaker(top: Terminal, server: Server) -> None:
    top.wait_for(agents_shown, what="the three agents, live")
    restarts_before = int(row_of(top.text, "beta").split()[-2])
    ask(server.ws_url, f"go {CRASH}", model="mock-1")
    top.wait_for(
        lambda text: int(row_of(text, "beta").split()[-2]) > restarts_before, what="beta's restarts going up"
    )
    server.fail_next(2)
    ask(server.ws_url, "outage 1")
    ask(server.ws_url, "outage 2")
    screen = top.wait_for(lambda text: re.search(r"open \d+s", row_of(text, "alpha")), what="alpha open")
    assert "0.00" in row_of(screen, "alpha")  # an open breaker's health
    assert "upstream_5xx" in screen  # among the last minute's attempt errors
    quits_with_q(top)


def test_top_says_when_the_server_is_gone_and_comes_back(top: Terminal, server: Server) -> None:
    top.wait_for(agents_shown, what="the three agents, live")
    server.stop()
    top.wait_for(lambda text: "disconnected" in text, what="the disconnection")
    server.start()
    top.wait_for(lambda text: " live " in text, timeout=20, what="the reconnection")
    request_id, _ = ask(server.ws_url, "after the restart")
    top.wait_for(lambda text: request_id in text, what=f"the request {request_id}")
    quits_with_q(top)


def test_top_with_a_tree_of_its_own_and_its_gateway(tmp_path: Path) -> None:
    config = tmp_path / "solo.toml"
    config.write_text('[[providers]]\nname = "solo"\nkind = "mock"\ndefault_model = "mock-1"\n')
    terminal = Terminal([*CLI, "--config", str(config), "top", "--gateway", "--port", "0"])
    try:
        screen = terminal.wait_for(lambda text: "solo" in text and " live " in text, what="the agent solo")
        url = re.search(r"gateway (ws://127\.0\.0\.1:\d+/)", screen)
        assert url is not None, screen
        request_id, _ = ask(url.group(1), "hello embedded")
        screen = terminal.wait_for(lambda text: request_id in text, what=f"the request {request_id}")
        assert "solo" in row_of(screen, request_id)
        quits_with_q(terminal)
    finally:
        terminal.close()


def test_top_without_a_terminal_prints_one_snapshot(server: Server) -> None:
    command = [*CLI, "top", "--url", server.ws_url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=ENV, check=False)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0] for line in result.stdout.splitlines() if line.split()}
    assert {"alpha", "beta", "gamma"} <= rows


# --- the screenshot ------------------------------------------------------------------------------------

PALETTE = {
    "default": None,
    "black": "#1e1e1e",
    "red": "#e05561",
    "green": "#8cc265",
    "yellow": "#d18f52",
    "blue": "#4aa5f0",
    "magenta": "#c162de",
    "cyan": "#42b3c2",
    "white": "#d7dae0",
    "brightblack": "#5c6370",
    "brightred": "#ff616e",
    "brightgreen": "#a5e075",
    "brightyellow": "#f0a45d",
    "brightblue": "#4dc4ff",
    "brightmagenta": "#de73ff",
    "brightcyan": "#4cd1e0",
    "brightwhite": "#e6e6e6",
}
FOREGROUND, BACKGROUND = "#d7dae0", "#21252b"


def _colour(value: str, fallback: str) -> str:
    if value in PALETTE:
        return PALETTE[value] or fallback
    return f"#{value}" if re.fullmatch(r"[0-9a-fA-F]{6}", value) else fallback


def screen_html(terminal: Terminal) -> str:
    """The terminal's screen as an HTML page: one span per run of characters with the same look."""
    rows = []
    for y in range(terminal.screen.lines):
        line = terminal.screen.buffer[y]
        spans, run, look = [], "", None
        for x in range(terminal.screen.columns):
            char = line[x]
            fg, bg = _colour(char.fg, FOREGROUND), _colour(char.bg, BACKGROUND)
            if char.reverse:
                fg, bg = bg, fg
            this = (fg, bg, char.bold)
            if this != look and run:
                spans.append((look, run))
                run = ""
            look, run = this, run + (char.data or " ")
        spans.append((look, run))
        rows.append(
            "".join(
                f'<span style="color:{f};background:{b};font-weight:{"bold" if w else "normal"}">'
                f"{html.escape(text)}</span>"
                for (f, b, w), text in spans
            )
        )
    font = "font:13px/1.3 'DejaVu Sans Mono',monospace"
    return (
        f'<!doctype html><meta charset=utf-8><body style="margin:0;background:{BACKGROUND}">'
        f'<pre style="display:inline-block;margin:0;padding:12px;{font};color:{FOREGROUND}">'
        + "\n".join(rows)
        + "</pre>"
    )


def test_screenshot_of_top(tmp_path: Path) -> None:
    """The README's picture of ``top``: a busy server's screen, drawn through Chromium."""
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with running_server(tmp_path) as busy:
        terminal = Terminal([*CLI, "top", "--url", busy.ws_url], columns=150, lines=32)
        try:
            terminal.wait_for(agents_shown, what="the three agents, live")
            end = time.monotonic() + 12
            n = 0
            while time.monotonic() < end:
                n += 1
                if n % 7 == 3:
                    busy.fail_next(1, status=503)
                ask(busy.ws_url, f"question {n}", model=("llama3.2" if n % 3 == 0 else None))
                if n % 4 == 0:
                    ask(busy.ws_url, f"mock {n}", model="mock-1")
                terminal.pump(0.1)
            ask(busy.ws_url, f"now {CRASH}", model="mock-1")
            time.sleep(0.3)
            busy.fail_next(2)
            ask(busy.ws_url, "outage 1")
            ask(busy.ws_url, "outage 2")
            terminal.wait_for(lambda text: re.search(r"open \d+s", row_of(text, "alpha")), what="alpha open")
            terminal.pump(2.0)  # the flash fades
            page_html = screen_html(terminal)
            quits_with_q(terminal)
        finally:
            terminal.close()
    path = screenshot_path("top.png", tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 700})
        page.set_content(page_html)
        page.locator("pre").screenshot(path=str(path))
        browser.close()
    assert path.stat().st_size > 20_000
