"""Helpers shared by the benchmarks: the machine, a counting client, a pre-registered cluster, stats.

Round trips are counted on the client: a connection class counts every request
it writes (``send_packed_command``), and redis-py waits for the reply before
it writes the next request, so one write is one round trip (a pipeline is one
write). Redis-side time comes from ``INFO commandstats``; only ``evalsha`` and
``eval`` are summed there, because the commands a Lua script runs are also
listed on their own and their time is already inside the script's.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import orjson
import redis

from tickerq._redis.entry import duration_ticks, unix_ns_to_ticks
from tickerq._redis.keys import Keys
from tickerq._redis.scripts import LuaScript
from tickerq.durations import to_milliseconds
from tickerq.nodes.registry import REGISTRY_TTL, NodeRegistry, process_token
from tickerq.testing import RedisServer, find_redis_server

__all__ = [
    "SCRIPT_COMMANDS",
    "Cluster",
    "RoundTripCounter",
    "Timing",
    "counting_client",
    "describe_machine",
    "fail",
    "load_scripts",
    "percentile",
    "script_stats",
    "time_calls",
]

#: The top-level commands tickerq's registry sends; their usec include the Lua's inner commands.
SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval")

_CHUNK = 1000


class RoundTripCounter:
    """How many requests the counting client has written."""

    def __init__(self) -> None:
        self.count = 0


@contextmanager
def counting_client(server: RedisServer) -> Iterator[tuple[redis.Redis, RoundTripCounter]]:
    """A client for ``server`` whose connections count the requests they write.

    The pool is ours, so it is disconnected on exit.
    """
    counter = RoundTripCounter()

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    pool = redis.ConnectionPool(
        host=server.host, port=server.port, password=server.password, connection_class=CountingConnection
    )
    client = redis.Redis(connection_pool=pool)
    try:
        client.ping()  # connect (and its handshake) before anything is counted
        yield client, counter
    finally:
        client.close()
        pool.disconnect()


def describe_machine(admin: redis.Redis) -> str:
    """One line naming the machine, Python, Redis and the client library."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        import hiredis  # noqa: F401

        parser = "hiredis parser"
    except ImportError:
        parser = "pure-Python parser"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
        f"Python {platform.python_version()}, "
        f"Redis {admin.info('server')['redis_version']} ({find_redis_server()}, loopback), "
        f"redis-py {redis.__version__} with {parser}"
    )


def load_scripts(admin: redis.Redis) -> None:
    """Load the registry's scripts, so no measured call pays for a NOSCRIPT retry."""
    for name in ("heartbeat", "nodes", "remove_nodes"):  # (with their included libraries)
        script = LuaScript(name, package="tickerq.nodes")
        loaded = admin.script_load(script.source)
        if loaded != script.sha:
            fail(f"{name}.lua: the server computed SHA {loaded}, tickerq calls {script.sha}")


def script_stats(admin: redis.Redis) -> tuple[int, int, dict[str, int]]:
    """Read ``INFO commandstats``: script calls, script usec, and calls of every other command."""
    stats = admin.info("commandstats")
    calls = sum(int(stats[name]["calls"]) for name in SCRIPT_COMMANDS if name in stats)
    usec = sum(int(stats[name]["usec"]) for name in SCRIPT_COMMANDS if name in stats)
    others = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name not in SCRIPT_COMMANDS and not name.startswith(("cmdstat_info", "cmdstat_config"))
    }
    return calls, usec, others


def percentile(samples: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


@attrs.frozen(kw_only=True)
class Timing:
    """What :func:`time_calls` measured."""

    calls: int
    round_trips: tuple[int, ...]  # distinct round-trip counts seen per call
    scripts_per_call: float  # evalsha/eval calls per call, from the server's side
    median_us: float
    p95_us: float
    redis_us: float  # Redis-side script usec per call

    @property
    def round_trips_text(self) -> str:
        """``"1"``, or ``"1-2"`` when calls differed."""
        low, high = self.round_trips[0], self.round_trips[-1]
        return str(low) if low == high else f"{low}-{high}"


def time_calls(
    call: Callable[[], object],
    *,
    admin: redis.Redis,
    counter: RoundTripCounter,
    setup: Callable[[], object] | None = None,
    max_calls: int = 1000,
    budget_s: float = 1.5,
    min_calls: int = 20,
) -> Timing:
    """Time ``call`` repeatedly; ``setup`` runs untimed before each call, on ``admin``.

    ``setup`` must not run scripts (it would count as the call's Redis time).
    """
    if setup is not None:
        setup()
    call()  # warm-up
    admin.config_resetstat()
    samples: list[float] = []
    trips: set[int] = set()
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_calls and (len(samples) < min_calls or time.perf_counter() < deadline):
        if setup is not None:
            setup()
        before = counter.count
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
        trips.add(counter.count - before)
    scripts, usec, _ = script_stats(admin)
    return Timing(
        calls=len(samples),
        round_trips=tuple(sorted(trips)),
        scripts_per_call=scripts / len(samples),
        median_us=statistics.median(samples),
        p95_us=percentile(samples, 95),
        redis_us=usec / len(samples),
    )


@attrs.define
class Cluster:
    """N registered nodes written straight into Redis, as N first beats would leave them.

    The state is written with pipelines (one round trip per 1,000 nodes instead of
    one per node, and dead nodes are simply left without a heartbeat key), then
    checked through :meth:`NodeRegistry.health`. The registry's raw bytes are kept
    so that :meth:`restore` can put them back.
    """

    keys: Keys
    ids: tuple[str, ...]
    dead: tuple[str, ...]
    heartbeat_ttl_ms: int
    registry_raw: bytes = b""

    @classmethod
    def build(cls, n: int, dead_fraction: float, heartbeat_ttl_ms: int, keys: Keys) -> Cluster:
        """N node ids, of which ``dead_fraction`` (at least one if > 0), spread evenly, are dead."""
        ids = tuple(f"worker-{i:05d}.bench" for i in range(n))
        n_dead = max(1, round(n * dead_fraction)) if dead_fraction > 0 else 0
        dead = tuple(ids[(i * n) // n_dead + n // (2 * n_dead)] for i in range(n_dead)) if n_dead else ()
        return cls(keys=keys, ids=ids, dead=dead, heartbeat_ttl_ms=heartbeat_ttl_ms)

    @property
    def live(self) -> tuple[str, ...]:
        dead = set(self.dead)
        return tuple(node for node in self.ids if node not in dead)

    def register(self, admin: redis.Redis) -> None:
        """Write heartbeats of the live nodes, tickerq's node set and the registry; check them.

        Values are written in the RedisCache layout the heartbeat script writes (see
        ``tickerq._redis.entry``).
        """
        keys = self.keys
        registry_ms = to_milliseconds(REGISTRY_TTL)
        now_ms = int(time.time() * 1000)
        absexp = unix_ns_to_ticks((now_ms + self.heartbeat_ttl_ms) * 1_000_000)
        live = self.live
        for start in range(0, len(live), _CHUNK):
            with admin.pipeline(transaction=False) as pipe:
                for node in live[start : start + _CHUNK]:
                    payload = orjson.dumps({"Ts": now_ms, "Node": node, "Instance": process_token()})
                    key = keys.heartbeat(node)
                    pipe.hset(key, mapping={"absexp": absexp, "sldexp": -1, "data": payload})
                    pipe.pexpire(key, self.heartbeat_ttl_ms)
                pipe.execute()
        self.registry_raw = orjson.dumps(list(self.ids))
        with admin.pipeline(transaction=False) as pipe:
            for start in range(0, len(self.ids), _CHUNK):
                pipe.sadd(keys.tickerq_nodes, *self.ids[start : start + _CHUNK])
            pipe.pexpire(keys.tickerq_nodes, registry_ms)
            pipe.hset(
                keys.registry,
                mapping={"absexp": -1, "sldexp": duration_ticks(REGISTRY_TTL), "data": self.registry_raw},
            )
            pipe.pexpire(keys.registry, registry_ms)
            pipe.set(keys.registry_length, len(self.registry_raw), px=registry_ms)
            pipe.execute()
        health = NodeRegistry(admin, keys, "checker", REGISTRY_TTL).health()
        assert health.registered == self.ids, "registry does not list the nodes written"
        assert health.dead == self.dead, (
            f"expected {len(self.dead)} dead, registry reports {len(health.dead)}"
        )

    def restore(self, admin: redis.Redis, *, drop: Sequence[str] = ()) -> None:
        """Put back the registry and the node set as :meth:`register` left them (undo a removal or a join).

        Args:
            drop: Nodes that joined since: their set entry and heartbeat are removed.
        """
        with admin.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.registry, "data", self.registry_raw)
            pipe.set(self.keys.registry_length, len(self.registry_raw), keepttl=True)
            if self.dead:
                pipe.sadd(self.keys.tickerq_nodes, *self.dead)
            if drop:
                pipe.srem(self.keys.tickerq_nodes, *drop)
                pipe.delete(*(self.keys.heartbeat(node) for node in drop))
            pipe.execute()


def fail(message: str) -> None:
    """Report a broken target and exit non-zero (so CI's smoke run fails)."""
    print(f"FAIL: {message}", file=sys.stderr)
    raise SystemExit(1)
