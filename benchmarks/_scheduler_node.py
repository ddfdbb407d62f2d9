"""A scheduler node in a process of its own, for the end-to-end scheduler benchmarks.

Usage: python benchmarks/_scheduler_node.py ADDRESS NODE_ID [MAX_CONCURRENCY]

A container with ``add_redis`` and two ticker functions, otherwise default
options (``max_concurrency`` defaults to the CPU count):

- ``BenchNoop`` does nothing but count itself (in this process);
- ``BenchLatency`` records how late it started: this machine's wall clock (the
  same clock the local redis-server's ``TIME`` reads) minus
  ``context.scheduled_for``.

Every request this process writes to Redis is counted (one write is one round
trip: redis-py waits for a reply before it writes the next request, and a
pipeline is one write). Talks on stdin/stdout, one line each:

- prints ``ready`` once ``init_resources()`` returned;
- on ``mark`` prints ``{"requests": n, "runs": n, "latencies_ms": [...], "cpu_s": s}``
  (``cpu_s``: the process's user + system CPU time so far);
- on end of input shuts down and exits.

With ``TICKERQ_BENCH_PROFILE=path``, the time between the first and the second
``mark`` is profiled with yappi (every thread, CPU time) and written to ``path``
(pstats format; ``pip install yappi``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import orjson
import redis.connection

from tickerq import FunctionRegistry, TickerFunctionContext, add_tickerq, ticker_function

functions = FunctionRegistry()
_lock = threading.Lock()
_requests = 0
_runs = 0
_latencies_ms: list[float] = []


def _count_requests() -> None:
    """Count every request any connection of this process writes."""
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        global _requests  # noqa: PLW0603 - a benchmark's own counter
        _requests += 1  # the GIL makes this good enough: only the total matters
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]


@ticker_function("BenchNoop", registry=functions)
def bench_noop(context: TickerFunctionContext) -> None:
    """Counts itself: the benchmark measures the scheduler, not the work."""
    global _runs  # noqa: PLW0603
    with _lock:
        _runs += 1


@ticker_function("BenchLatency", registry=functions)
def bench_latency(context: TickerFunctionContext) -> None:
    """Records how long after its due time it started."""
    late_ms = (time.time() - context.scheduled_for.timestamp()) * 1000
    global _runs  # noqa: PLW0603
    with _lock:
        _runs += 1
        _latencies_ms.append(late_ms)


def _profile(path: str, mark: int) -> None:
    import yappi  # type: ignore[import-not-found]

    if mark == 1:
        yappi.set_clock_type("cpu")
        yappi.start()
    elif mark == 2:
        yappi.stop()
        yappi.get_func_stats().save(path, type="pstat")


def main() -> None:
    address, node = sys.argv[1:3]
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else None
    _count_requests()

    def configure(options: Any) -> None:
        if concurrency is None:
            options.configure_scheduler(node_identifier=node)
        else:
            options.configure_scheduler(node_identifier=node, max_concurrency=concurrency)
        options.add_redis(configuration=address)

    container = add_tickerq(configure, functions=functions)
    container.init_resources()
    print("ready", flush=True)
    profile = os.environ.get("TICKERQ_BENCH_PROFILE")
    marks = 0
    for line in sys.stdin:
        if line.strip() == "mark":
            marks += 1
            if profile:
                _profile(profile, marks)
            with _lock:
                report = {
                    "requests": _requests,
                    "runs": _runs,
                    "latencies_ms": list(_latencies_ms),
                    "cpu_s": sum(os.times()[:2]),
                }
            print(orjson.dumps(report).decode(), flush=True)
    container.shutdown_resources()


if __name__ == "__main__":
    main()
