"""Shared fixtures: real redis-server processes started by the suite on free ports."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from tickerq.testing import RedisServer


@pytest.fixture(scope="session")
def shared_server() -> Iterator[RedisServer]:
    """One redis-server for the tests that do not fault it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server(shared_server: RedisServer) -> RedisServer:
    """The shared server, emptied for this test."""
    with shared_server.client() as client:
        client.flushall()
    return shared_server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on the emptied shared server (to inspect keys)."""
    with redis_server.client(decode_responses=True) as client:
        yield client


@pytest.fixture
def fault_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop, restart or pause."""
    with RedisServer() as server:
        yield server


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)
