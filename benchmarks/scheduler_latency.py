"""Start latency after the due time, for jobs scheduled a few ms ahead from another process.

Worker nodes (real processes, ``_scheduler_node.py``, default options) start and idle. This
process is a producer container: it schedules one ``BenchLatency`` job at a time,
``at=timedelta(milliseconds=d)`` with ``d`` drawn from 5-20 ms, then waits 20-40 ms before the
next (so the samples are spaced out and each finds the workers idle). The function records
``time.time()`` at its start minus ``context.scheduled_for`` (the due time on Redis's clock:
the redis-server runs on this machine, so both read the same clock). A negative figure
would be a job started early.

What it exercises: the wake-up (the add script PUBLISHes the due time; the node's wake
subscriber wakes the loop), the loop sleeping until the due time it learnt from the claim
reply, the claim, and the hand-over to a worker thread.

    python benchmarks/scheduler_latency.py [--quick] [--samples N] [--nodes 1,3]

Target: p99 <= 50 ms (aim 20 ms).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from datetime import timedelta

from _common import describe_machine, percentile
from _scheduler_bench import nodes, producer

from tickerq.testing import RedisServer

FUNCTION = "BenchLatency"


def latencies(server: RedisServer, samples: int, node_count: int, seed: int) -> list[float]:
    """Start latencies (ms) of ``samples`` jobs, with ``node_count`` idle worker nodes."""
    rng = random.Random(seed)
    with server.client() as admin:
        admin.flushall()
    with nodes(server, node_count) as processes, producer(server) as manager:
        time.sleep(0.5)  # let the nodes' first loop iterations and subscriptions settle
        for _ in range(samples):
            manager.schedule(FUNCTION, at=timedelta(milliseconds=rng.uniform(5, 20)))
            time.sleep(rng.uniform(0.020, 0.040))
        deadline = time.monotonic() + 30
        while True:
            reports = [node.mark() for node in processes]
            if sum(report.runs for report in reports) >= samples:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sum(r.runs for r in reports)} of {samples} jobs ran within 30 s")
            time.sleep(0.1)
    return [late for report in reports for late in report.latencies_ms]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 samples instead of 400")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--nodes", default="1,3", help="worker node counts to run (default 1,3)")
    args = parser.parse_args()
    samples = args.samples or (100 if args.quick else 400)

    with RedisServer() as server, server.client() as admin:
        print(describe_machine(admin))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{samples} jobs, each due 5-20 ms after it was scheduled, 20-40 ms apart\n")
    print(f"{'worker nodes':14} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'min':>8}   (ms after due)")
    for count in (int(c) for c in args.nodes.split(",")):
        with RedisServer() as server:
            late = latencies(server, samples, count, seed=count)
        row = [percentile(late, 50), percentile(late, 90), percentile(late, 99), max(late), min(late)]
        print(f"{count:<14} " + " ".join(f"{value:8.2f}" for value in row))
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
