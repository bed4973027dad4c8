"""Fleet mode (duckagents.fleet) against a real redis-server on a free loopback port; no fakes.

``redis_server`` is one server for the session (each test isolates itself with its own key prefix);
``own_redis`` is a private server for a test that kills, restarts or pauses it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from duckagents.testing import RedisServer, redis_server_path

from .support import NO_REDIS


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if redis_server_path() is None:
        pytest.skip(NO_REDIS)
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if redis_server_path() is None:
        pytest.skip(NO_REDIS)
    with RedisServer() as server:
        yield server
