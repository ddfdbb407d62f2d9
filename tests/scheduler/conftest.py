"""Fixtures of the scheduler tests on Redis: in-process nodes and node processes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tickerq import FunctionRegistry, TickerManager, add_tickerq
from tickerq.testing import RedisServer

Node = Callable[..., tuple[Any, TickerManager]]


@pytest.fixture
def registry() -> FunctionRegistry:
    return FunctionRegistry()


@pytest.fixture
def node(request: pytest.FixtureRequest, registry: FunctionRegistry) -> Iterator[Node]:
    """Start an in-process node on the test Redis (or ``address``); every node is stopped at the end."""
    started: list[Any] = []

    def start(
        name: str, *, init: bool = True, interval: float = 0.3, address: str | None = None, **options: Any
    ) -> tuple[Any, TickerManager]:
        options.setdefault("shutdown_timeout", 1)
        if address is None:
            address = request.getfixturevalue("redis_server").address

        def configure(o: Any) -> None:
            o.configure_scheduler(node_identifier=name, **options)
            o.add_redis(
                configuration=address,
                node_heartbeat_interval=interval,
                node_heartbeat_grace=interval,
            )

        container = add_tickerq(configure, functions=registry)
        started.append(container)
        if init:
            container.init_resources()
        return container, container.ticker_manager()

    yield start
    for container in started:
        container.shutdown_resources()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Node processes started by the test; stopped (or killed) at the end whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None and process.stdin is not None:
            process.stdin.close()
    for process in started:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


__all__ = ["Node", "RedisServer"]
