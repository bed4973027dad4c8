"""The gateway client says why it cannot connect: refused, DNS, timeout, a server that is not a gateway."""

from __future__ import annotations

import pytest
import trio

from duckagents.errors import GatewayUnreachable
from duckagents.gateway import _client, connect


async def test_a_server_that_never_answers_the_handshake_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_client, "CONNECT_TIMEOUT", 0.3)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(stream)  # accept, then say nothing
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        expected = r"timed out after 0\.3 s: 127\.0\.0\.1:\d+ did not complete"
        with pytest.raises(GatewayUnreachable, match=expected):
            async with connect(f"ws://127.0.0.1:{port}/"):
                pass
        nursery.cancel_scope.cancel()
    assert accepted


async def test_refused_and_dns_are_told_apart() -> None:
    with pytest.raises(GatewayUnreachable, match=r"connection refused: nothing listens on 127\.0\.0\.1:9"):
        async with connect("ws://127.0.0.1:9/"):
            pass
    with pytest.raises(GatewayUnreachable, match=r"cannot resolve host 'nowhere\.invalid' \(DNS"):
        async with connect("ws://nowhere.invalid:8765/?token=secret-in-query"):
            pass
