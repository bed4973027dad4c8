"""The dashboard's files (package data under ``live/static``) as the pages a server answers.

``dashboard_pages()`` returns ``{path: Page}`` for the gateway's plain-HTTP side (or any server): the page
itself at ``/``, its script, stylesheet and icon, and ``/dashboard.json``, which tells the page where the
gateway is (``null``: the same address the page came from) and whether it needs a token. Every answer
carries a Content-Security-Policy that lets the page load nothing and connect nowhere but its own server
(and the gateway, when that lives elsewhere).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import json
import urllib.parse

from ..gateway import Page

__all__ = ["DASHBOARD_FILES", "DASHBOARD_PATHS", "content_security_policy", "dashboard_pages"]

#: path -> (file under live/static, content type)
DASHBOARD_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
#: Every path :func:`dashboard_pages` answers.
DASHBOARD_PATHS: tuple[str, ...] = (*DASHBOARD_FILES, "/dashboard.json")


@functools.cache
def _static(name: str) -> bytes:
    return importlib.resources.files(__package__).joinpath("static", name).read_bytes()


def _version() -> str:
    try:
        return importlib.metadata.version("duckagents")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(gateway_url: str | None) -> str:
    """Own files only; WebSocket to the page's own address (``'self'``), plus the gateway's when given."""
    connect = "'self'" + (f" {_origin(gateway_url)}" if gateway_url else "")
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def dashboard_pages(*, gateway_url: str | None = None, auth: bool = False) -> dict[str, Page]:
    """The dashboard as ``{path: Page}``.

    ``gateway_url`` is the WebSocket address the page connects to (``None``: the address the page was
    served from, which is how the gateway serves it itself); ``auth`` says whether the gateway requires a
    token, so the page asks for one only then.
    """
    headers = (("Content-Security-Policy", content_security_policy(gateway_url)),)
    pages = {path: Page(_static(name), kind, headers) for path, (name, kind) in DASHBOARD_FILES.items()}
    config = {"gateway": gateway_url, "auth": auth, "server": f"duckagents/{_version()}"}
    pages["/dashboard.json"] = Page(json.dumps(config).encode(), "application/json", headers)
    return pages
