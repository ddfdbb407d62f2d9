"""A scheduler node in a process of its own, for multi-process scheduler tests.

Usage: python tests/scheduler_node.py CONFIGURATION NODE_ID INTERVAL GRACE

Environment: ``TICKERQ_TEST_CLOCK_OFFSET`` (seconds) shifts this node's wall
clock, to show that nothing depends on it; ``TICKERQ_TEST_MAX_CONCURRENCY``
sets ``max_concurrency``; ``TICKERQ_TEST_RUN_LOG`` is the file where ``Record``
appends its runs (a file, not Redis: it works while Redis is down).

Its ticker functions record what they do in Redis (under ``test:``), with
Redis ``TIME`` where times are compared across nodes. Prints "ready" once
started and runs until stdin closes or it is killed.
"""

from __future__ import annotations

import os
import sys
import time

from dependency_injector import providers

from tickerq import FunctionRegistry, TickerFunctionContext, add_tickerq, ticker_function
from tickerq._runtime.clock import SystemClock

functions = FunctionRegistry()


def _client(context: TickerFunctionContext):  # type: ignore[no-untyped-def]
    return context.container.redis_context().client


def _now_us(client) -> int:  # type: ignore[no-untyped-def]
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


@ticker_function("Tick", registry=functions)
def tick(context: TickerFunctionContext) -> None:
    """Counts each cron occurrence by its second."""
    client = _client(context)
    client.hincrby("test:ticks", str(int(context.scheduled_for.timestamp())), 1)
    client.rpush("test:tick-nodes", context.node)


@ticker_function("Noop", registry=functions)
def noop(context: TickerFunctionContext) -> None:
    """Counts runs per job and per node."""
    client = _client(context)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby("test:runs", context.job_id, 1)
    pipe.hincrby("test:by-node", context.node, 1)
    pipe.execute()


@ticker_function("Slow", registry=functions)
def slow(context: TickerFunctionContext) -> None:
    """Records each start (node, is_rerun), then works for ``request`` seconds."""
    client = _client(context)
    client.rpush(f"test:starts:{context.job_id}", f"{context.node}|{int(context.is_rerun)}")
    context.cancelled.wait(float(context.request))
    client.rpush(f"test:ends:{context.job_id}", context.node)


@ticker_function("Record", registry=functions)
def record(context: TickerFunctionContext) -> None:
    """Works for ``request`` seconds, then appends ``job_id|node|is_rerun`` to the run log."""
    context.cancelled.wait(float(context.request or 0))
    line = f"{context.job_id}|{context.node}|{int(context.is_rerun)}\n".encode()
    fd = os.open(os.environ["TICKERQ_TEST_RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines of several processes never mix
    finally:
        os.close(fd)


@ticker_function("Settle", cluster_concurrency=1, registry=functions)
def settle(context: TickerFunctionContext) -> None:
    """Records its running interval on Redis's clock."""
    client = _client(context)
    entered = _now_us(client)
    time.sleep(0.02)
    client.rpush("test:settle", f"{entered},{_now_us(client)},{context.node}")


class OffsetClock(SystemClock):
    """The system clock with the wall time shifted."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return super().time() + self.offset


def main() -> None:
    configuration, node, interval, grace = sys.argv[1:5]
    offset = float(os.environ.get("TICKERQ_TEST_CLOCK_OFFSET", "0"))
    concurrency = int(os.environ.get("TICKERQ_TEST_MAX_CONCURRENCY", "2"))

    def configure(options):  # type: ignore[no-untyped-def]
        options.configure_scheduler(node_identifier=node, max_concurrency=concurrency, shutdown_timeout=1)
        options.add_redis(
            configuration=configuration,
            node_heartbeat_interval=float(interval),
            node_heartbeat_grace=float(grace),
        )

    container = add_tickerq(configure, functions=functions)
    container.clock.override(providers.Object(OffsetClock(offset)))
    container.init_resources()
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    container.shutdown_resources()


if __name__ == "__main__":
    main()
