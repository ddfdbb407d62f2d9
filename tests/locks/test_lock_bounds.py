"""How long lock calls may take while Redis is frozen, and the shortest ttl a lock takes.

The bounds are behaviour, not performance: each is asserted loosely (twice the bound
plus a second) so that a loaded machine cannot fail them, while the old behaviour
(the client's retries times ``sync_timeout``, then as much again to let go) does.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import redis

from tests.conftest import wait_until
from tickerq import RedisContext, add_tickerq
from tickerq._redis.keys import Keys
from tickerq.errors import ConfigurationError, LockTimeoutError, RedisUnavailableError, TickerQError
from tickerq.locks.lock import MIN_TTL
from tickerq.testing import RedisServer

#: The container's sync_timeout (5 s by default), scaled down; connect_retry stays at its default (3).
SYNC_TIMEOUT = 0.5
KEYS = Keys("tickerq:")


def loosely_within(bound: float) -> float:
    """The time a call bounded by ``bound`` seconds may take on a loaded machine."""
    return 2 * bound + 1.0


@pytest.fixture
def contexts(fault_server: RedisServer) -> Iterator[Callable[[str], RedisContext]]:
    """Builds started containers on the test's own server (default options, sync_timeout scaled down)."""
    containers = []

    def make(node: str) -> RedisContext:
        container = add_tickerq(
            lambda o: (
                o.configure_scheduler(node_identifier=node),
                o.add_redis(configuration=fault_server.address, sync_timeout=SYNC_TIMEOUT),
            )
        )
        container.init_resources()
        containers.append(container)
        context: RedisContext = container.redis_context()
        return context

    yield make
    fault_server.resume()
    for container in containers:
        container.shutdown_resources()


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    server.pause()
    try:
        yield
    finally:
        server.resume()


def timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    """How long ``call`` took, and what it raised."""
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:  # the caller checks what was raised
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


@pytest.mark.parametrize("connected", [True, False], ids=["pooled-connection", "new-connection"])
def test_nonblocking_acquire_on_frozen_redis_answers_within_one_sync_timeout(
    fault_server: RedisServer, contexts: Callable[[str], RedisContext], connected: bool
) -> None:
    """A non-blocking acquire on a frozen Redis raises RedisUnavailableError within about one sync_timeout."""
    ctx = contexts("node-a")
    if connected:
        with ctx.lock("warm-up", blocking=False):
            pass  # a pooled connection is open and the scripts are loaded
    else:
        for client in (ctx.client, ctx.connections.fail_fast):
            client.connection_pool.disconnect()  # the next call connects afresh
    with frozen(fault_server):
        took, error = timed(lambda: ctx.lock("job", ttl=1, blocking=False).acquire())
    assert isinstance(error, RedisUnavailableError)
    assert isinstance(error, TickerQError)
    assert took < loosely_within(SYNC_TIMEOUT)


def test_wait_timeout_bounds_a_waiter_when_redis_freezes(
    fault_server: RedisServer, contexts: Callable[[str], RedisContext]
) -> None:
    """A waiter in line when Redis freezes returns within wait_timeout plus one sync_timeout."""
    holder, waiter = contexts("holder"), contexts("waiter")
    wait_timeout = 0.5
    outcome: list[tuple[float, BaseException | None]] = []
    held = holder.lock("job", ttl=5)  # outlives the freeze
    held.acquire()
    thread = threading.Thread(
        target=lambda: outcome.append(timed(waiter.lock("job", ttl=1, wait_timeout=wait_timeout).acquire))
    )
    with redis.Redis(host=fault_server.host, port=fault_server.port) as admin:
        thread.start()
        wait_until(lambda: admin.llen(KEYS.lock_queue("job")))
    with frozen(fault_server):
        thread.join(30)
        assert outcome, "the waiter did not return while Redis was frozen"
    held.release()
    took, error = outcome[0]
    assert isinstance(error, (RedisUnavailableError, LockTimeoutError))
    assert took < loosely_within(wait_timeout + SYNC_TIMEOUT)


def test_wait_timeout_bounds_an_acquire_on_frozen_redis(
    fault_server: RedisServer, contexts: Callable[[str], RedisContext]
) -> None:
    """An acquire with wait_timeout on a frozen Redis raises RedisUnavailableError within the bound."""
    ctx = contexts("node-a")
    with ctx.lock("warm-up"):
        pass
    with frozen(fault_server):
        took, error = timed(lambda: ctx.lock("job", ttl=1, wait_timeout=0.3).acquire())
    assert isinstance(error, RedisUnavailableError)
    assert took < loosely_within(0.3 + SYNC_TIMEOUT)


def test_blocking_acquire_and_release_on_frozen_redis_give_up(
    fault_server: RedisServer, contexts: Callable[[str], RedisContext]
) -> None:
    """Without wait_timeout, acquire gives up within two sync_timeouts (call and let-go), release in one."""
    ctx = contexts("node-a")
    held = ctx.lock("held", ttl=1)
    held.acquire()
    with frozen(fault_server):
        took, error = timed(lambda: ctx.lock("job", ttl=1).acquire())
        assert isinstance(error, RedisUnavailableError)
        assert took < loosely_within(2 * SYNC_TIMEOUT)
        took, error = timed(held.release)
        assert isinstance(error, RedisUnavailableError)
        assert took < loosely_within(SYNC_TIMEOUT)


def test_lock_is_free_within_its_ttl_after_a_freeze(
    fault_server: RedisServer, contexts: Callable[[str], RedisContext]
) -> None:
    """An acquire that timed out on a frozen Redis, and ran once it thawed, holds the lock at most its ttl."""
    ctx, other = contexts("node-a"), contexts("node-b")
    with ctx.lock("warm-up"):
        pass
    with frozen(fault_server), pytest.raises(RedisUnavailableError):
        ctx.lock("job", ttl=1, blocking=False).acquire()
    thawed = time.monotonic()
    with other.lock("job", ttl=1, wait_timeout=5) as lease:
        assert lease.fence >= 1
    assert time.monotonic() - thawed < loosely_within(1.0)


# -- the shortest ttl -----------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0.05, 0.099, timedelta(milliseconds=1)])
def test_ttl_below_the_floor_is_refused_when_the_lock_is_made(
    contexts: Callable[[str], RedisContext], ttl: float | timedelta
) -> None:
    """ctx.lock() with a ttl below MIN_TTL raises ConfigurationError naming ttl, the value and the minimum."""
    ctx = contexts("node-a")
    with pytest.raises(ConfigurationError, match=r"ttl=.*too short.*at least 0\.1 s") as raised:
        ctx.lock("job", ttl=ttl)
    assert repr(ttl) in str(raised.value)


def test_ttl_at_the_floor_is_held_and_renewed(contexts: Callable[[str], RedisContext]) -> None:
    """A lock with ttl=MIN_TTL is taken and kept by renewal for several ttls."""
    ctx = contexts("node-a")
    with ctx.lock("job", ttl=MIN_TTL) as lease:
        time.sleep(5 * MIN_TTL.total_seconds())
        lease.ensure_held()


def test_extend_below_the_floor_is_refused(contexts: Callable[[str], RedisContext]) -> None:
    """extend() with a ttl below MIN_TTL raises ConfigurationError and leaves the lease held."""
    ctx = contexts("node-a")
    lock = ctx.lock("job", ttl=5)
    with lock as lease:
        with pytest.raises(ConfigurationError, match=r"ttl=0\.01 is too short"):
            lock.extend(0.01)
        lease.ensure_held()


def test_shutdown_releases_a_thread_blocked_in_acquire(redis_server: RedisServer) -> None:
    """shutdown_resources() returns within a second while a thread waits in acquire() (no timeout),
    and that thread then raises ShutdownError, a TickerQError."""
    from tickerq import ShutdownError

    holder = add_tickerq(
        lambda o: (
            o.configure_scheduler(node_identifier="holder"),
            o.add_redis(configuration=redis_server.address),
        )
    )
    waiter = add_tickerq(
        lambda o: (
            o.configure_scheduler(node_identifier="waiter"),
            o.add_redis(configuration=redis_server.address),
        )
    )
    holder.init_resources()
    waiter.init_resources()
    outcome: list[BaseException | None] = []
    try:
        held = holder.redis_context().lock("busy", ttl=10)
        held.acquire()
        lock = waiter.redis_context().lock("busy", ttl=10)

        def wait() -> None:
            try:
                lock.acquire()
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until(lambda: redis_server_has_waiter(redis_server, "busy"))
        started = time.monotonic()
        waiter.shutdown_resources()
        took = time.monotonic() - started
        thread.join(2.0)
        assert not thread.is_alive()
        assert took < 1.0
        assert 1 == len(outcome)
        assert isinstance(outcome[0], ShutdownError)
        assert isinstance(outcome[0], TickerQError)
        held.release()
    finally:
        waiter.shutdown_resources()
        holder.shutdown_resources()


def redis_server_has_waiter(server: RedisServer, name: str) -> bool:
    with redis.Redis(host=server.host, port=server.port) as client:
        return bool(client.zcard(f"tickerq:tq:lock-waiters:{name}"))
