"""Uncontended lock throughput: acquire+release pairs per second, tickerq against redis-py.

One process, one thread, one lock name per library, nobody else waiting. Both
sides use the same kind of client (redis-py defaults: retries on, hiredis when
installed) and the ``with`` form a user writes:

    with manager.lock("bench", ttl=30): ...      # tickerq: 1 script to acquire
                                                 # (SET NX PX + fence INCR), 1 to release,
                                                 # plus watchdog registration
    with client.lock("bench", timeout=30): ...   # redis-py: SET NX PX, 1 script to release

The two sides alternate in small batches (which goes first alternates too), so a
change in machine load hits both alike; the ratio is the median of the
per-batch ratios. Target: tickerq / redis-py >= 0.9.

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

from tickerq.redis.keys import Keys
from tickerq.redis.lock import LockManager
from tickerq.testing import RedisServer


def pairs_per_second(pair: Callable[[], object], pairs: int) -> float:
    """Run ``pair`` ``pairs`` times; return pairs per second."""
    started = time.perf_counter()
    for _ in range(pairs):
        pair()
    return pairs / (time.perf_counter() - started)


def redis_us_per_pair(client: redis.Redis, pair: Callable[[], object], commands: tuple[str, ...]) -> float:
    """Server time per pair from ``INFO commandstats``, summing the top-level ``commands`` only.

    A script's usec already include the commands it runs, which are listed too.
    """
    pairs = 2000
    client.config_resetstat()
    pairs_per_second(pair, pairs)
    stats = client.info("commandstats")
    return sum(int(stats[f"cmdstat_{name}"]["usec"]) for name in commands) / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=50, help="acquire+release pairs per side per batch")
    options = parser.parse_args()
    with RedisServer() as server:
        client = server.client()
        watchdog = server.client(socket_timeout=2, socket_connect_timeout=1, retry=None)
        manager = LockManager(client, watchdog, Keys("tickerq:"), "bench-node")

        def ours() -> None:
            with manager.lock("bench-tickerq", ttl=30):
                pass

        def theirs() -> None:
            with client.lock("bench-redis-py", timeout=30):
                pass

        try:
            print(describe_machine(client))
            for pair in (ours, theirs):
                pairs_per_second(pair, 1000)  # warm-up: scripts loaded, connections open
            client.config_resetstat()
            rows: list[tuple[float, float]] = []
            for i in range(options.batches):
                if i % 2:
                    theirs_rate = pairs_per_second(theirs, options.pairs)
                    ours_rate = pairs_per_second(ours, options.pairs)
                else:
                    ours_rate = pairs_per_second(ours, options.pairs)
                    theirs_rate = pairs_per_second(theirs, options.pairs)
                rows.append((ours_rate, theirs_rate))
            ours_median = statistics.median(r[0] for r in rows)
            theirs_median = statistics.median(r[1] for r in rows)
            ratios = sorted(r[0] / r[1] for r in rows)
            quartiles = statistics.quantiles(ratios, n=4)
            pairs = options.batches * options.pairs
            print(f"{pairs:,} pairs per side in {options.batches} alternating batches of {options.pairs}")
            print(f"tickerq  {ours_median:7,.0f} pairs/s ({1e6 / ours_median:.0f} µs/pair, median batch)")
            print(f"redis-py {theirs_median:7,.0f} pairs/s ({1e6 / theirs_median:.0f} µs/pair, median batch)")
            print(
                f"ratio tickerq/redis-py: median {statistics.median(ratios):.3f} "
                f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}); target >= 0.9"
            )
            ours_us = redis_us_per_pair(client, ours, ("evalsha",))
            theirs_us = redis_us_per_pair(client, theirs, ("set", "evalsha"))
            print(
                f"Redis-side µs per pair: tickerq {ours_us:.1f} (2 scripts), "
                f"redis-py {theirs_us:.1f} (SET + 1 script)"
            )
        finally:
            manager.close()
            client.close()
            watchdog.close()


if __name__ == "__main__":
    main()
