"""Contended lock: acquisitions per client when 8 processes want one lock at once.

Each client is a spawned process with its own connection (and, for tickerq, its
own LockManager), started together at a cross-process barrier. For
``--seconds`` each loops: acquire (blocking), hold ``--hold-ms`` (the protected
work), release, and immediately try again, the pattern in which a releaser that
simply re-races wins again. Reported: acquisitions per client (min / median /
max), the total, and the max/min spread; then the same for redis-py's
``redis.lock.Lock`` with the same clients and duration, at its default
``sleep=0.1`` polling and at ``sleep=0.005``.

    python benchmarks/lock_contention.py [--clients 8] [--seconds 5] [--hold-ms 1]

Set TICKERQ_REDIS_SERVER to choose the redis-server binary.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

import redis
from _common import describe_machine

from tickerq._redis.keys import Keys
from tickerq.locks.lock import LockManager
from tickerq.testing import RedisServer


def client_loop(
    host: str, port: int, mode: str, index: int, seconds: float, hold_s: float, start: Any, out: Any
) -> None:
    """One client process: count acquisitions until the deadline, then report the count."""
    client = redis.Redis(host=host, port=port, socket_timeout=10)
    watchdog = redis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=1, retry=None)
    manager = LockManager(client, watchdog, Keys("tickerq:"), f"client-{index}")
    count = 0
    waits: list[float] = []
    try:
        start.wait(60)
        deadline = time.monotonic() + seconds
        while True:
            asked = time.monotonic()
            if asked >= deadline:
                break
            if mode == "tickerq":
                with manager.lock("bench", ttl=10):
                    waits.append(time.monotonic() - asked)
                    time.sleep(hold_s)
            else:
                sleep = 0.1 if mode == "redis-py" else 0.005
                with client.lock("bench-redis-py", timeout=10, sleep=sleep):
                    waits.append(time.monotonic() - asked)
                    time.sleep(hold_s)
            count += 1
    finally:
        out.put((index, count, max(waits, default=0.0)))
        manager.close()
        client.close()
        watchdog.close()


def run(server: RedisServer, mode: str, clients: int, seconds: float, hold_s: float) -> None:
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(clients + 1), context.Queue()
    processes = [
        context.Process(
            target=client_loop, args=(server.host, server.port, mode, i, seconds, hold_s, start, out)
        )
        for i in range(clients)
    ]
    for process in processes:
        process.start()
    start.wait(60)
    reports = sorted(out.get(timeout=seconds + 60) for _ in processes)
    for process in processes:
        process.join(30)
    counts = [count for _, count, _ in reports]
    worst_wait = max(wait for _, _, wait in reports)
    spread = max(counts) / min(counts) if min(counts) else float("inf")
    print(
        f"{mode:<22} min {min(counts):5d}  median {statistics.median(counts):7.1f}  max {max(counts):5d}  "
        f"total {sum(counts):6d}  max/min {spread:5.2f}  longest wait {worst_wait:.2f} s  per client {counts}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--hold-ms", type=float, default=1.0)
    options = parser.parse_args()
    with RedisServer() as server:
        with server.client() as admin:
            print(describe_machine(admin))
        print(f"{options.clients} processes, {options.seconds:g} s each run, hold {options.hold_ms:g} ms")
        for mode in ("tickerq", "redis-py", "redis-py sleep=0.005"):
            run(server, mode, options.clients, options.seconds, options.hold_ms / 1000)


if __name__ == "__main__":
    main()
