"""The dashboard's files: shipped in the package (and in a built wheel), served with a policy that lets the
page reach nothing but its own server, and free of any reference to another host."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

from duckagents.live import DASHBOARD_FILES, content_security_policy, dashboard_pages

from .support import REPO


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value or "" for name, value in attrs if name in ("src", "href", "action")]


def test_every_file_is_served_with_its_type_and_policy() -> None:
    pages = dashboard_pages()
    assert set(pages) == {*DASHBOARD_FILES, "/dashboard.json"}
    assert pages["/"].body == pages["/index.html"].body and pages["/"].body.startswith(b"<!doctype html>")
    assert pages["/dashboard.js"].content_type.startswith("text/javascript")
    for page in pages.values():
        policy = dict(page.headers)["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self';" in policy


def test_the_config_tells_the_page_where_the_gateway_is_and_whether_it_needs_a_token() -> None:
    assert json.loads(dashboard_pages()["/dashboard.json"].body)["gateway"] is None
    pages = dashboard_pages(gateway_url="ws://127.0.0.1:8765/", auth=True)
    config = json.loads(pages["/dashboard.json"].body)
    assert config["gateway"] == "ws://127.0.0.1:8765/" and config["auth"] is True
    assert "connect-src 'self' ws://127.0.0.1:8765;" in content_security_policy("ws://127.0.0.1:8765/")


def test_the_page_refers_to_its_own_files_only() -> None:
    pages = dashboard_pages()
    parser = _References()
    parser.feed(pages["/"].body.decode())
    assert sorted(set(parser.found)) == ["dashboard.css", "dashboard.js", "favicon.svg"]
    for path in ("/dashboard.js", "/dashboard.css", "/favicon.svg"):
        text = pages[path].body.decode()
        # The one absolute URL allowed is the SVG namespace name (an identifier, never fetched).
        urls = set(re.findall(r"(?:https?:|wss?:)?//[\w.-]+", text)) - {"http://www.w3.org"}
        assert not urls, (path, urls)
        assert "@import" not in text and "url(" not in text


def test_a_built_wheel_ships_the_static_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("duckagents-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name, _ in DASHBOARD_FILES.values():
        assert f"duckagents/live/static/{name}" in names
