"""The dashboard page served by the HTTP front door (``/`` and its files), once told which gateway it
talks to: over real loopback HTTP."""

from __future__ import annotations

import json

from duckagents.live import DASHBOARD_PATHS

from .support import is_error_object, mock_config, running_door, strict_json


async def test_the_page_is_served_once_the_door_knows_the_gateway() -> None:
    async with running_door(mock_config()) as (_, server, client):
        before = await client.get("/")
        assert before.status_code == 404 and is_error_object(strict_json(before.content))
        server.show_dashboard(8765, auth=True)
        for path in DASHBOARD_PATHS:
            answer = await client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "connect-src 'self' ws://127.0.0.1:8765;" in answer.headers["content-security-policy"]
        page = await client.get("/")
        assert page.headers["content-type"].startswith("text/html") and b"dashboard.js" in page.content
        # The page talks to the gateway on the host the browser used to reach the door.
        config = json.loads((await client.get("/dashboard.json", headers={"host": "localhost:1"})).content)
        assert config == {"gateway": "ws://localhost:8765/", "auth": True, "server": config["server"]}
        head = await client.head("/dashboard.js")
        assert head.status_code == 200 and head.content == b""


async def test_a_host_header_that_is_no_host_name_is_never_reflected() -> None:
    async with running_door(mock_config()) as (_, server, client):
        server.show_dashboard(8765)
        answer = await client.get("/dashboard.json", headers={"host": "evil.example'; script-src *:1"})
        assert answer.status_code == 200
        assert json.loads(answer.content)["gateway"] == "ws://127.0.0.1:8765/"  # the door's own address
        assert "evil" not in answer.headers["content-security-policy"]
