"""Live views of a running tree, built on the gateway's signal stream (docs/dashboard.md).

* :func:`dashboard_pages`: the dashboard page (HTML, JS and CSS shipped in this package) as the static
  pages a server answers; ``duckagents serve --gateway`` serves them on the gateway's own address.
* :class:`LiveState`: the figures both views show, folded from signals.
* ``duckagents top``: :func:`run_top` draws them in the terminal, fed by :func:`follow_gateway` (a running
  server) or :func:`follow_tree` (a tree in this process). These need ``rich`` (the ``top`` extra:
  ``pip install 'duckagents[top]'``) and are imported on first use, so the rest works without it.
"""

from typing import Any

from ._pages import DASHBOARD_FILES, DASHBOARD_PATHS, content_security_policy, dashboard_pages
from ._state import AgentFigures, FeedEntry, LiveState, Rates

_TERMINAL = frozenset({"SIGNAL_TYPES", "Link", "follow_gateway", "follow_tree", "render", "run_top"})

__all__ = [
    "DASHBOARD_FILES",
    "DASHBOARD_PATHS",
    "SIGNAL_TYPES",
    "AgentFigures",
    "FeedEntry",
    "Link",
    "LiveState",
    "Rates",
    "content_security_policy",
    "dashboard_pages",
    "follow_gateway",
    "follow_tree",
    "render",
    "run_top",
]


def __getattr__(name: str) -> Any:
    # The terminal view imports rich, an optional dependency: only when one of its names is used.
    if name in _TERMINAL:
        from . import _top

        return getattr(_top, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
