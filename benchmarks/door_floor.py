"""The floor under any front door built on our HTTP stack: a bare hypercorn-on-Trio ASGI app that forwards
each request to the upstream with one httpx client and passes the answer back, byte for byte.

No router, no agents, no validation, no metrics: what is left is hypercorn, h11 and httpx. The difference
between ``duckagents serve --http`` and this floor is what duckagents itself costs at the door; the
difference between this floor and nginx directly is what the stack costs before we add anything.

Run as ``python -m benchmarks.door_floor PORT JSON_BASE SSE_BASE`` (benchmarks/doors.py starts it).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

#: The model names the doors route by (benchmarks/doors.py).
JSON_MODEL = "bench-json"
SSE_MODEL = "bench-sse"
MAX_BODY = 1 << 20


def make_app(json_base: str, sse_base: str, client: httpx.AsyncClient) -> Any:
    """The ASGI app: POST .../chat/completions forwarded to the base URL its model names."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY or not message.get("more_body"):
                break
        if scope["path"] in ("/health", "/v1/models"):
            await _answer(send, 200, b"{}", b"application/json")
            return
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            model = None
        base = sse_base if model == SSE_MODEL else json_base
        request = client.build_request(
            "POST", base + "/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        response = await client.send(request, stream=True)
        try:
            headers = [(b"content-type", response.headers.get("content-type", "").encode())]
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    return app


async def _answer(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def main(port: int, json_base: str, sse_base: str) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    # The same pool as duckagents' providers (duckagents/providers/_http.py), so only the layers differ.
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        print(f"floor listening on http://127.0.0.1:{port}", flush=True)
        await serve(make_app(json_base, sse_base, client), config)  # type: ignore[arg-type]


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2], sys.argv[3])
