"""User code never runs on the heartbeat thread: slow handlers or subscribers never make a node look dead."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import wait_until
from tickerq import NodeHeartbeat, NodesDead, TickerQContainer, TickerQOptions, add_tickerq
from tickerq.testing import RedisServer

INTERVAL, GRACE = 0.2, 0.2
TTL = INTERVAL + GRACE


def node(server: RedisServer, name: str) -> TickerQContainer:
    def configure(options: TickerQOptions) -> None:
        options.configure_scheduler(node_identifier=name)
        options.add_redis(
            configuration=server.address,
            node_heartbeat_interval=INTERVAL,
            node_heartbeat_grace=GRACE,
            outage_retry_interval=0.1,
        )

    return add_tickerq(configure)


def watch_dead_nodes(observer: TickerQContainer, seconds: float) -> set[str]:
    """Every node that observer's get_dead_nodes() or its dead-node scans reported during ``seconds``."""
    seen: set[str] = set()
    unsubscribe = observer.events().subscribe(NodesDead, lambda event: seen.update(event.nodes))
    deadline = time.monotonic() + seconds
    ctx = observer.redis_context()
    try:
        while time.monotonic() < deadline:
            seen.update(ctx.get_dead_nodes())
            time.sleep(0.01)
    finally:
        unsubscribe()
    return seen


@pytest.mark.slow
def test_a_slow_dead_node_handler_does_not_make_its_node_look_dead(redis_server: RedisServer) -> None:
    """A handler sleeping 5 x the heartbeat TTL runs while its node keeps beating; a third node
    watching get_dead_nodes() never sees the handler's node dead."""
    victim, worker, observer = (node(redis_server, name) for name in ("victim", "worker", "observer"))
    handled, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def slow_handler(dead: str) -> None:
        threads.append(threading.current_thread().name)
        handled.set()
        release.wait(5 * TTL)

    victim.init_resources()
    victim.heartbeat().stop()  # dies: its heartbeat expires after one TTL
    worker.redis_context().add_dead_node_handler(slow_handler)
    worker.init_resources()
    observer.init_resources()
    try:
        wait_until(handled.is_set)
        seen = watch_dead_nodes(observer, 5 * TTL)
        assert "worker" not in seen
        assert "tickerq-heartbeat" not in threads
    finally:
        release.set()  # no handler outlives the test
        for container in (observer, worker, victim):
            container.shutdown_resources()


@pytest.mark.slow
def test_a_slow_event_subscriber_does_not_make_its_node_look_dead(redis_server: RedisServer) -> None:
    """A NodeHeartbeat subscriber sleeping 5 x the TTL delays no beat; it runs off the heartbeat thread."""
    worker, observer = node(redis_server, "worker"), node(redis_server, "observer")
    threads: list[str] = []
    called, release = threading.Event(), threading.Event()

    def slow_subscriber(_: NodeHeartbeat) -> None:
        threads.append(threading.current_thread().name)
        called.set()
        release.wait(5 * TTL)

    worker.events().subscribe(NodeHeartbeat, slow_subscriber)
    worker.init_resources()
    observer.init_resources()
    try:
        wait_until(called.is_set)
        seen = watch_dead_nodes(observer, 5 * TTL)
        assert "worker" not in seen
        assert threads
        assert "tickerq-heartbeat" not in threads
        assert threading.current_thread().name not in threads
    finally:
        release.set()
        observer.shutdown_resources()
        worker.shutdown_resources()
