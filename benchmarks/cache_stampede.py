"""Cache stampede: factory calls per cold key when 3 processes x 16 threads miss it together.

Each process (spawned, with its own client and DistributedCache) waits at a
cross-process barrier before every key, then releases 16 threads at once on
it. The factory counts its calls with INCR on a side key and takes
``--factory-ms`` (a database query). For contrast the same load runs through a
naive cache-aside (GET, on a miss call the factory and SET). Target: 1 call per
key for get_or_set_array.

    python benchmarks/cache_stampede.py [--keys 20] [--factory-ms 50]

Set TICKERQ_REDIS_SERVER to choose the redis-server binary.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from datetime import timedelta
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tickerq._redis.keys import Keys
from tickerq.cache.cache import DistributedCache
from tickerq.testing import RedisServer

PROCESSES, THREADS = 3, 16


def worker(
    host: str, port: int, mode: str, keys: list[str], factory_s: float, barrier: Any, out: Any
) -> None:
    """One process: for each key, 16 threads call the cache together; reports each call's latency."""
    client = redis.Redis(
        host=host, port=port, retry=Retry(NoBackoff(), 0), socket_timeout=5, socket_connect_timeout=5
    )
    cache = DistributedCache(client, Keys("tickerq:"), operation_timeout=timedelta(seconds=5))
    latencies: list[float] = []
    lock = threading.Lock()

    def naive(key: str, factory: Any) -> Any:
        raw = client.get(f"tickerq:{key}")
        if raw is not None:
            return orjson.loads(raw)
        value = factory()
        client.set(f"tickerq:{key}", orjson.dumps(value), ex=600)
        return value

    for key in keys:

        def factory(key: str = key) -> list[Any]:
            client.incr(f"calls:{mode}:{key}")
            time.sleep(factory_s)
            return [{"key": key, "n": n} for n in range(10)]

        start = threading.Barrier(THREADS)

        def run(key: str = key, factory: Any = factory, start: threading.Barrier = start) -> None:
            start.wait()
            began = time.perf_counter()
            if mode == "naive":
                naive(key, factory)
            else:
                cache.get_or_set_array(key, factory, timedelta(minutes=10))
            with lock:
                latencies.append(time.perf_counter() - began)

        barrier.wait(timeout=60)
        threads = [threading.Thread(target=run) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    out.put(latencies)
    client.close()


def run(server: RedisServer, mode: str, keys: list[str], factory_s: float) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(PROCESSES), context.Queue()
    args = (server.host, server.port, mode, keys, factory_s, barrier, out)
    processes = [context.Process(target=worker, args=args) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    latencies = sorted(latency for _ in processes for latency in out.get(timeout=300))
    for process in processes:
        process.join()
    with server.client() as client:
        calls = [int(client.get(f"calls:{mode}:{key}") or 0) for key in keys]
    label = "get_or_set_array" if mode == "cache" else "naive GET/SET"
    print(
        f"{label:<17} {len(keys)} cold keys x {PROCESSES * THREADS} callers: factory calls per key "
        f"min {min(calls)} / mean {statistics.mean(calls):.2f} / max {max(calls)} (total {sum(calls)}); "
        f"latency p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--factory-ms", type=float, default=50.0)
    args = parser.parse_args()
    with RedisServer() as server:
        with server.client() as client:
            print(
                f"redis-server {client.info('server')['redis_version']}; factory takes {args.factory_ms:g} ms"
            )
        keys = [f"cold-{n}" for n in range(args.keys)]
        run(server, "cache", keys, args.factory_ms / 1000)
        run(server, "naive", [f"naive-{key}" for key in keys], args.factory_ms / 1000)


if __name__ == "__main__":
    main()
