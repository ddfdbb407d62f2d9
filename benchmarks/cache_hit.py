"""Cache hit path: DistributedCache.get_or_set_array against plain redis-py HGET + orjson.loads.

Entries are stored as TickerQ .NET stores them (a RedisCache hash of absexp, sldexp and
data), so the matching plain read is ``HGET key data`` + ``orjson.loads`` of the same
payload. Both sides read the same entry from the same redis-server through identically
configured clients (no retries, 1 s timeouts, bytes responses), interleaved in rounds so
that machine noise hits both alike. Prints ops/s, µs/op and the overhead ratio per
payload size (target: ratio <= 1.15, aim 1.05).

    python benchmarks/cache_hit.py [--ops 2000] [--rounds 15]

Set TICKERQ_REDIS_SERVER to choose the redis-server binary.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from tickerq._redis.keys import Keys
from tickerq.cache.cache import DistributedCache
from tickerq.testing import RedisServer

INSTANCE = "tickerq:"


@dataclasses.dataclass(frozen=True)
class Item:
    id: int
    name: str
    price: float
    tags: list[str]


def items(count: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"item-{i}", "price": i * 1.25, "tags": ["a", "b"]} for i in range(count)]


def client_for(server: RedisServer) -> redis.Redis:
    return redis.Redis(
        host=server.host,
        port=server.port,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=1,
        socket_connect_timeout=1,
    )


def compare(
    name: str, baseline: Callable[[], object], subject: Callable[[], object], ops: int, rounds: int
) -> None:
    """Time both sides call by call, alternating, so that machine noise lands on both alike."""
    clock = time.perf_counter_ns
    for _ in range(ops // 10):  # warm up connections, script caches, CPU caches
        baseline()
        subject()
    base: list[float] = []
    ours: list[float] = []
    for _ in range(rounds):
        spent = [0, 0]
        for i in range(ops):
            first, second = (baseline, subject) if i % 2 == 0 else (subject, baseline)
            t0 = clock()
            first()
            t1 = clock()
            second()
            t2 = clock()
            spent[i % 2] += t1 - t0
            spent[1 - i % 2] += t2 - t1
        base.append(spent[0] / ops / 1000)
        ours.append(spent[1] / ops / 1000)
    # The median round drops the rounds that another process disturbed most.
    ratios = sorted(o / b for o, b in zip(ours, base, strict=True))
    b, o = statistics.median(base), statistics.median(ours)
    print(
        f"{name:<28} HGET+loads {b:7.1f} µs/op ({1e6 / b:6.0f} ops/s) | get_or_set_array {o:7.1f} µs/op "
        f"({1e6 / o:6.0f} ops/s) | ratio {statistics.median(ratios):.3f} "
        f"(rounds: {ratios[0]:.3f} .. {ratios[-1]:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="calls per side per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with RedisServer() as server:
        plain, ours = client_for(server), client_for(server)
        info = plain.info("server")
        versions = f"redis-py {redis.__version__}, hiredis {HIREDIS_AVAILABLE}, orjson {orjson.__version__}"
        print(f"redis-server {info['redis_version']} on loopback; {versions}")
        cache = DistributedCache(ours, Keys(INSTANCE), operation_timeout=timedelta(seconds=1))
        expiration = timedelta(minutes=10)
        for count in (10, 100, 1000):
            key = f"bench:{count}"
            payload = items(count)
            cache.get_or_set_array(key, lambda payload=payload: payload, expiration)
            full = f"{INSTANCE}{key}"
            size = len(plain.hget(full, "data") or b"")

            def baseline(full: str = full) -> object:
                return orjson.loads(plain.hget(full, "data"))  # type: ignore[arg-type]

            def subject(key: str = key) -> object:
                return cache.get_or_set_array(key, list, expiration)

            compare(f"{count:>5} items ({size:>6} B)", baseline, subject, args.ops, args.rounds)
        # Informative only: building dataclasses is extra work the baseline does not do.
        key, full = "bench:typed", f"{INSTANCE}bench:typed"
        cache.get_or_set_array(key, lambda: items(10), expiration)
        compare(
            "   10 items, item_type=Item",
            lambda: [Item(**d) for d in orjson.loads(plain.hget(full, "data"))],  # type: ignore[arg-type]
            lambda: cache.get_or_set_array(key, list, expiration, item_type=Item),
            args.ops,
            args.rounds,
        )
        plain.close()
        ours.close()


if __name__ == "__main__":
    main()
