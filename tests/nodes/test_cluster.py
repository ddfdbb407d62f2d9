"""Several real node processes against one Redis: registration races and killed nodes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import redis

from tests.conftest import wait_until
from tickerq._redis.keys import Keys
from tickerq.events import EventHub, NodesDead
from tickerq.nodes.heartbeat import HeartbeatService
from tickerq.nodes.registry import NodeRegistry
from tickerq.testing import RedisServer

NODE = str(Path(__file__).parent.with_name("node_process.py"))


def spawn(
    server: RedisServer, node: str, interval: float, grace: float, start_at: float = 0.0
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, NODE, server.address, node, str(interval), str(grace), str(start_at)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Node processes started by the test; killed at the end whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(10)


@pytest.mark.multiprocess
def test_threads_and_processes_registering_together_lose_no_node(
    redis_server: RedisServer, redis_client: redis.Redis, processes: list[subprocess.Popen[str]]
) -> None:
    """Twenty threads and three processes registering at the same moment all end up in the registry."""
    start_at = time.time() + 2.0
    processes.extend(spawn(redis_server, f"proc-{i}", 60, 20, start_at) for i in range(3))
    ttl = timedelta(seconds=60)
    registries = [
        NodeRegistry(redis_server.client(), Keys("tickerq:"), f"thread-{i}", ttl) for i in range(20)
    ]

    def register(registry: NodeRegistry) -> None:
        time.sleep(max(0.0, start_at - time.time()))
        registry.beat()

    threads = [threading.Thread(target=register, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        assert "ready" == process.stdout.readline().strip()  # type: ignore[union-attr]
    expected = {f"thread-{i}" for i in range(20)} | {f"proc-{i}" for i in range(3)}
    assert expected == set(orjson.loads(redis_client.hget("tickerq:nodes:registry", "data")))


@pytest.mark.multiprocess
@pytest.mark.slow
def test_killed_node_is_detected_once_its_ttl_passes(
    redis_server: RedisServer, processes: list[subprocess.Popen[str]]
) -> None:
    """A node process killed with SIGKILL shows up as dead after interval + grace, and is then removed."""
    victim = spawn(redis_server, "victim", 0.5, 0.5)
    processes.append(victim)
    assert "ready" == victim.stdout.readline().strip()  # type: ignore[union-attr]
    events = EventHub()
    found: list[NodesDead] = []
    events.subscribe(NodesDead, found.append)
    registry = NodeRegistry(redis_server.client(), Keys("tickerq:"), "survivor", timedelta(seconds=1))
    handled: list[str] = []
    survivor = HeartbeatService(registry, timedelta(seconds=0.2), events)
    survivor.add_dead_node_handler(handled.append)
    with survivor:
        assert () == registry.health().dead
        victim.kill()
        killed_at = time.monotonic()
        wait_until(lambda: "victim" in registry.health().dead or found, timeout=5)
        detected_after = time.monotonic() - killed_at
        wait_until(lambda: found, timeout=5)
    assert detected_after <= 1.0 + 1.5  # heartbeat TTL (interval + grace) plus slack for 2 busy cores
    assert ["victim"] == handled
    assert ("victim",) == found[0].removed
    assert ("survivor",) == registry.health().registered
