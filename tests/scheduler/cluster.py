"""Helpers of the multi-node scheduler tests: node processes, producers, statuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tickerq import FunctionRegistry, TickerManager, TickerStatus, add_tickerq
from tickerq.testing import RedisServer

NODE = str(Path(__file__).parent.parent / "scheduler_node.py")


def status(manager: TickerManager, job_id: str) -> TickerStatus | None:
    record = manager.get(job_id)
    return None if record is None else record.status


def spawn(server: RedisServer, node: str, *, interval: float = 0.3, **env: str) -> subprocess.Popen[str]:
    """A node process (tests/scheduler_node.py) on ``server``, heartbeat interval = grace = ``interval``."""
    return subprocess.Popen(
        [sys.executable, NODE, server.address, node, str(interval), str(interval)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def start_nodes(server: RedisServer, processes: list[subprocess.Popen[str]], count: int, **env: Any) -> None:
    """Start ``count`` node processes ``node-0``...; ``env["node-i"]`` is node i's extra environment."""
    for i in range(count):
        extra = env.get(f"node-{i}", {})
        processes.append(spawn(server, f"node-{i}", **extra))
    for process in processes[-count:]:
        assert "ready" == process.stdout.readline().strip()  # type: ignore[union-attr]


def producer_for(server: RedisServer) -> tuple[Any, TickerManager]:
    """A container that only schedules and queries (no init_resources); the caller shuts it down."""
    container = add_tickerq(lambda o: o.add_redis(configuration=server.address), functions=FunctionRegistry())
    return container, container.ticker_manager()
