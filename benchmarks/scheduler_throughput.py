"""The scheduler end to end: N no-op timed jobs due at once, drained by 1 and by 3 nodes.

Each node is a real process (``_scheduler_node.py``: a container with ``add_redis`` and a
no-op ticker function, default options, so ``max_concurrency`` = the CPU count). The nodes
start and idle; this process (a producer container) schedules N jobs with ``schedule_many``,
all due at one instant T a moment ahead (not timed). The time counted runs from T on Redis's
clock to the moment the last job is DONE in the store (the finished index polled every 2 ms).

Round trips per job are counted in the node processes (every request their connections
write, between a mark taken before T and one after the last job: the drain only, heartbeats
and idle loops included), and cross-checked on the server (``evalsha`` calls per job from
``INFO commandstats``).

In the same run, on the same redis-server: RQ's ``SimpleWorker`` and Huey's consumer (one
thread worker) drain N no-op jobs (``_peers.py``); their requests are counted on their
client the same way, from the start of the drain. Needs ``pip install -e ".[bench]"``.

    python benchmarks/scheduler_throughput.py [--quick] [--jobs N] [--nodes 1,3] [--no-peers]

Targets: >= 5x RQ, >= Huey's rate (aim 1.5x); 3 nodes beat 1; <= 3 round trips per job.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

import attrs
import redis
from _common import counting_client, describe_machine
from _scheduler_bench import nodes, producer, redis_now_ms, total, wait_finished

from tickerq import TimeTicker
from tickerq.testing import RedisServer

FUNCTION = "BenchNoop"


@attrs.frozen(kw_only=True)
class Result:
    """One tickerq run."""

    jobs_per_second: float
    round_trips_per_job: float  # requests the nodes wrote, per job
    scripts_per_job: float  # evalsha calls the server counted, per job
    runs_per_node: list[int]
    node_cpu: float  # CPU seconds of all nodes per second of the run (between the marks)
    redis_cpu: float  # the same for redis-server


def _redis_cpu(admin: redis.Redis) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def tickerq_run(
    server: RedisServer, admin: redis.Redis, n: int, node_count: int, concurrency: int | None
) -> Result:
    """``n`` jobs due at once, drained by ``node_count`` node processes."""
    admin.flushall()
    with nodes(server, node_count, concurrency) as processes, producer(server) as manager:
        lead_ms = 1000 + n // 10  # scheduling takes well under this
        due_ms = redis_now_ms(admin) + lead_ms
        at = datetime.fromtimestamp(due_ms / 1000, UTC)
        manager.schedule_many(TimeTicker(function=FUNCTION, at=at) for _ in range(n))
        before = [node.mark() for node in processes]
        admin.config_resetstat()
        redis_cpu_before = _redis_cpu(admin)
        if redis_now_ms(admin) >= due_ms - 50:
            raise RuntimeError(f"scheduling {n} jobs took longer than the {lead_ms} ms lead")
        done_ms = wait_finished(admin, n, timeout=120 + n / 50)
        after = [node.mark() for node in processes]
        stats = admin.info("commandstats")
        redis_cpu = _redis_cpu(admin) - redis_cpu_before
    runs = [a.runs - b.runs for a, b in zip(after, before, strict=True)]
    if sum(runs) != n:
        raise RuntimeError(f"{sum(runs)} runs for {n} jobs")
    seconds = (done_ms - due_ms) / 1000
    return Result(
        jobs_per_second=n / seconds,
        round_trips_per_job=(total(after, "requests") - total(before, "requests")) / n,
        scripts_per_job=int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) / n,
        runs_per_node=runs,
        node_cpu=(total(after, "cpu_s") - total(before, "cpu_s")) / seconds,
        redis_cpu=redis_cpu / seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 jobs instead of 10,000")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per run (default 10,000)")
    parser.add_argument("--nodes", default="1,3", help="node counts to run (default 1,3)")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        action="append",
        default=[],
        help="also run 1 node with this max_concurrency (repeatable; default: the CPU count only)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip RQ and Huey")
    args = parser.parse_args()
    n = args.jobs or (2_000 if args.quick else 10_000)
    node_counts = [int(count) for count in args.nodes.split(",")]

    with RedisServer() as server, server.client() as admin, counting_client(server) as (client, counter):
        print(describe_machine(admin))
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{n:,} no-op jobs due at once\n")
        rows: list[tuple[str, float, float, str]] = []
        by_nodes: dict[int, Result] = {}
        configs = [(count, None) for count in node_counts] + [(1, c) for c in args.max_concurrency]
        for count, concurrency in configs:
            result = tickerq_run(server, admin, n, count, concurrency)
            if concurrency is None:
                by_nodes[count] = result
            detail = (
                f"{result.scripts_per_job:.2f} evalsha/job; runs per node {result.runs_per_node}; "
                f"CPU: nodes {result.node_cpu:.0%}, redis {result.redis_cpu:.0%}"
            )
            name = f"tickerq, {count} node{'s' if count > 1 else ''}"
            if concurrency is not None:
                name += f", max_conc. {concurrency}"
            rows.append((name, result.jobs_per_second, result.round_trips_per_job, detail))
        peers: dict[str, float] = {}
        if not args.no_peers:
            from _peers import huey_tasks_per_second, rq_jobs_per_second

            mark = [0]

            def on_drain() -> None:
                mark[0] = counter.count

            rate = rq_jobs_per_second(client, n, on_drain)
            peers["RQ"] = rate
            rows.append(("RQ 3.0 SimpleWorker", rate, (counter.count - mark[0]) / n, ""))
            rate = huey_tasks_per_second(client, n, on_drain)
            peers["Huey"] = rate
            rows.append(("Huey 3.5, 1 thread worker", rate, (counter.count - mark[0]) / n, ""))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")

    header = f"{'':28} {'jobs/s':>8} {'round trips/job':>16}"
    for name in peers:
        header += f" {'vs ' + name:>8}"
    print(header)
    for name, rate, trips, detail in rows:
        line = f"{name:28} {rate:8,.0f} {trips:16.2f}"
        for peer in peers.values():
            line += f" {rate / peer:7.2f}x"
        print(line + (f"   ({detail})" if detail else ""))
    _targets(by_nodes, peers)


def _targets(by_nodes: dict[int, Result], peers: dict[str, float]) -> None:
    def check(what: str, ok: bool) -> None:
        print(f"  {'met ' if ok else 'MISS'}  {what}")

    print("\nTargets:")
    for count, result in sorted(by_nodes.items()):
        label = f"{count} node{'s' if count > 1 else ''}"
        if "RQ" in peers:
            check(f"{label}: >= 5x RQ", result.jobs_per_second >= 5 * peers["RQ"])
        if "Huey" in peers:
            check(f"{label}: >= Huey (aim 1.5x)", result.jobs_per_second >= peers["Huey"])
        check(f"{label}: <= 3 round trips per job", result.round_trips_per_job <= 3)
    if 1 in by_nodes and 3 in by_nodes:
        check("3 nodes beat 1", by_nodes[3].jobs_per_second > by_nodes[1].jobs_per_second)


if __name__ == "__main__":
    main()
