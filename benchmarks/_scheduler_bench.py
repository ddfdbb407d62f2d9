"""Helpers of the end-to-end scheduler benchmarks: node processes and a producer.

Each node is ``benchmarks/_scheduler_node.py`` in a process of its own; the
benchmark process is a producer (a container without ``init_resources()``: it
schedules and runs nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import attrs
import orjson
import redis

from tickerq import TickerManager, add_tickerq
from tickerq._redis.keys import Keys
from tickerq.testing import RedisServer

__all__ = ["KEYS", "NodeProcess", "NodeReport", "finished_count", "nodes", "producer", "redis_now_ms"]

#: The container's default instance prefix.
KEYS = Keys("tickerq:")

_NODE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_scheduler_node.py")
_START_TIMEOUT = 60.0


@attrs.frozen(kw_only=True)
class NodeReport:
    """A node's counters at one moment (see ``_scheduler_node.py``)."""

    requests: int
    runs: int
    latencies_ms: tuple[float, ...]
    cpu_s: float


class NodeProcess:
    """One ``_scheduler_node.py`` process; talks to it over its stdin/stdout."""

    def __init__(self, server: RedisServer, node_id: str, max_concurrency: int | None = None) -> None:
        self.node_id = node_id
        args = [sys.executable, _NODE_SCRIPT, server.address, node_id]
        if max_concurrency is not None:
            args.append(str(max_concurrency))
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"node {self.node_id} exited (code {self.process.wait()})")
        return line.strip()

    def wait_ready(self) -> None:
        """Block until the node printed ``ready``."""
        line = self._line()
        if line != "ready":
            raise RuntimeError(f"node {self.node_id}: expected 'ready', got {line!r}")

    def mark(self) -> NodeReport:
        """The node's counters now."""
        assert self.process.stdin is not None
        self.process.stdin.write("mark\n")
        self.process.stdin.flush()
        data = orjson.loads(self._line())
        return NodeReport(
            requests=data["requests"],
            runs=data["runs"],
            latencies_ms=tuple(data["latencies_ms"]),
            cpu_s=data["cpu_s"],
        )

    def stop(self) -> None:
        """Close its stdin (it shuts down), then wait; kill it if it hangs."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def nodes(server: RedisServer, count: int, max_concurrency: int | None = None) -> Iterator[list[NodeProcess]]:
    """``count`` node processes, started at once; yields when all are ready."""
    with ExitStack() as stack:
        started: list[NodeProcess] = []
        for i in range(count):
            node = NodeProcess(server, f"bench-node-{i + 1}", max_concurrency)
            stack.callback(node.stop)
            started.append(node)
        for node in started:
            node.wait_ready()
        yield started


@contextmanager
def producer(server: RedisServer) -> Iterator[TickerManager]:
    """A producer's ``TickerManager``: it schedules, and runs nothing."""

    def configure(options: Any) -> None:
        options.configure_scheduler(node_identifier="bench-producer", producer_only=True)
        options.add_redis(configuration=server.address)

    container = add_tickerq(configure)
    try:
        yield container.ticker_manager()
    finally:
        container.shutdown_resources()


def redis_now_ms(client: redis.Redis) -> int:
    """Redis ``TIME`` in ms."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def finished_count(client: redis.Redis) -> tuple[int, int]:
    """How many jobs have finished (the finished index), and Redis ``TIME`` in ms; one round trip."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(KEYS.sched_finished)
        pipe.time()
        count, (seconds, micros) = pipe.execute()
    return int(count), int(seconds) * 1000 + int(micros) // 1000


def wait_finished(client: redis.Redis, n: int, timeout: float, poll: float = 0.002) -> int:
    """Poll until ``n`` jobs finished; returns the Redis time (ms) it was first seen."""
    deadline = time.monotonic() + timeout
    while True:
        count, now_ms = finished_count(client)
        if count >= n:
            return now_ms
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count} of {n} jobs finished within {timeout:.0f} s")
        time.sleep(poll)


def total(reports: Sequence[NodeReport], field: str) -> float:
    """The sum of one counter over nodes."""
    return sum(getattr(report, field) for report in reports)
