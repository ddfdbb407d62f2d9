"""Uncontended lock throughput on the user's path: acquire+release pairs per second, tickerq against redis-py.

One process, one thread, one lock name per side, nobody else waiting. What each side runs
per pair, a fresh lock object every time, default options:

    lock = ctx.lock("bench", ttl=10)              # tickerq: the container's RedisContext and
    lock.acquire(); lock.release()                # client (add_tickerq(...), init_resources())

    lock = client.lock("bench", timeout=10)       # redis-py's redis.lock.Lock on a client
    lock.acquire(); lock.release()                # with redis-py's defaults

redis-py's Lock is also run on the container's client (the same pool and timeouts as
tickerq's calls), to show how much of the difference is the client rather than the lock.
The sides take turns in small batches (the order rotates), so a change in machine load hits
them alike; each ratio is the median of the per-batch ratios. Target: tickerq / redis-py
(default client) >= 0.9.

    python benchmarks/lock_throughput.py [--batches 300] [--pairs 50]

Set TICKERQ_REDIS_SERVER to choose the redis-server binary.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import redis
from _common import describe_machine

from tickerq import add_tickerq
from tickerq.testing import RedisServer

TTL = 10


def pairs_per_second(pair: Callable[[], object], pairs: int) -> float:
    """Run ``pair`` ``pairs`` times; return pairs per second."""
    started = time.perf_counter()
    for _ in range(pairs):
        pair()
    return pairs / (time.perf_counter() - started)


def redis_us_per_pair(admin: redis.Redis, pair: Callable[[], object], commands: tuple[str, ...]) -> float:
    """Server time per pair from ``INFO commandstats``, summing the top-level ``commands`` only.

    A script's usec already include the commands it runs, which are listed too.
    """
    pairs = 2000
    admin.config_resetstat()
    pairs_per_second(pair, pairs)
    stats = admin.info("commandstats")
    return sum(int(stats[f"cmdstat_{name}"]["usec"]) for name in commands) / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=50, help="acquire+release pairs per side per batch")
    options = parser.parse_args()
    with RedisServer() as server:
        container = add_tickerq(
            lambda o: (
                o.configure_scheduler(node_identifier="bench-node"),
                o.add_redis(configuration=server.address),
            )
        )
        container.init_resources()
        ctx = container.redis_context()
        plain = server.client()  # redis-py's defaults
        admin = server.client()

        def tickerq() -> None:
            lock = ctx.lock("bench-tickerq", ttl=TTL)
            lock.acquire()
            lock.release()

        def redis_py() -> None:
            lock = plain.lock("bench-redis-py", timeout=TTL)
            lock.acquire()
            lock.release()

        def redis_py_container_client() -> None:
            lock = ctx.client.lock("bench-redis-py-cc", timeout=TTL)
            lock.acquire()
            lock.release()

        sides = [tickerq, redis_py, redis_py_container_client]
        try:
            print(describe_machine(admin))
            for pair in sides:
                pairs_per_second(pair, 1000)  # warm-up: scripts loaded, connections open
            rows: list[dict[Callable[[], None], float]] = []
            for i in range(options.batches):
                order = sides[i % 3 :] + sides[: i % 3]
                rows.append({pair: pairs_per_second(pair, options.pairs) for pair in order})
            pairs = options.batches * options.pairs
            print(f"{pairs:,} pairs per side in {options.batches} rotating batches of {options.pairs}")
            labels = {
                tickerq: "tickerq ctx.lock(ttl=10)",
                redis_py: "redis-py Lock (default client)",
                redis_py_container_client: "redis-py Lock (container's client)",
            }
            for pair in sides:
                median = statistics.median(row[pair] for row in rows)
                print(f"{labels[pair]:<36} {median:7,.0f} pairs/s ({1e6 / median:.0f} µs/pair, median batch)")
            for other in sides[1:]:
                ratios = sorted(row[tickerq] / row[other] for row in rows)
                quartiles = statistics.quantiles(ratios, n=4)
                print(
                    f"ratio tickerq / {labels[other]}: median {statistics.median(ratios):.3f} "
                    f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})"
                    + ("; target >= 0.9" if other is redis_py else "")
                )
            ours_us = redis_us_per_pair(admin, tickerq, ("evalsha",))
            theirs_us = redis_us_per_pair(admin, redis_py, ("set", "evalsha"))
            print(
                f"Redis-side µs per pair: tickerq {ours_us:.1f} (2 scripts), "
                f"redis-py {theirs_us:.1f} (SET + 1 script)"
            )
        finally:
            container.shutdown_resources()
            plain.close()
            admin.close()


if __name__ == "__main__":
    main()
