"""Entry points for the lock tests' child processes (started with the spawn method).

Each function builds its own clients and LockManager, the way a separate node
would, and reports back through a multiprocessing queue or pipe.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from tickerq._redis.keys import Keys
from tickerq.locks.lock import LockManager

INSTANCE = "tickerq:"


def make_manager(
    host: str, port: int, owner: str, *, watchdog_timeout: float = 2.0, watchdog_connect_timeout: float = 0.5
) -> tuple[LockManager, redis.Redis, redis.Redis]:
    """A LockManager the way the container wires one: app client with retries, watchdog without.

    The container gives the watchdog client its sync and connect timeouts (5 s by default).
    """
    client = redis.Redis(
        host=host,
        port=port,
        socket_timeout=5,
        socket_connect_timeout=1,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 2),
    )
    watchdog = redis.Redis(
        host=host,
        port=port,
        socket_timeout=watchdog_timeout,
        socket_connect_timeout=watchdog_connect_timeout,
        retry=Retry(NoBackoff(), 0),  # none
    )
    return LockManager(client, watchdog, Keys(INSTANCE), owner), client, watchdog


def contend(host: str, port: int, name: str, rounds: int, counter_key: str, start: Any, out: Any) -> None:
    """Take the lock ``rounds`` times; inside, bump a counter with a non-atomic GET then SET."""
    manager, client, watchdog = make_manager(host, port, f"proc-{os.getpid()}")
    records = []
    start.wait(30)
    try:
        for _ in range(rounds):
            with manager.lock(name, ttl=10) as lease:
                began = time.monotonic()
                value = int(client.get(counter_key) or 0)
                time.sleep(0.0005)  # widen the window a missing exclusion would show in
                client.set(counter_key, value + 1)
                ended = time.monotonic()
            records.append((began, ended, lease.fence, os.getpid()))
    finally:
        out.put(records)
        manager.close()
        client.close()
        watchdog.close()


def hold_until_lost(host: str, port: int, name: str, ttl: float, conn: Any) -> None:
    """Hold the lock, report its fence, then report how (and whether) we learned we lost it."""
    manager, client, watchdog = make_manager(host, port, f"paused-{os.getpid()}")
    try:
        lock = manager.lock(name, ttl=ttl)
        lease = lock.acquire()
        conn.send(("acquired", lease.fence))
        lost = lease.lost.wait(60)
        try:
            released: object = lock.release()
        except Exception as exc:
            released = repr(exc)
        conn.send(("lost" if lost else "not lost", lease.lost_reason, released))
    finally:
        manager.close()
        client.close()
        watchdog.close()


def wait_in_line(host: str, port: int, name: str, conn: Any) -> None:
    """Wait for a lock held by someone else, forever (the test kills us while we wait)."""
    manager, _client, _watchdog = make_manager(host, port, f"doomed-{os.getpid()}")
    conn.send("waiting")
    manager.lock(name, ttl=10).acquire()
    conn.send("acquired")
