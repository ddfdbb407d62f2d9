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

The machine is shared, so its speed drifts within a run: the tickerq configurations and
Huey run interleaved, ``--rounds`` times (default 3), and each row gives the median and
the range; ratios are of medians. RQ (about 40 s for 10,000 jobs) runs once.

    python benchmarks/scheduler_throughput.py [--quick] [--jobs N] [--rounds R] [--nodes 1,3]
        [--max-concurrency C ...] [--no-peers]

Targets: >= 5x RQ, >= Huey's rate (aim 1.5x); 3 nodes beat 1; <= 3 round trips per job.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def _range(values: list[float]) -> str:
    if len(values) == 1:
        return ""
    return f"[{min(values):,.0f}-{max(values):,.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 1 round")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per run (default 10,000)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
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
    rounds = args.rounds or (1 if args.quick else 3)
    configs = [(int(count), None) for count in args.nodes.split(",")]
    configs += [(1, concurrency) for concurrency in args.max_concurrency]

    results: dict[tuple[int, int | None], list[Result]] = {config: [] for config in configs}
    peers: dict[str, list[float]] = {}
    peer_trips: dict[str, float] = {}
    with RedisServer() as server, server.client() as admin, counting_client(server) as (client, counter):
        print(describe_machine(admin))
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{n:,} no-op jobs due at once, {rounds} round(s)\n")
        mark = [0]

        def on_drain() -> None:
            mark[0] = counter.count

        for _ in range(rounds):
            for count, concurrency in configs:
                results[(count, concurrency)].append(tickerq_run(server, admin, n, count, concurrency))
            if not args.no_peers:
                from _peers import huey_tasks_per_second

                peers.setdefault("Huey", []).append(huey_tasks_per_second(client, n, on_drain))
                peer_trips["Huey"] = (counter.count - mark[0]) / n
        if not args.no_peers:
            from _peers import rq_jobs_per_second

            peers["RQ"] = [rq_jobs_per_second(client, n, on_drain)]
            peer_trips["RQ"] = (counter.count - mark[0]) / n
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")

    medians = {name: statistics.median(rates) for name, rates in peers.items()}
    header = f"{'':34} {'jobs/s (median)':>15} {'range':>15} {'round trips/job':>16}"
    for name in medians:
        header += f" {'vs ' + name:>8}"
    print(header)
    by_nodes: dict[int, float] = {}
    trips_by_nodes: dict[int, float] = {}
    for (count, concurrency), runs in results.items():
        rates = [result.jobs_per_second for result in runs]
        rate = statistics.median(rates)
        trips = statistics.median(result.round_trips_per_job for result in runs)
        if concurrency is None:
            by_nodes[count], trips_by_nodes[count] = rate, trips
        name = f"tickerq, {count} node{'s' if count > 1 else ''}"
        if concurrency is not None:
            name += f", max_concurrency {concurrency}"
        line = f"{name:34} {rate:15,.0f} {_range(rates):>15} {trips:16.2f}"
        line += "".join(f" {rate / peer:7.2f}x" for peer in medians.values())
        last = runs[-1]
        print(
            f"{line}   ({last.scripts_per_job:.2f} evalsha/job; runs per node {last.runs_per_node}; "
            f"CPU: nodes {last.node_cpu:.0%}, redis {last.redis_cpu:.0%})"
        )
    labels = {"Huey": "Huey 3.5, 1 thread worker", "RQ": "RQ 3.0 SimpleWorker"}
    for name, rates in peers.items():
        line = f"{labels[name]:34} {medians[name]:15,.0f} {_range(rates):>15} {peer_trips[name]:16.2f}"
        print(line + "".join(f" {medians[name] / peer:7.2f}x" for peer in medians.values()))
    _targets(by_nodes, trips_by_nodes, medians)


def _targets(by_nodes: dict[int, float], trips: dict[int, float], peers: dict[str, float]) -> None:
    def check(what: str, ok: bool) -> None:
        print(f"  {'met ' if ok else 'MISS'}  {what}")

    print("\nTargets (medians):")
    for count, rate in sorted(by_nodes.items()):
        label = f"{count} node{'s' if count > 1 else ''}"
        if "RQ" in peers:
            check(f"{label}: >= 5x RQ", rate >= 5 * peers["RQ"])
        if "Huey" in peers:
            check(f"{label}: >= Huey", rate >= peers["Huey"])
            check(f"{label}: aim 1.5x Huey", rate >= 1.5 * peers["Huey"])
        check(f"{label}: <= 3 round trips per job", trips[count] <= 3)
    if 1 in by_nodes and 3 in by_nodes:
        check("3 nodes beat 1", by_nodes[3] > by_nodes[1])


if __name__ == "__main__":
    main()
