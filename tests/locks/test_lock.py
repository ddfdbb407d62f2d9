"""Distributed locks against a real redis-server: exclusion, fences, renewal, loss, fairness, faults."""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests import lock_worker
from tests.conftest import wait_until
from tests.netfault import FaultProxy
from tickerq._redis.keys import Keys
from tickerq._runtime.clock import ManualClock
from tickerq._runtime.dispatcher import Dispatcher
from tickerq._runtime.lease import LocalLease
from tickerq.errors import (
    ConfigurationError,
    KeyTypeError,
    LockError,
    LockLostError,
    LockTimeoutError,
    RedisUnavailableError,
)
from tickerq.locks import lock as lock_module
from tickerq.locks.lease import LOST, RENEW, Renewal, renew_arguments
from tickerq.locks.lock import ACQUIRE, DEAD_WAITER_STALL_BOUND, RECOVERING, RELEASE, Lease, LockManager
from tickerq.locks.watchdog import RENEWER_THREAD_NAME, THREAD_NAME, Watchdog
from tickerq.testing import RedisServer

KEYS = Keys(lock_worker.INSTANCE)
SPAWN = multiprocessing.get_context("spawn")
#: How late a busy 2-core machine may run a thread that is due (a wake-up, a GIL hand-over).
LATE = 0.1
NO_RETRY = Retry(NoBackoff(), 0)
TICKERQ_SOURCE = os.path.dirname(lock_module.__file__)

ManagerFactory = Callable[..., LockManager]


@pytest.fixture
def managers(redis_server: RedisServer) -> Iterator[ManagerFactory]:
    """Builds LockManagers (each with its own two clients) and closes them all after the test."""
    made: list[tuple[LockManager, redis.Redis, redis.Redis]] = []

    def make(server: RedisServer = redis_server, owner: str = "node-a", **kwargs: float) -> LockManager:
        made.append(lock_worker.make_manager(server.host, server.port, owner, **kwargs))
        return made[-1][0]

    yield make
    for manager, client, watchdog in made:
        manager.close()
        client.close()
        watchdog.close()


def spawn(target: Callable[..., None], *args: Any) -> multiprocessing.process.BaseProcess:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def stop_process(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive():
        assert process.pid is not None
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
    process.join(10)


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, -1, 0.0])
def test_ttl_must_be_positive(managers: ManagerFactory, ttl: float) -> None:
    """A ttl of zero or less is a ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match="ttl="):
        managers().lock("job", ttl=ttl)


def test_wait_timeout_with_nonblocking_is_rejected(managers: ManagerFactory) -> None:
    """blocking=False with a wait_timeout is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="wait_timeout"):
        managers().lock("job", blocking=False, wait_timeout=1)


# -- basics -------------------------------------------------------------------------


def test_acquire_and_release(managers: ManagerFactory, redis_client: redis.Redis) -> None:
    """The lock key holds the lease's token while held, the fence starts at 1, release deletes it."""
    lock = managers(owner="node-a").lock("job", ttl=30)
    with lock as lease:
        assert lease.token == redis_client.get("tickerq:lock:job")
        assert lease.token.startswith("node-a:")
        assert 1 == lease.fence
        assert "1" == redis_client.get("tickerq:lock:job:fence")
        assert 29_000 < redis_client.pttl("tickerq:lock:job") <= 30_000
        lease.ensure_held()
    assert redis_client.get("tickerq:lock:job") is None
    with pytest.raises(LockLostError, match="released"):
        lease.ensure_held()


def test_acquire_is_idempotent_for_the_same_token(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A retried acquire with the same token returns the same fence and does not increment the counter."""
    keys = lock_module.LockKeys.build(KEYS, "job")
    # ARGV: wake prefix, liveness ms, turn ms, token, ttl ms, queue flag, fence floor, hold-back ms
    args: list[str | int] = [keys.wake_prefix, 1500, 500, "tok-1", 30_000, "", 0, 30_000]
    release: list[str | int] = [keys.wake_prefix, 500, "tok-1", "", 1]  # ..., token, waiter, fence
    with redis_server.client() as client:
        assert [1, 1] == ACQUIRE(client, keys.script_keys, args)
        assert [1, 1] == ACQUIRE(client, keys.script_keys, args)
        assert "1" == redis_client.get(keys.fence)
        assert 1 == RELEASE(client, keys.script_keys, release)
        assert 2 == RELEASE(client, keys.script_keys, release)


def test_nonblocking_and_wait_timeout_raise_lock_timeout(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """blocking=False fails at once; wait_timeout fails after about that long and leaves the line."""
    holder, other = managers(owner="a"), managers(owner="b")
    with holder.lock("job"):
        with pytest.raises(
            LockTimeoutError, match=r"held by another owner for .* s more, and blocking=False"
        ):
            other.lock("job", blocking=False).acquire()
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match="wait_timeout"):
            other.lock("job", wait_timeout=0.3).acquire()
        assert 0.25 < time.monotonic() - started < 3
        assert [] == redis_client.lrange(KEYS.lock_queue("job"), 0, -1)
        assert 0 == redis_client.zcard(KEYS.lock_waiters("job"))


def test_wrong_type_in_lock_key_is_a_key_type_error(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A lock key holding a hash gives KeyTypeError, not a bare redis error."""
    redis_client.hset("tickerq:lock:job", "x", "1")
    with pytest.raises(KeyTypeError):
        managers().lock("job").acquire()


def test_fences_strictly_increase_across_managers(managers: ManagerFactory) -> None:
    """Alternating acquisitions by two nodes get strictly increasing fences."""
    nodes = [managers(owner="a"), managers(owner="b")]
    fences = []
    for i in range(10):
        with nodes[i % 2].lock("job") as lease:
            fences.append(lease.fence)
    assert list(range(1, 11)) == fences


def test_release_from_another_thread(managers: ManagerFactory, redis_client: redis.Redis) -> None:
    """The token belongs to the lease: a thread other than the acquirer releases it."""
    lock = managers().lock("job")
    lock.acquire()
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(lock.release()))
    thread.start()
    thread.join(10)
    assert [True] == results
    assert redis_client.get("tickerq:lock:job") is None


def test_reentrant_lock_is_counted_per_owner_thread(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """reentrant=True nests on the owner thread with one fence; only the last release frees the key."""
    manager = managers()
    with manager.lock("job", reentrant=True) as outer:
        with manager.lock("job", reentrant=True) as inner:
            assert outer is inner
        assert outer.token == redis_client.get("tickerq:lock:job")
        other_thread: list[BaseException] = []

        def try_from_other_thread() -> None:
            try:
                manager.lock("job", reentrant=True, blocking=False).acquire()
            except LockTimeoutError as exc:
                other_thread.append(exc)

        thread = threading.Thread(target=try_from_other_thread)
        thread.start()
        thread.join(10)
        assert 1 == len(other_thread)
        with pytest.raises(LockTimeoutError):
            manager.lock("job", blocking=False).acquire()  # not reentrant: no nesting
    assert redis_client.get("tickerq:lock:job") is None


def test_extend_after_release_raises_lock_lost(managers: ManagerFactory) -> None:
    """extend() on a Lock whose lease was released raises LockLostError; never acquired is a LockError."""
    lock = managers().lock("job")
    with pytest.raises(LockError, match="never acquired"):
        lock.extend()
    lock.acquire()
    lock.release()
    with pytest.raises(LockLostError, match="released"):
        lock.extend()


@pytest.mark.parametrize("blocking", [False, True])
def test_acquire_whose_reply_is_lost_lets_go(
    redis_server: RedisServer, managers: ManagerFactory, redis_client: redis.Redis, blocking: bool
) -> None:
    """The acquire script ran but its reply was lost on the way: the error propagates, the key is let go."""
    proxy = FaultProxy(redis_server.host, redis_server.port)
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=5, retry=NO_RETRY)
    watchdog_client = redis_server.client(retry=None)
    manager = LockManager(client, watchdog_client, KEYS, "lossy")
    try:
        with manager.lock("warm-up"):
            pass  # scripts loaded and the connection open, so the next reply is the acquire's
        proxy.drop_next_reply()
        with pytest.raises(RedisUnavailableError):
            manager.lock("job", ttl=30, blocking=blocking).acquire()
        assert redis_client.get("tickerq:lock:job") is None
        assert "1" == redis_client.get("tickerq:lock:job:fence")  # the script did run
        with managers(owner="other").lock("job", blocking=False) as lease:
            assert 2 == lease.fence
    finally:
        manager.close()
        client.close()
        watchdog_client.close()
        proxy.close()


def test_acquire_retried_after_a_lost_reply_keeps_its_fence(
    redis_server: RedisServer, managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A connection cut before the acquire's reply is retried once: one lease, one fence, one INCR."""
    proxy = FaultProxy(redis_server.host, redis_server.port)
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=5, retry=Retry(NoBackoff(), 1))
    watchdog_client = redis_server.client(retry=None)
    manager = LockManager(client, watchdog_client, KEYS, "lossy")
    try:
        with manager.lock("warm-up"):
            pass  # scripts loaded and the connection open, so the next reply is the acquire's
        proxy.drop_next_reply()
        with manager.lock("job", ttl=30, blocking=False) as lease:
            assert 1 == lease.fence
            assert "1" == redis_client.get("tickerq:lock:job:fence")
            assert lease.token == redis_client.get("tickerq:lock:job")
        assert redis_client.get("tickerq:lock:job") is None
    finally:
        manager.close()
        client.close()
        watchdog_client.close()
        proxy.close()


def test_scripts_flushed_from_redis_are_loaded_again(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """After SCRIPT FLUSH, acquire, extend and release load their scripts and work."""
    manager = managers()
    with manager.lock("job", ttl=30) as first:
        pass
    redis_client.script_flush()
    lock = manager.lock("job", ttl=30)
    with lock as lease:
        assert first.fence + 1 == lease.fence
        redis_client.script_flush()
        lock.extend(20)
        assert 19_000 < redis_client.pttl("tickerq:lock:job") <= 20_000
        redis_client.script_flush()
    assert redis_client.get("tickerq:lock:job") is None


def interleave(step: int, body: Callable[[], object], other: Callable[[], object]) -> int:
    """Run ``body`` here, pausing it at its ``step``-th line of tickerq code to run ``other`` on another
    thread to completion (or for at most 0.1 s, if ``other`` waits for ``body``); returns the lines seen.

    A deterministic schedule for races between two threads: step through every line to try every
    interleaving at line granularity.
    """
    go, done = threading.Event(), threading.Event()
    lines = 0

    def run_other() -> None:
        go.wait()
        try:
            other()
        finally:
            done.set()

    def trace_line(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
            if lines == step:
                go.set()
                done.wait(0.1)
        return trace_line

    def trace_call(frame: Any, event: str, arg: Any) -> Any:
        return trace_line if frame.f_code.co_filename.startswith(TICKERQ_SOURCE) else None

    thread = threading.Thread(target=run_other)
    thread.start()
    previous = sys.gettrace()
    sys.settrace(trace_call)
    try:
        body()
    finally:
        sys.settrace(previous)
        go.set()
        thread.join(10)
    return lines


def test_reentrant_acquire_racing_a_release_never_returns_a_released_lease(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A reentrant acquire while another thread releases the owner's lease gets a held lease or a timeout."""
    manager = managers()
    for step in itertools.count(1):
        outer = manager.lock("job", reentrant=True)
        outer.acquire()
        inner = manager.lock("job", reentrant=True, blocking=False)
        got: list[Lease] = []

        def reenter(inner: lock_module.Lock = inner, got: list[Lease] = got) -> None:
            with contextlib.suppress(LockTimeoutError):  # released first, its key not yet deleted
                got.append(inner.acquire())

        lines = interleave(step, reenter, outer.release)
        for lease in got:
            assert not lease.released, f"released lease returned when paused at line {step}"
            assert lease.token == redis_client.get("tickerq:lock:job")
            assert inner.release() is True
        assert redis_client.get("tickerq:lock:job") is None
        if lines < step:  # the release ran after the whole acquire: every interleaving was tried
            break


def test_waiter_is_woken_by_release_not_by_polling(
    managers: ManagerFactory, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling slowed to 2.5 s (half the socket timeout), a waiter gets the lock within 1 s of release."""
    holder = managers(owner="a")
    monkeypatch.setattr(lock_module, "WAITER_POLL", 10.0)
    waiter = managers(owner="b")
    acquired_at: list[float] = []
    lock = holder.lock("job")
    lock.acquire()

    def wait() -> None:
        with waiter.lock("job", wait_timeout=20):
            acquired_at.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: redis_client.llen(KEYS.lock_queue("job")))
    released_at = time.monotonic()
    lock.release()
    thread.join(15)
    assert 1 == len(acquired_at)
    assert acquired_at[0] - released_at < 1.0


# -- expiry, renewal and loss ---------------------------------------------------------


@pytest.mark.slow
def test_expiry_without_renewal(managers: ManagerFactory, redis_client: redis.Redis) -> None:
    """Unrenewed, the lease is declared lost by its ttl; another node then takes it; release/extend fail."""
    ttl = 0.25  # the waiter's polls come at about 0 s and 0.5 s: some 0.25 s either side of the expiry
    old_lock = managers(owner="old").lock("job", ttl=ttl, auto_renew=False)
    new_lock = managers(owner="new").lock("job", ttl=5, wait_timeout=5)
    before = time.monotonic()
    old = old_lock.acquire()
    new = new_lock.acquire()
    acquired_at = time.monotonic()
    assert acquired_at - before >= ttl - 0.01  # Redis's clock, not ours, expires the key
    assert old.lost_at is not None
    assert old.lost_at - before <= ttl + LATE
    assert old.lost_at <= acquired_at
    assert new.fence > old.fence
    with pytest.raises(LockLostError):
        old.ensure_held()
    with pytest.raises(LockLostError):
        old_lock.extend()
    assert old_lock.release() is False
    assert new.token == redis_client.get("tickerq:lock:job")
    new_lock.release()


def test_extend_finds_another_owner(managers: ManagerFactory, redis_client: redis.Redis) -> None:
    """extend() replaces the TTL while held, and raises LockLostError once another owner wrote the key."""
    lock = managers().lock("job", ttl=2, auto_renew=False)
    lease = lock.acquire()
    lock.extend(20)
    assert 19_000 < redis_client.pttl("tickerq:lock:job") <= 20_000
    lock.extend(5)
    assert redis_client.pttl("tickerq:lock:job") <= 5_000
    redis_client.set("tickerq:lock:job", "intruder")
    with pytest.raises(LockLostError, match="another owner"):
        lock.extend()
    assert lease.lost.is_set()
    assert lock.release() is False
    assert "intruder" == redis_client.get("tickerq:lock:job")


def test_extend_in_flight_when_the_lease_is_declared_lost_raises(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The deadline passes while extend()'s reply is delayed: lost stays lost, though Redis applied it."""
    proxy = FaultProxy(redis_server.host, redis_server.port)
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=5, retry=NO_RETRY)
    watchdog_client = redis_server.client(retry=None)
    manager = LockManager(client, watchdog_client, KEYS, "slow-network")
    errors: list[BaseException] = []

    def extend() -> None:
        try:
            lock.extend(5)
        except BaseException as exc:
            errors.append(exc)

    try:
        lock = manager.lock("job", ttl=0.5, auto_renew=False)
        lease = lock.acquire()
        lock.extend(0.5)  # the renew script loaded, so the next reply is the extension's
        proxy.hold_replies()
        extender = threading.Thread(target=extend)
        extender.start()
        wait_until(lambda: redis_client.pttl("tickerq:lock:job") > 1000)  # Redis extended it...
        assert lease.lost.wait(2)  # ...but the reply is late: the watchdog declares it lost on time
        proxy.pass_replies()
        extender.join(5)
        assert not extender.is_alive()
        assert [LockLostError] == [type(error) for error in errors]
        assert "is lost" in str(errors[0])
        assert not lease.held
        assert lock.release() is False
    finally:
        manager.close()
        client.close()
        watchdog_client.close()
        proxy.close()


@pytest.mark.slow
def test_watchdog_keeps_lease_for_five_ttls_and_stops_after_release(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A 1 s lease held 5 s stays ours with an unchanged fence; after release nothing renews it."""
    manager, other = managers(owner="a"), managers(owner="b")
    lock = manager.lock("job", ttl=1.0)
    lease = lock.acquire()
    thread = manager.watchdog.thread
    assert thread is not None
    assert THREAD_NAME == thread.name
    assert thread.daemon
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        assert lease.token == redis_client.get("tickerq:lock:job")
        assert lease.held
        time.sleep(0.05)
    with pytest.raises(LockTimeoutError):
        other.lock("job", blocking=False).acquire()
    assert 1 == lease.fence
    assert "1" == redis_client.get("tickerq:lock:job:fence")
    assert lock.release() is True
    before = evalsha_calls(redis_client)
    time.sleep(1.2)  # more than a ttl: a renewal would have run (and re-created the key)
    assert before == evalsha_calls(redis_client)
    assert redis_client.get("tickerq:lock:job") is None
    assert [] == manager.watchdog.leases()


@pytest.mark.slow
def test_renewals_are_batched_in_one_round_trip_per_tick(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """Three leases with the same ttl are renewed by one script call per tick, not three."""
    manager = managers()
    locks = [manager.lock(f"job-{i}", ttl=1.5) for i in range(3)]
    for lock in locks:
        lock.acquire()
    before = evalsha_calls(redis_client)
    time.sleep(3.0)  # about six ticks at ttl/3
    renewals = evalsha_calls(redis_client) - before
    assert 3 <= renewals <= 9  # unbatched would be about 18
    assert [True, True, True] == [lock.release() for lock in locks]


@pytest.mark.parametrize("fault", ["delete", "overwrite", "wrong type"])
def test_external_change_declares_lost_once(
    managers: ManagerFactory, redis_client: redis.Redis, fault: str
) -> None:
    """A lock key deleted, overwritten or replaced from outside: on_lost runs once, on the dispatcher."""
    calls: list[tuple[Lease, str]] = []
    lock = managers().lock(
        "job", ttl=0.6, on_lost=lambda lease: calls.append((lease, threading.current_thread().name))
    )
    lease = lock.__enter__()
    if fault == "delete":
        redis_client.delete("tickerq:lock:job")
    elif fault == "overwrite":
        redis_client.set("tickerq:lock:job", "intruder")
    else:
        redis_client.delete("tickerq:lock:job")
        redis_client.hset("tickerq:lock:job", "x", "1")
    assert lease.lost.wait(2)
    with pytest.raises(LockLostError, match="lost"):
        lease.ensure_held()
    wait_until(lambda: calls)
    time.sleep(0.5)  # more renewal ticks: still one call
    with pytest.raises(LockLostError, match="lost inside the with block"):
        lock.__exit__(None, None, None)  # leaving the with block without an exception
    assert [(lease, "tickerq-lock-lost-1")] == calls
    if fault == "overwrite":
        assert "intruder" == redis_client.get("tickerq:lock:job")


def test_body_exception_wins_over_loss(managers: ManagerFactory, redis_client: redis.Redis) -> None:
    """When the body raises after the lease was lost, the body's exception propagates."""
    lock = managers().lock("job", ttl=0.6)

    def body() -> None:
        with lock as lease:
            redis_client.delete("tickerq:lock:job")
            assert lease.lost.wait(2)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        body()


# -- Redis faults ---------------------------------------------------------------------


@pytest.mark.slow
def test_redis_stopped_longer_than_ttl_declares_lost_before_ttl(
    fault_server: RedisServer, managers: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With redis-server stopped, the lease is lost within the ttl of its acquiring; one outage logged."""
    caplog.set_level(logging.WARNING, logger="tickerq.locks.watchdog")
    ttl = 1.0
    lost_calls: list[Lease] = []
    manager = managers(fault_server)
    lock = manager.lock("job", ttl=ttl, on_lost=lost_calls.append)
    before = time.monotonic()
    lease = lock.acquire()
    fault_server.stop()
    stopped = time.monotonic()
    assert stopped - before < ttl / 3  # stopped before the first renewal was due
    assert lease.lost.wait(ttl + 1.0)
    assert lease.lost_at is not None
    assert lease.lost_at - before <= ttl + LATE  # by the deadline of the acquisition, not later
    assert lease.lost_at - stopped > ttl / 3  # not at the first failed renewal
    assert "within its ttl" in (lease.lost_reason or "")
    outages = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert 1 == len(outages)
    assert manager.watchdog.is_running
    fault_server.start()
    assert lock.release() is False
    wait_until(lambda: lost_calls)
    assert [lease] == lost_calls


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before the watchdog connected", "while renewing"])
def test_frozen_redis_declares_leases_lost_on_time(
    fault_server: RedisServer, managers: ManagerFactory, when: str
) -> None:
    """Redis frozen (SIGSTOP) under 5 s client timeouts: each lease is lost by its own ttl, on_lost once."""
    manager = managers(fault_server, watchdog_timeout=5.0, watchdog_connect_timeout=5.0)
    lost_calls: list[Lease] = []
    leases = [
        manager.lock(name, ttl=ttl, on_lost=lost_calls.append).acquire()
        for name, ttl in (("short", 0.6), ("long", 1.5))
    ]
    if when == "while renewing":
        first_deadlines = [lease.valid_until for lease in leases]
        wait_until(lambda: all(x.valid_until > d for x, d in zip(leases, first_deadlines, strict=True)))
    paused_at = time.monotonic()  # no renewal sent after this can succeed
    fault_server.pause()
    try:
        for lease in leases:
            assert lease.lost.wait(lease.ttl_seconds + 1.0)
    finally:
        fault_server.resume()
    for lease in leases:
        assert lease.lost_at is not None
        assert lease.lost_at - paused_at <= lease.ttl_seconds + LATE, lease
        assert "within its ttl" in (lease.lost_reason or "")
    wait_until(lambda: 2 == len(lost_calls))
    time.sleep(0.3)  # the renewer's stuck call returns now; nothing more is reported
    assert sorted(leases, key=id) == sorted(lost_calls, key=id)


@pytest.mark.slow
def test_extend_waits_for_a_renewal_in_flight(fault_server: RedisServer, managers: ManagerFactory) -> None:
    """extend() during a renewal stuck in a frozen Redis runs after it: Redis and lease agree on the ttl."""
    lock = managers(fault_server).lock("job", ttl=1.5)
    lease = lock.acquire()
    fault_server.pause()
    try:
        wait_until(lease.renewing.locked, timeout=1.0, interval=0.005)  # the watchdog's renewal is in flight
        extender = threading.Thread(target=lock.extend, args=(30,))
        extender.start()
        time.sleep(0.1)
        assert extender.is_alive()  # waiting for the renewal, not racing it
    finally:
        fault_server.resume()
    extender.join(5)
    assert not extender.is_alive()
    assert timedelta(seconds=30) == lease.ttl
    with fault_server.client() as admin:
        pttl = admin.pttl("tickerq:lock:job") / 1000
    assert 29 < pttl <= 30
    assert lease.valid_until - time.monotonic() <= pttl
    assert lease.held


@pytest.mark.slow
def test_redis_restarted_within_ttl_lease_survives(
    fault_server: RedisServer, managers: ManagerFactory
) -> None:
    """A restart that wipes Redis within the ttl: the holder re-establishes key and fence counter."""
    ttl = 2.0
    manager, other = managers(fault_server, "a"), managers(fault_server, "b")
    with other.lock("job"):
        pass  # fence 1 goes to another node first
    lock = manager.lock("job", ttl=ttl)
    lease = lock.acquire()
    assert 2 == lease.fence
    restarted = time.monotonic()
    fault_server.restart()
    with fault_server.client(decode_responses=True) as admin:
        wait_until(lambda: admin.get("tickerq:lock:job") == lease.token, timeout=ttl)
        assert "2" == admin.get("tickerq:lock:job:fence")
        while time.monotonic() - restarted < 1.5 * ttl:
            assert lease.held
            time.sleep(0.05)
        with pytest.raises(LockTimeoutError):
            other.lock("job", blocking=False).acquire()
        assert lock.release() is True
    with other.lock("job") as after:
        assert 3 == after.fence


@pytest.mark.slow
def test_data_loss_never_gives_a_renewing_holders_fence_again(
    fault_server: RedisServer, managers: ManagerFactory
) -> None:
    """Redis restarts empty while A holds fence 2: B (had fence 1) waits for A to re-establish and release."""
    ttl = 3.0  # A renews every second: B's first try almost always comes before A's renewal
    a, b = managers(fault_server, "a"), managers(fault_server, "b")
    with b.lock("job", ttl=ttl) as first:
        assert 1 == first.fence
    lock = a.lock("job", ttl=ttl)
    held = lock.acquire()
    assert 2 == held.fence
    fault_server.restart()
    with pytest.raises(LockTimeoutError):  # held back after the loss, or A already re-established it
        b.lock("job", ttl=ttl, blocking=False).acquire()
    with fault_server.client(decode_responses=True) as admin:
        wait_until(lambda: admin.get("tickerq:lock:job") == held.token, timeout=ttl)
        assert "2" == admin.get("tickerq:lock:job:fence")
        assert held.held
        acquired: list[Lease] = []
        waiter = threading.Thread(target=lambda: acquired.append(b.lock("job", wait_timeout=10).acquire()))
        waiter.start()
        wait_until(lambda: admin.llen(KEYS.lock_queue("job")))
    assert lock.release() is True
    waiter.join(10)
    assert [3] == [lease.fence for lease in acquired]


def test_data_loss_holds_the_lock_back_for_the_longest_ttl(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """Counter lost: B (had 1) parks RECOVERING for its longest ttl; A (fence 2) releasing raises it to 2."""
    a, b = managers(owner="a"), managers(owner="b")
    with b.lock("job", ttl=0.4):
        pass
    survivor = a.lock("job", ttl=30, auto_renew=False)
    assert 2 == survivor.acquire().fence
    redis_client.flushall()  # Redis lost its data
    with pytest.raises(LockTimeoutError, match="after Redis lost its data"):
        b.lock("job", ttl=0.2, blocking=False).acquire()
    assert RECOVERING == redis_client.get("tickerq:lock:job")
    assert 300 < redis_client.pttl("tickerq:lock:job") <= 400  # the longest ttl b used, not this one
    assert "1" == redis_client.get("tickerq:lock:job:fence")
    assert survivor.release() is False  # its key was lost...
    assert "2" == redis_client.get("tickerq:lock:job:fence")  # ...but its fence is not given again
    started = time.monotonic()
    with b.lock("job", ttl=0.2, wait_timeout=5) as after:
        assert 3 == after.fence
    assert time.monotonic() - started >= 0.2


def test_stale_lease_cannot_take_over_a_lock_held_back_after_data_loss(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A late renewal of a lease whose key had expired (fence 1) finds the lock held back after a data
    loss: it is lost, and the survivor (fence 2, the highest handed out) re-establishes its lease."""
    stale_node, survivor_node = managers(owner="stale"), managers(owner="survivor")
    stale = stale_node.lock("job", ttl=0.2, auto_renew=False).acquire()
    assert 1 == stale.fence
    wait_until(lambda: redis_client.get("tickerq:lock:job") is None)  # its holder stalled; the key expired
    lost_calls: list[Lease] = []
    survivor_lock = survivor_node.lock("job", ttl=5, auto_renew=False, on_lost=lost_calls.append)
    survivor = survivor_lock.acquire()
    assert 2 == survivor.fence
    redis_client.flushall()  # Redis lost its data
    with pytest.raises(LockTimeoutError):
        survivor_node.lock("job", blocking=False).acquire()  # its floor is 2: the lock is held back
    assert RECOVERING == redis_client.get("tickerq:lock:job")
    assert "2" == redis_client.get("tickerq:lock:job:fence")
    keys, args = renew_arguments([Renewal.of(stale)])
    assert [LOST] == RENEW(redis_client, keys, args)  # the stalled holder's renewal arrives now
    assert RECOVERING == redis_client.get("tickerq:lock:job")
    survivor_lock.extend()  # the survivor's renewal re-establishes its lease
    assert survivor.token == redis_client.get("tickerq:lock:job")
    assert "2" == redis_client.get("tickerq:lock:job:fence")
    assert survivor.held
    assert survivor_lock.release() is True
    with stale_node.lock("job", blocking=False) as after:
        assert 3 == after.fence
    assert [] == lost_calls


def test_waiter_given_the_turn_keeps_its_place_while_the_lock_is_held_back(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """After a data loss the waiter whose turn it is parks RECOVERING: it stays first in line, and
    acquires before the waiter behind it once the hold-back ends."""
    b, c, d = managers(owner="b"), managers(owner="c"), managers(owner="d")
    for _ in range(2):
        with b.lock("job", ttl=1.5):
            pass  # b remembers fence 2, and a 1.5 s ttl: its hold-back outlasts a turn and a poll
    redis_client.flushall()  # Redis lost its data
    holder = c.lock("job", ttl=30)
    assert 1 == holder.acquire().fence  # c never held it: no floor (a documented limit)
    order: list[tuple[str, int]] = []

    def wait(manager: LockManager) -> None:
        with manager.lock("job", ttl=1.5, wait_timeout=20) as lease:
            order.append((manager.owner, lease.fence))

    queue = KEYS.lock_queue("job")
    threads = []
    for manager in (b, d):
        threads.append(threading.Thread(target=wait, args=(manager,), daemon=True))
        threads[-1].start()
        wait_until(lambda: len(threads) == redis_client.llen(queue))
    holder.release()  # the turn goes to b, whose floor 2 is not below the counter: b parks RECOVERING
    wait_until(lambda: RECOVERING == redis_client.get("tickerq:lock:job"), interval=0.002)
    assert ["b", "d"] == [str(waiter).split(":")[0] for waiter in redis_client.lrange(queue, 0, -1)]
    assert redis_client.get(KEYS.lock_turn("job")) is None
    assert 2 == redis_client.zcard(KEYS.lock_waiters("job"))
    for thread in threads:
        thread.join(20)
    assert [("b", 3), ("d", 4)] == order


@pytest.mark.slow
@pytest.mark.multiprocess
def test_paused_holder_loses_lock_to_higher_fence(
    redis_server: RedisServer, managers: ManagerFactory
) -> None:
    """A holder SIGSTOPped past its ttl: another takes a higher fence; the resumed one learns it lost."""
    ttl = 1.0
    parent_end, child_end = SPAWN.Pipe()
    process = spawn(lock_worker.hold_until_lost, redis_server.host, redis_server.port, "job", ttl, child_end)
    try:
        assert parent_end.poll(30)
        event, child_fence = parent_end.recv()
        assert "acquired" == event
        assert process.pid is not None
        os.kill(process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        lock = managers(owner="parent").lock("job", ttl=10, wait_timeout=10)
        lease = lock.acquire()
        assert time.monotonic() - stopped > ttl * 0.5
        assert lease.fence > child_fence
        os.kill(process.pid, signal.SIGCONT)
        assert parent_end.poll(10)
        event, reason, released = parent_end.recv()
        assert ("lost", False) == (event, released)
        assert "within its ttl" in reason
        assert lease.held
        assert lock.release() is True
    finally:
        stop_process(process)


# -- many processes and clients -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.multiprocess
def test_mutual_exclusion_across_processes(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """8 processes x 40 acquisitions: intervals never overlap, fences rise in order, the counter is exact."""
    processes_n, rounds = 8, 40
    start, out = SPAWN.Event(), SPAWN.Queue()
    args = (redis_server.host, redis_server.port, "job", rounds, "counter", start, out)
    processes = [spawn(lock_worker.contend, *args) for _ in range(processes_n)]
    try:
        start.set()
        records = [record for _ in processes for record in out.get(timeout=60)]
    finally:
        for process in processes:
            process.join(30)
            stop_process(process)
    assert [0] * processes_n == [process.exitcode for process in processes]
    assert processes_n * rounds == len(records)
    records.sort()
    overlaps = [(a, b) for a, b in itertools.pairwise(records) if a[1] > b[0]]
    assert [] == overlaps
    fences = [record[2] for record in records]
    assert sorted(set(fences)) == fences
    assert str(processes_n * rounds) == redis_client.get("counter")
    assert processes_n == len({record[3] for record in records})


@pytest.mark.slow
def test_fairness_every_contender_makes_progress(redis_server: RedisServer, managers: ManagerFactory) -> None:
    """8 clients contending for 2 s all get turns, none fewer than a third of the median."""
    nodes = [managers(owner=f"client-{i}") for i in range(8)]
    counts = [0] * len(nodes)
    stop = threading.Event()
    errors: list[BaseException] = []

    def contend(i: int) -> None:
        try:
            while not stop.is_set():
                with nodes[i].lock("job", wait_timeout=10):
                    counts[i] += 1
                    time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(nodes))]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(15)
    assert [] == errors
    assert min(counts) >= statistics.median(counts) / 3, counts


@pytest.mark.slow
@pytest.mark.multiprocess
def test_waiter_dying_in_line_stalls_at_most_the_bound(
    redis_server: RedisServer, managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A waiter SIGKILLed at the head of the line delays the next one by at most the documented bound."""
    holder = managers(owner="holder").lock("job")
    holder.acquire()
    queue = KEYS.lock_queue("job")
    parent_end, child_end = SPAWN.Pipe()
    doomed = spawn(lock_worker.wait_in_line, redis_server.host, redis_server.port, "job", child_end)
    try:
        assert parent_end.poll(30)
        wait_until(lambda: 1 == redis_client.llen(queue), timeout=10)
        acquired_at: list[float] = []
        live = managers(owner="live")

        def wait() -> None:
            with live.lock("job", wait_timeout=20):
                acquired_at.append(time.monotonic())

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until(lambda: 2 == redis_client.llen(queue), timeout=10)
        doomed.kill()
        doomed.join(10)
        released_at = time.monotonic()
        holder.release()
        thread.join(20)
        assert 1 == len(acquired_at)
        assert acquired_at[0] - released_at < DEAD_WAITER_STALL_BOUND + 0.5
    finally:
        stop_process(doomed)


# -- the watchdog's own robustness ------------------------------------------------------


def test_failing_cleanup_of_a_resurrected_lease_does_not_stop_the_batch(
    redis_server: RedisServer, managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A batch re-establishes a lease released meanwhile; its cleanup raises; the rest is still confirmed."""
    manager = managers()
    released, kept = (manager.lock(name, ttl=5, auto_renew=False).acquire() for name in ("released", "kept"))
    redis_client.flushall()  # Redis lost its data: the renewal will re-establish both keys
    assert released.drop()  # released while the renewal is in flight: its delete is still to come
    cleaned: list[Lease] = []

    def cleanup_fails(lease: Lease) -> None:
        cleaned.append(lease)
        raise RedisUnavailableError("the application's client is down")

    with redis_server.client(retry=None) as client:
        watchdog = Watchdog(client, on_resurrected=cleanup_fails)
        before = kept.valid_until
        watchdog._renew([Renewal.of(released), Renewal.of(kept)])
        watchdog.stop()  # closes the renewer's connection
    assert [released] == cleaned
    assert kept.valid_until > before
    assert kept.token == redis_client.get("tickerq:lock:kept")


def test_failed_tick_is_retried_before_the_nearest_deadline(managers: ManagerFactory) -> None:
    """After a failed tick the watchdog looks again within a second and by the nearest deadline."""
    manager = managers()
    with manager.lock("job", ttl=0.3, auto_renew=False) as lease:
        assert manager.watchdog._delay_after_error() <= lease.valid_until - time.monotonic() + 0.01
    with manager.lock("job", ttl=30):
        assert manager.watchdog._delay_after_error() == 1.0


# -- thread lifecycle -----------------------------------------------------------------


def test_close_stops_watchdog_and_is_safe_twice(managers: ManagerFactory) -> None:
    """close() ends the watchdog thread promptly, twice is fine, and later locks are refused."""
    manager = managers()
    assert manager.watchdog.thread is None  # started lazily
    with manager.lock("job", ttl=30):
        thread, renewer = manager.watchdog.thread, manager.watchdog.renewer_thread
    assert thread is not None
    assert renewer is not None
    assert RENEWER_THREAD_NAME == renewer.name
    started = time.monotonic()
    manager.close()
    manager.close()
    assert time.monotonic() - started < 1.0
    assert not thread.is_alive()
    assert not renewer.is_alive()
    with pytest.raises(LockError, match="closed"):
        manager.lock("job").acquire()


@pytest.mark.slow
def test_close_interrupts_a_renewer_connecting_to_a_frozen_redis(
    fault_server: RedisServer, managers: ManagerFactory
) -> None:
    """Redis frozen while the renewer makes its first connection (5 s timeouts, the container's default):
    close() ends both threads at once, and no renewal reaches Redis once it resumes."""
    manager = managers(fault_server, watchdog_timeout=5.0, watchdog_connect_timeout=5.0)
    ttl = 2.0
    with fault_server.client(decode_responses=True) as admin:
        lease = manager.lock("job", ttl=ttl).acquire()  # renewal due at ttl/3, on a connection not yet made
        calls = evalsha_calls(admin)
        watchdog, renewer = manager.watchdog.thread, manager.watchdog.renewer_thread
        assert watchdog is not None
        assert renewer is not None
        fault_server.pause()
        try:
            wait_until(lease.renewing.locked, timeout=ttl, interval=0.005)  # the renewal is submitted...
            time.sleep(0.2)  # ...and the renewer blocked in the connect handshake
            started = time.monotonic()
            manager.close()
            took = time.monotonic() - started
        finally:
            fault_server.resume()
        assert took < 0.5
        assert not watchdog.is_alive()
        assert not renewer.is_alive()
        pttl = admin.pttl("tickerq:lock:job")
        assert 0 < pttl < ttl * 1000 * 2 / 3
        wait_until(lambda: -2 == admin.pttl("tickerq:lock:job"), timeout=ttl)  # expires unrenewed
        assert calls == evalsha_calls(admin)


def stop_watchdog(client: redis.Redis, clock: ManualClock, when: str) -> float:
    """Start a watchdog watching a far deadline, request its stop ``when``; return how long it took to end."""
    watchdog = Watchdog(client, on_resurrected=lambda lease: None, clock=clock)
    now = clock.monotonic()
    far = LocalLease(name="far", token="far", fence=1, hold=30, renew_every=10, sent_at=now)
    if when == "before start":
        watchdog.request_stop()
        assert not watchdog.register(far)  # closed: nothing watched, no thread
        assert watchdog.thread is None
    elif when == "inside a tick":
        stopper = LocalLease(
            name="stopper", token="stopper", fence=1, hold=1, renew_every=1, sent_at=now, clock=clock,
            on_expired=lambda lease, reason: watchdog.request_stop(),
        )  # fmt: skip
        assert watchdog.register(far)
        assert watchdog.register(stopper)
        clock.advance(1.0)  # the stopper expires: the watch thread asks itself to stop mid-tick
        wait_until(lambda: stopper.is_lost)
    else:
        assert watchdog.register(far)  # the watch thread starts and sleeps until the far deadline
        if when == "while it sleeps":
            wait_until(lambda: watchdog.running)
            time.sleep(0.02)  # let it reach its wait
        watchdog.request_stop()
    thread, renewer = watchdog.thread, watchdog.renewer_thread
    started = time.monotonic()
    assert watchdog.wait_stopped(started + 2.0)
    assert thread is None or not thread.is_alive()
    assert renewer is None or not renewer.is_alive()
    return time.monotonic() - started


@pytest.mark.parametrize("when", ["before start", "as it starts", "while it sleeps", "inside a tick"])
def test_a_requested_stop_ends_the_watchdog_at_once(redis_server: RedisServer, when: str) -> None:
    """request_stop() before, as, between or inside the deadline thread's ticks ends both threads
    within 0.5 s, with time frozen (a ManualClock): no stop is lost to a wait of the watch."""
    with redis_server.client(retry=None) as client:
        for _ in range(20 if when == "as it starts" else 1):  # stops land at varied points of the first pass
            assert stop_watchdog(client, ManualClock(), when) < 0.5


def test_on_lost_runs_on_the_dispatcher_passed_in_and_close_leaves_it_running(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """LockManager(dispatcher=...) runs on_lost on that dispatcher's thread; close() does not stop it."""
    dispatcher = Dispatcher("shared-callbacks")
    client, watchdog_client = redis_server.client(retry=None), redis_server.client(retry=None)
    manager = LockManager(client, watchdog_client, KEYS, "a", dispatcher=dispatcher)
    threads: list[str] = []
    try:
        lease = manager.lock(
            "job", ttl=0.3, on_lost=lambda _: threads.append(threading.current_thread().name)
        ).acquire()
        redis_client.delete("tickerq:lock:job")
        assert lease.lost.wait(2)
        wait_until(lambda: threads)
        assert ["shared-callbacks-1"] == threads
        manager.close()
        assert "done" == dispatcher.submit(lambda: "done").result(timeout=2)
    finally:
        manager.close()
        dispatcher.request_stop()
        dispatcher.wait_stopped(time.monotonic() + 2)
        client.close()
        watchdog_client.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_cannot_extend_the_parents_lease(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A forked child's extend() of its parent's lease raises LockError and sends nothing."""
    lock = managers().lock("job", ttl=30, auto_renew=False)
    lock.acquire()
    redis_client.pexpire("tickerq:lock:job", 10_000)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            lock.extend()
        except LockLostError:
            status = 2
        except LockError as exc:
            status = 0 if "fork" in str(exc) else 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)
    assert redis_client.pttl("tickerq:lock:job") <= 10_000
    assert lock.release() is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_does_not_believe_parent_watchdog_runs(managers: ManagerFactory) -> None:
    """After fork the child sees no watchdog running and starts its own for its own lease."""
    manager = managers()
    with manager.lock("parent-job", ttl=30):
        assert manager.watchdog.is_running
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            status = 1
            try:
                if not manager.watchdog.is_running and [] == manager.watchdog.leases():
                    with manager.lock("child-job", ttl=30):
                        status = 0 if manager.watchdog.is_running else 2
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        assert manager.watchdog.is_running
