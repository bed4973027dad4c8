"""The HTTP front door: an OpenAI-compatible API over the router, health checks and Prometheus metrics,
served by hypercorn on Trio in the process of the tree (docs/deploy.md, docs/metrics.md).

Needs the ``server`` extra (``pip install 'duckagents[server]'``): hypercorn, starlette, prometheus_client.
"""

from ._catalogue import ModelCatalogue
from ._door import FrontDoor, RouterLike
from ._errors import ApiError
from ._metrics import SCRAPE_CONTENT_TYPE, Metrics
from ._server import DRAIN_TIMEOUT, HttpServer, open_http, serve_http

__all__ = [
    "DRAIN_TIMEOUT",
    "SCRAPE_CONTENT_TYPE",
    "ApiError",
    "FrontDoor",
    "HttpServer",
    "Metrics",
    "ModelCatalogue",
    "RouterLike",
    "open_http",
    "serve_http",
]
