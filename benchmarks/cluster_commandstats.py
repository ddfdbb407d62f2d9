"""Redis time a whole cluster of N nodes spends on liveness in one heartbeat interval.

N simulated nodes (10, 100, 1,000, 10,000), each a real ``HeartbeatService`` on
one shared client connection, tick once each in random order, every tick with
the scan lease as the heartbeat thread does, so one node scans (and, when there
are dead nodes, runs the handlers and removes them). ``CONFIG RESETSTAT`` runs
before the interval and ``INFO commandstats`` is read after it. The Redis time is
the ``evalsha``/``eval`` usec (which include the commands the scripts run); the
commands the scripts ran are counted too, to show the O(N) scan happening once.

Growth must be linear: 10 times the nodes, about 10 times the Redis time (a
quadratic registry would show about 100). Each N runs with no dead node and with
1% of the registered nodes dead; an interval is repeated and the median kept.
A third run starts every node on an empty Redis (a cold start, or a rollout
with new node ids): every beat is then a node's first. The first one creates the
registry; each later one appends its node to the array in place, so a cold start
must grow linearly too, and is held to the same check.

Run ``python benchmarks/cluster_commandstats.py`` (``--quick`` stops at 100 nodes).
Exits non-zero when an interval's Redis time (steady or cold start) grows more
than 2.5 times faster than N, or when anything but exactly one node scanned.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import timedelta

import attrs
import redis
from _common import (
    Cluster,
    RoundTripCounter,
    counting_client,
    describe_machine,
    fail,
    load_scripts,
    script_stats,
)

from tickerq._redis.keys import Keys
from tickerq._runtime.dispatcher import Dispatcher
from tickerq.events import EventHub
from tickerq.nodes.heartbeat import HeartbeatService
from tickerq.nodes.registry import NodeRegistry
from tickerq.testing import RedisServer

#: Long, so that the scan lease (0.8 x interval) outlasts every simulated interval
#: even on a busy machine (10,000 ticks on one connection take seconds). The
#: interval's length changes no Redis work.
INTERVAL = timedelta(minutes=10)
HEARTBEAT_TTL = INTERVAL + timedelta(seconds=20)  # interval + the default grace
KEYS = Keys("tickerq:")


@attrs.frozen(kw_only=True)
class Interval:
    variant: str
    n: int
    dead: int
    scripts: int  # evalsha/eval calls: one per node, plus one remove when dead nodes were found
    round_trips: int
    redis_us: float
    inner_commands: int
    exists_calls: int
    wall_s: float


def simulate(
    n: int,
    dead_fraction: float,
    repeats: int,
    clients: tuple[redis.Redis, redis.Redis, RoundTripCounter],
    *,
    cold: bool = False,
) -> Interval:
    """Median of ``repeats`` intervals; ``cold``: an empty Redis, so every beat is a node's first."""
    admin, client, counter = clients
    cluster = Cluster.build(n, dead_fraction, int(HEARTBEAT_TTL.total_seconds() * 1000), KEYS)
    admin.flushall()
    if not cold:
        cluster.register(admin)
    services = []
    dispatcher = Dispatcher("bench-callbacks")  # one for all: handlers and events run there
    for node in cluster.live:
        registry = NodeRegistry(client, KEYS, node, HEARTBEAT_TTL)
        service = HeartbeatService(registry, INTERVAL, EventHub(), dispatcher=dispatcher)
        service.add_dead_node_handler(lambda _node: None)
        services.append(service)
    random.Random(n).shuffle(services)
    variant = "cold start" if cold else "steady, dead nodes" if cluster.dead else "steady"

    runs: list[Interval] = []
    # A steady interval is warmed up once first; a cold start needs no warm-up (scripts are loaded).
    for run in range(repeats if cold else repeats + 1):
        if cold:
            admin.flushall()
        admin.delete(KEYS.scan_lease)  # the lease of the previous interval has lapsed
        if cluster.dead:
            cluster.restore(admin)  # the previous interval's scan removed the dead nodes
        admin.config_resetstat()
        before = counter.count
        start = time.perf_counter()
        for service in services:
            service.tick()
        if not dispatcher.wait_idle(30):  # the scanner's dead-node handling, off the heartbeat thread
            fail(f"N={n}: the dead-node handling did not finish within 30 s")
        wall_s = time.perf_counter() - start
        round_trips = counter.count - before
        scripts, usec, inner = script_stats(admin)
        scanned = [
            s.last_beat.dead for s in services if s.last_beat is not None and s.last_beat.dead is not None
        ]
        if len(scanned) != 1 or scanned[0] != cluster.dead:
            fail(f"N={n} ({variant}): {len(scanned)} nodes scanned in one interval (expected exactly one)")
        if cold or run:
            runs.append(
                Interval(
                    variant=variant,
                    n=n,
                    dead=len(cluster.dead),
                    scripts=scripts,
                    round_trips=round_trips,
                    redis_us=usec,
                    inner_commands=sum(inner.values()),
                    exists_calls=inner.get("exists", 0),
                    wall_s=wall_s,
                )
            )
    median = statistics.median(run.redis_us for run in runs)
    return attrs.evolve(min(runs, key=lambda run: abs(run.redis_us - median)), redis_us=median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N up to 100, fewer intervals")
    parser.add_argument("--sizes", type=int, nargs="+", help="default: 10 100 1000 10000")
    parser.add_argument("--dead-fraction", type=float, default=0.01, help="dead share, second run")
    parser.add_argument("--repeats", type=int, help="intervals per N (default 5)")
    parser.add_argument(
        "--no-cold", action="store_true", help="skip the cold-start intervals (every node's first beat)"
    )
    args = parser.parse_args()
    sizes = args.sizes or ([10, 100] if args.quick else [10, 100, 1_000, 10_000])
    repeats = args.repeats or (3 if args.quick else 5)

    results: list[Interval] = []
    with RedisServer() as server, server.client() as admin, counting_client(server) as (client, counter):
        print(describe_machine(admin))
        load_scripts(admin)
        clients = (admin, client, counter)
        for fraction in (0.0, args.dead_fraction):
            for n in sizes:
                results.append(simulate(n, fraction, repeats, clients))
        if not args.no_cold:
            for n in sizes:
                results.append(simulate(n, 0.0, repeats, clients, cold=True))

    print()
    print(
        "| interval | N | dead | round trips | evalsha calls | commands in scripts | EXISTS "
        "| Redis µs / interval | Redis µs / node | x prev N | Python wall ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    failures = []
    previous: Interval | None = None
    for result in results:
        growth = ""
        if previous is not None and previous.variant == result.variant:
            ratio = result.redis_us / previous.redis_us
            growth = f"{ratio:.1f}"
            if ratio > 2.5 * result.n / previous.n:
                failures.append(
                    f"{result.variant}, N {previous.n:,} -> {result.n:,}: "
                    f"Redis time x{ratio:.1f}, N x{result.n / previous.n:g}"
                )
        r = result
        print(
            f"| {r.variant} | {r.n:,} | {r.dead} | {r.round_trips:,} | {r.scripts:,} | {r.inner_commands:,} "
            f"| {r.exists_calls:,} | {r.redis_us:,.0f} | {r.redis_us / r.n:.1f} | {growth} "
            f"| {r.wall_s * 1000:,.0f} |"
        )
        previous = result
    if failures:
        fail("Redis time per interval grows faster than linearly: " + "; ".join(failures))
    kinds = "steady and cold-start interval" if not args.no_cold else "steady interval"
    print(f"\nOK: Redis time per {kinds} grows linearly with N")


if __name__ == "__main__":
    main()
