"""Cost of one node's heartbeat tick and of ``get_dead_nodes()`` as the registry grows.

For 10, 100, 1,000 and 10,000 registered nodes, with no dead node and with 1%
dead, this times on one node:

- ``tick, lease elsewhere``: ``HeartbeatService.tick()`` while another node holds
  the interval's scan lease, which is what every node but one does each interval;
- ``tick, scan``: the tick that takes the lease, so it also gets the dead list and
  (when there are dead nodes) runs the handlers and removes them;
- ``get_dead_nodes()``: the read-only query (``NodeRegistry.health()``);
- ``join``: a new node's first beat, which appends the node to the registry array
  in place (O(1) while the index set is intact; the array is rebuilt only when it
  is missing or damaged or the index was lost).

Round trips are counted by the client (requests written, see ``_common``) and the
server's ``evalsha`` count is shown beside them; times are wall-clock per call
(median, p95) and Redis-side script µs per call from ``INFO commandstats``.

Then, side by side at 1,000 registered nodes of which half are dead (``--compare-n``,
``--compare-dead``): ``get_dead_nodes()`` against TickerQ .NET's algorithm implemented
faithfully on the same layout (``HMGET`` of the registry plus the sliding renewal a
``RedisCache`` reader sends, then one ``HMGET`` per node), alternating call by call;
it prints both medians and the ratio (target ≥ 20x).

Run ``python benchmarks/heartbeat_scale.py`` (``--quick`` stops at 100 nodes;
``--compare-only`` runs just the comparison). Set ``TICKERQ_REDIS_SERVER`` to choose
the redis-server binary. Exits non-zero when a tick takes more than 2 round trips or
the round trips change with N.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta

import attrs
import orjson
import redis
from _common import (
    Cluster,
    RoundTripCounter,
    Timing,
    counting_client,
    describe_machine,
    fail,
    load_scripts,
    time_calls,
)

from tickerq._redis.entry import FIELDS, NOT_SET
from tickerq._redis.keys import Keys
from tickerq._runtime.dispatcher import Dispatcher
from tickerq.events import EventHub
from tickerq.nodes.heartbeat import HeartbeatService
from tickerq.nodes.registry import NodeRegistry
from tickerq.testing import RedisServer

INTERVAL = timedelta(seconds=60)
#: Long enough that no pre-registered node expires during a run.
HEARTBEAT_TTL = timedelta(hours=1)
KEYS = Keys("tickerq:")


@attrs.frozen(kw_only=True)
class Row:
    n: int
    dead: int
    operation: str
    timing: Timing


#: Where the services run dead-node handlers (and remove the handled nodes); a tick
#: is measured until its dispatched handling is done too.
DISPATCHER = Dispatcher("bench-callbacks")


def _service(client: redis.Redis, node: str) -> HeartbeatService:
    registry = NodeRegistry(client, KEYS, node, HEARTBEAT_TTL)
    service = HeartbeatService(registry, INTERVAL, EventHub(), dispatcher=DISPATCHER)
    service.add_dead_node_handler(lambda _node: None)  # succeeds, so the scan removes the dead nodes
    return service


def tick(service: HeartbeatService) -> None:
    """One tick, and the handling of the dead nodes it found (on the dispatcher)."""
    service.tick()
    if not DISPATCHER.wait_idle(10):
        fail("the dead-node handling of a tick did not finish within 10 s")


def measure(
    n: int,
    dead_fraction: float,
    admin: redis.Redis,
    client: redis.Redis,
    counter: RoundTripCounter,
    quick: bool,
) -> list[Row]:
    admin.flushall()
    cluster = Cluster.build(n, dead_fraction, int(HEARTBEAT_TTL.total_seconds() * 1000), KEYS)
    cluster.register(admin)
    max_calls, budget_s = (200, 0.3) if quick else (1000, 1.5)
    service = _service(client, cluster.live[0])
    expected_dead = len(cluster.dead)

    def timed(operation: str, call: Callable[[], object], setup: Callable[[], object] | None = None) -> Row:
        timing = time_calls(
            call, admin=admin, counter=counter, setup=setup, max_calls=max_calls, budget_s=budget_s
        )
        return Row(n=n, dead=expected_dead, operation=operation, timing=timing)

    rows: list[Row] = []

    def plain_tick() -> None:
        tick(service)
        if service.last_beat is None or service.last_beat.dead is not None:
            fail(f"N={n}: a tick scanned although another node held the lease")

    admin.set(KEYS.scan_lease, "another-node", px=600_000)
    rows.append(timed("tick, lease elsewhere", plain_tick))

    def free_lease() -> None:
        admin.delete(KEYS.scan_lease)
        if expected_dead:
            cluster.restore(admin)  # the previous scan removed the dead nodes

    def scan_tick() -> None:
        tick(service)
        beat = service.last_beat
        if beat is None or beat.dead is None or len(beat.dead) != expected_dead:
            fail(f"N={n}: the scanning tick reported {beat!r}, expected {expected_dead} dead")

    rows.append(timed("tick, scan", scan_tick, free_lease))
    cluster.restore(admin)

    def dead_nodes() -> None:
        if len(service.registry.health().dead) != expected_dead:
            fail(f"N={n}: get_dead_nodes() did not report {expected_dead} dead")

    rows.append(timed("get_dead_nodes()", dead_nodes))

    serial = itertools.count()
    joined: list[str] = []
    joiner: list[HeartbeatService] = []

    def next_joiner() -> None:
        if joined:
            cluster.restore(admin, drop=joined)  # keep N constant
            joined.clear()
        node = f"joiner-{next(serial):06d}.bench"
        joiner[:] = [_service(client, node)]
        joined.append(node)

    def join() -> None:
        tick(joiner[0])
        beat = joiner[0].last_beat
        if beat is None or not beat.registered:
            fail(f"N={n}: a new node's first beat did not register it")

    admin.set(KEYS.scan_lease, "another-node", px=600_000)
    next_joiner()
    rows.append(timed("join (first beat)", join, next_joiner))
    return rows


def tickerq_dotnet_dead_nodes(client: redis.Redis) -> list[str]:
    """TickerQ .NET's ``GetDeadNodesAsync`` read path, on the RedisCache layout.

    ``GetStringAsync("nodes:registry")`` is ``HMGET absexp sldexp data`` and, the registry
    having a sliding expiration, an ``EXPIRE``; then one ``GetStringAsync("hb:{node}")`` (an
    ``HMGET``) per node. (TickerQ then also rewrites the registry without the dead nodes; our
    ``get_dead_nodes()`` changes nothing, so that step is left out.)
    """
    _absexp, sldexp, data = client.hmget(KEYS.registry, FIELDS)
    if sldexp is not None and sldexp != NOT_SET:
        client.expire(KEYS.registry, int(sldexp) // 10_000_000)
    nodes = dict.fromkeys(orjson.loads(data)) if data else {}
    return [node for node in nodes if client.hmget(KEYS.heartbeat(node), FIELDS)[2] is None]


def compare_with_tickerq(
    admin: redis.Redis,
    client: redis.Redis,
    counter: RoundTripCounter,
    n: int,
    dead_fraction: float,
    rounds: int,
) -> float:
    """Time get_dead_nodes() against TickerQ's algorithm, alternating; print both and return the ratio."""
    admin.flushall()
    cluster = Cluster.build(n, dead_fraction, int(HEARTBEAT_TTL.total_seconds() * 1000), KEYS)
    cluster.register(admin)
    registry = NodeRegistry(client, KEYS, cluster.live[0], HEARTBEAT_TTL)
    expected = set(cluster.dead)
    ours_us: list[float] = []
    theirs_us: list[float] = []
    trips: dict[str, set[int]] = {"ours": set(), "theirs": set()}
    for i in range(rounds + 2):
        for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
            before = counter.count
            start = time.perf_counter_ns()
            dead = registry.dead() if side == "ours" else tickerq_dotnet_dead_nodes(client)
            took = (time.perf_counter_ns() - start) / 1000
            trips[side].add(counter.count - before)
            if set(dead) != expected or len(dead) != len(expected):
                fail(f"{side}: reported {len(dead)} dead nodes, expected {len(expected)}")
            if i >= 2:  # the first two rounds warm up
                (ours_us if side == "ours" else theirs_us).append(took)
    ours, theirs = statistics.median(ours_us), statistics.median(theirs_us)
    ratios = sorted(t / o for o, t in zip(ours_us, theirs_us, strict=True))
    print(
        f"get_dead_nodes() at {n:,} registered nodes, {len(expected):,} dead, {rounds} alternating rounds:\n"
        f"  tickerq                {ours / 1000:8.2f} ms median ({sorted(trips['ours'])} round trips)\n"
        f"  TickerQ's algorithm    {theirs / 1000:8.2f} ms median ({sorted(trips['theirs'])} round trips)\n"
        f"  ratio {theirs / ours:.1f}x (per round: {ratios[0]:.1f} .. {statistics.median(ratios):.1f} .. "
        f"{ratios[-1]:.1f}; target >= 20x)"
    )
    return theirs / ours


def check(rows: list[Row]) -> None:
    """The contract: a tick is at most 2 round trips, and no call's round trips depend on N."""
    by_operation: dict[tuple[str, bool], set[tuple[int, ...]]] = defaultdict(set)
    for row in rows:
        by_operation[row.operation, row.dead > 0].add(row.timing.round_trips)
        if row.operation.startswith("tick") and row.timing.round_trips[-1] > 2:
            fail(f"N={row.n}: {row.operation} took {row.timing.round_trips_text} round trips (target ≤ 2)")
    for (operation, with_dead), seen in by_operation.items():
        if len(seen) > 1:
            fail(f"{operation} (dead nodes: {with_dead}): round trips vary with N: {sorted(seen)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N up to 100, short timings")
    parser.add_argument("--sizes", type=int, nargs="+", help="default: 10 100 1000 10000")
    parser.add_argument("--dead-fraction", type=float, default=0.01, help="dead share, second run")
    parser.add_argument("--compare-only", action="store_true", help="only the side-by-side comparison")
    parser.add_argument("--compare-n", type=int, default=1_000, help="registered nodes in the comparison")
    parser.add_argument("--compare-dead", type=float, default=0.5, help="dead share in the comparison")
    parser.add_argument("--compare-rounds", type=int, default=30)
    args = parser.parse_args()
    sizes = args.sizes or ([10, 100] if args.quick else [10, 100, 1_000, 10_000])

    rows: list[Row] = []
    with RedisServer() as server, server.client() as admin, counting_client(server) as (client, counter):
        print(describe_machine(admin))
        load_scripts(admin)
        compare_with_tickerq(
            admin,
            client,
            counter,
            args.compare_n,
            args.compare_dead,
            10 if args.quick else args.compare_rounds,
        )
        if args.compare_only:
            return
        for n in sizes:
            for fraction in (0.0, args.dead_fraction):
                rows += measure(n, fraction, admin, client, counter, args.quick)

    print()
    print("| N | dead | call | round trips | evalsha/call | median µs | p95 µs | Redis µs/call |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        t = row.timing
        print(
            f"| {row.n:,} | {row.dead} | {row.operation} | {t.round_trips_text} | {t.scripts_per_call:.2f} "
            f"| {t.median_us:,.0f} | {t.p95_us:,.0f} | {t.redis_us:,.1f} |"
        )
    check(rows)
    print("\nOK: every tick is ≤ 2 round trips and no call's round trips depend on N")


if __name__ == "__main__":
    main()
