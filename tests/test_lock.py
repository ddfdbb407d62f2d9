"""Distributed locks against a real redis-server: exclusion, fences, renewal, loss, fairness, faults."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests import lock_worker
from tests.conftest import wait_until
from tickerq.errors import ConfigurationError, KeyTypeError, LockError, LockLostError, LockTimeoutError
from tickerq.redis import lock as lock_module
from tickerq.redis.keys import Keys
from tickerq.redis.lock import ACQUIRE, DEAD_WAITER_STALL_BOUND, RELEASE, Lease, LockManager
from tickerq.redis.watchdog import THREAD_NAME
from tickerq.testing import RedisServer

KEYS = Keys(lock_worker.INSTANCE)
SPAWN = multiprocessing.get_context("spawn")

ManagerFactory = Callable[..., LockManager]


@pytest.fixture
def managers(redis_server: RedisServer) -> Iterator[ManagerFactory]:
    """Builds LockManagers (each with its own two clients) and closes them all after the test."""
    made: list[tuple[LockManager, redis.Redis, redis.Redis]] = []

    def make(server: RedisServer = redis_server, owner: str = "node-a") -> LockManager:
        made.append(lock_worker.make_manager(server.host, server.port, owner))
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
    args = ["tok-1", 30_000, "", 0, keys.wake_prefix, 1500, 500]
    with redis_server.client() as client:
        assert [1, 1] == ACQUIRE(client, keys.script_keys, args)
        assert [1, 1] == ACQUIRE(client, keys.script_keys, args)
        assert "1" == redis_client.get(keys.fence)
        assert 1 == RELEASE(client, keys.script_keys, ["tok-1", "", 1, keys.wake_prefix, 500])
        assert 2 == RELEASE(client, keys.script_keys, ["tok-1", "", 1, keys.wake_prefix, 500])


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


def test_waiter_is_woken_by_release_not_by_polling(
    managers: ManagerFactory, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With polling slowed to 10 s, a waiter still gets the lock within a second of its release."""
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
    old_lock = managers(owner="old").lock("job", ttl=0.4, auto_renew=False)
    old = old_lock.acquire()
    started = time.monotonic()
    new_lock = managers(owner="new").lock("job", ttl=5, wait_timeout=5)
    new = new_lock.acquire()
    assert time.monotonic() - started >= 0.35
    assert old.lost.is_set()
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


@pytest.mark.slow
def test_watchdog_keeps_lease_for_five_ttls_and_stops_after_release(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """A 0.6 s lease held 3 s stays ours with an unchanged fence; after release nothing renews it."""
    manager, other = managers(owner="a"), managers(owner="b")
    lock = manager.lock("job", ttl=0.6)
    lease = lock.acquire()
    thread = manager.watchdog.thread
    assert thread is not None
    assert THREAD_NAME == thread.name
    assert thread.daemon
    deadline = time.monotonic() + 3.0
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
    time.sleep(0.8)  # more than a ttl: a renewal would have run (and re-created the key)
    assert before == evalsha_calls(redis_client)
    assert redis_client.get("tickerq:lock:job") is None
    assert [] == manager.watchdog.leases()


@pytest.mark.slow
def test_renewals_are_batched_in_one_round_trip_per_tick(
    managers: ManagerFactory, redis_client: redis.Redis
) -> None:
    """Three leases with the same ttl are renewed by one script call per tick, not three."""
    manager = managers()
    locks = [manager.lock(f"job-{i}", ttl=0.9) for i in range(3)]
    for lock in locks:
        lock.acquire()
    before = evalsha_calls(redis_client)
    time.sleep(1.8)  # about six ticks at ttl/3
    renewals = evalsha_calls(redis_client) - before
    assert 3 <= renewals <= 9  # unbatched would be about 18
    assert [True, True, True] == [lock.release() for lock in locks]


@pytest.mark.parametrize("fault", ["delete", "overwrite", "wrong type"])
def test_external_change_declares_lost_once(
    managers: ManagerFactory, redis_client: redis.Redis, fault: str
) -> None:
    """A lock key deleted, overwritten or replaced from outside: on_lost runs once on its own thread."""
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
    assert [(lease, "tickerq-lock-lost")] == calls
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
    """With redis-server stopped, the lease is lost within the ttl; the outage is logged once."""
    caplog.set_level(logging.WARNING, logger="tickerq.redis.watchdog")
    ttl = 1.0
    lost_calls: list[Lease] = []
    manager = managers(fault_server)
    lock = manager.lock("job", ttl=ttl, on_lost=lost_calls.append)
    lease = lock.acquire()
    stopped = time.monotonic()
    fault_server.stop()
    assert lease.lost.wait(ttl)  # the last renewal was sent before the stop
    assert time.monotonic() - stopped > ttl / 3  # not at the first failed renewal
    assert "within its ttl" in (lease.lost_reason or "")
    outages = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert 1 == len(outages)
    assert manager.watchdog.is_running
    fault_server.start()
    assert lock.release() is False
    wait_until(lambda: lost_calls)
    assert [lease] == lost_calls


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


# -- thread lifecycle -----------------------------------------------------------------


def test_close_stops_watchdog_and_is_safe_twice(managers: ManagerFactory) -> None:
    """close() ends the watchdog thread promptly, twice is fine, and later locks are refused."""
    manager = managers()
    assert manager.watchdog.thread is None  # started lazily
    with manager.lock("job", ttl=30):
        thread = manager.watchdog.thread
    assert thread is not None
    started = time.monotonic()
    manager.close()
    manager.close()
    assert time.monotonic() - started < 1.0
    assert not thread.is_alive()
    with pytest.raises(LockError, match="closed"):
        manager.lock("job").acquire()


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
