"""DistributedCache.get_or_set_array / invalidate against a real redis-server, and the circuit breaker."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import attrs
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import wait_until
from tickerq._redis.entry import ticks_to_unix_ms
from tickerq._redis.keys import Keys
from tickerq.cache.breaker import CircuitBreaker
from tickerq.cache.cache import DistributedCache
from tickerq.errors import (
    ConfigurationError,
    InvalidKeyError,
    KeyTypeError,
    RedisUnavailableError,
    SerializationError,
    TickerQError,
)
from tickerq.testing import RedisServer

INSTANCE = "tickerq:"
LOGGER = "tickerq.cache.cache"


def make_client(host: str, port: int, timeout: float) -> redis.Redis:
    """A client built the way RedisContext builds the cache's: no retries, short timeouts, bytes."""
    return redis.Redis(
        host=host,
        port=port,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def make_cache(
    server: RedisServer, timeout: float = 1.0, **options: Any
) -> tuple[DistributedCache, redis.Redis]:
    client = make_client(server.host, server.port, timeout)
    return DistributedCache(
        client, Keys(INSTANCE), operation_timeout=timedelta(seconds=timeout), **options
    ), client


@pytest.fixture
def cache(redis_server: RedisServer) -> Iterator[DistributedCache]:
    """A cache on the emptied shared server, waiting at most 1 s for other computers."""
    cache, client = make_cache(redis_server, wait_bound=timedelta(seconds=1))
    yield cache
    client.close()


class Factory:
    """A thread-safe factory that counts its calls, optionally slow or failing."""

    def __init__(self, value: list[Any] | None, delay: float = 0.0, error: Exception | None = None) -> None:
        self.value, self.delay, self.error = value, delay, error
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> list[Any] | None:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)  # short: only to make concurrent callers overlap
        if self.error is not None:
            raise self.error
        return self.value


def run_threads(count: int, target: Callable[[], Any]) -> list[Any]:
    """Run ``target`` in ``count`` threads released together; collect results or exceptions."""
    barrier, results, lock = threading.Barrier(count), [], threading.Lock()

    def run() -> None:
        barrier.wait(timeout=10)
        try:
            result: Any = target()
        except Exception as exc:
            result = exc
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return results


@dataclasses.dataclass(frozen=True)
class Product:
    sku: str
    price: float


@attrs.frozen
class Point:
    x: int
    _label: str


# --- storage format, hits and misses --------------------------------------------------------------


def test_miss_stores_json_array_at_instance_key_with_ttl(
    cache: DistributedCache, redis_client: redis.Redis
) -> None:
    """A miss stores a RedisCache hash at {instance}{key}: JSON data, absexp now + expiration, TTL so."""
    value = [1, "a", {"b": None}]
    assert value == cache.get_or_set_array("users", Factory(value), timedelta(seconds=30))
    entry = redis_client.hgetall("tickerq:users")
    seconds, micros = redis_client.time()
    assert {"absexp", "sldexp", "data"} == set(entry)
    assert '[1,"a",{"b":null}]' == entry["data"]
    assert "-1" == entry["sldexp"]
    assert abs(seconds * 1000 + micros // 1000 + 30_000 - ticks_to_unix_ms(entry["absexp"])) < 1_000
    assert 29_000 <= redis_client.pttl("tickerq:users") <= 30_000
    assert 0 == redis_client.exists("tickerq:tq:cache-lock:users")


def test_hit_returns_cached_array_without_calling_factory(cache: DistributedCache) -> None:
    """A second call returns the stored array and does not call the factory."""
    first, second = Factory([1, 2]), Factory([9])
    cache.get_or_set_array("k", first, 60)
    assert [1, 2] == cache.get_or_set_array("k", second, 60)
    assert (1, 0) == (first.calls, second.calls)


def test_entry_written_by_another_client_is_a_hit(cache: DistributedCache, redis_client: redis.Redis) -> None:
    """Any JSON array in a RedisCache hash at the key is returned as is."""
    redis_client.hset("tickerq:k", mapping={"absexp": -1, "sldexp": -1, "data": '[{"a":1},2]'})
    assert [{"a": 1}, 2] == cache.get_or_set_array("k", Factory(None))


def test_no_expiration_stores_without_ttl(cache: DistributedCache, redis_client: redis.Redis) -> None:
    """expiration=None stores the entry without a TTL and without an absolute expiry."""
    cache.get_or_set_array("forever", Factory([1]))
    assert -1 == redis_client.ttl("tickerq:forever")
    assert ["-1", "-1"] == redis_client.hmget("tickerq:forever", ["absexp", "sldexp"])


def test_expiration_in_seconds_is_accepted(cache: DistributedCache, redis_client: redis.Redis) -> None:
    """A number of seconds works as expiration."""
    cache.get_or_set_array("k", Factory([1]), 1.5)
    assert 1_000 < redis_client.pttl("tickerq:k") <= 1_500


@pytest.mark.parametrize("expiration", [0, -1, timedelta(0), "5"])
def test_bad_expiration_raises_configuration_error(cache: DistributedCache, expiration: Any) -> None:
    """A zero, negative or non-duration expiration is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="expiration"):
        cache.get_or_set_array("k", Factory([1]), expiration)


def test_none_is_returned_and_not_cached(cache: DistributedCache, redis_client: redis.Redis) -> None:
    """A None from the factory is returned, not stored, and the lock is released."""
    factory = Factory(None)
    assert cache.get_or_set_array("k", factory) is None
    assert cache.get_or_set_array("k", factory) is None
    assert 2 == factory.calls
    assert [] == redis_client.keys("tickerq:*")


def test_empty_list_is_cached(cache: DistributedCache, redis_client: redis.Redis) -> None:
    """An empty list is stored and later served as a hit."""
    factory = Factory([])
    assert [] == cache.get_or_set_array("k", factory)
    assert [] == cache.get_or_set_array("k", factory)
    assert 1 == factory.calls
    assert "[]" == redis_client.hget("tickerq:k", "data")


def test_dataclass_items_round_trip_with_item_type(cache: DistributedCache) -> None:
    """Dataclass items come back as instances with item_type, as dicts without it."""
    items = [Product("a", 1.5), Product("b", 2.0)]
    assert items == cache.get_or_set_array("p", Factory(items), 60, item_type=Product)
    assert items == cache.get_or_set_array("p", Factory(None), 60, item_type=Product)
    assert [{"sku": "a", "price": 1.5}, {"sku": "b", "price": 2.0}] == cache.get_or_set_array(
        "p", Factory(None)
    )


def test_attrs_items_round_trip_with_item_type(cache: DistributedCache, redis_client: redis.Redis) -> None:
    """attrs items (private field included) are stored by field name and rebuilt through aliases."""
    items = [Point(x=1, label="a")]
    cache.get_or_set_array("pts", Factory(items), 60, item_type=Point)
    assert '[{"x":1,"_label":"a"}]' == redis_client.hget("tickerq:pts", "data")
    assert items == cache.get_or_set_array("pts", Factory(None), 60, item_type=Point)


# --- bad data and bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"not json", b'{"a":1}', b'"text"', b"\xff\xfe", b'[{"x":1}]'])
def test_unusable_entry_is_a_miss_and_is_overwritten(
    cache: DistributedCache, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    """An entry whose data is not a JSON array of item_type is logged, recomputed and overwritten."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    redis_client.hset("tickerq:k", mapping={"absexp": -1, "sldexp": -1, "data": garbage})
    factory = Factory([Point(x=1, label="a")])
    assert [Point(x=1, label="a")] == cache.get_or_set_array("k", factory, 60, item_type=Point)
    assert 1 == factory.calls
    assert '[{"x":1,"_label":"a"}]' == redis_client.hget("tickerq:k", "data")
    assert ["cache entry 'tickerq:k' is unusable"] == [r.getMessage()[:35] for r in caplog.records]


def test_wrong_type_key_raises_and_is_left_untouched(
    cache: DistributedCache, redis_client: redis.Redis
) -> None:
    """A key holding a Redis list raises KeyTypeError naming key and type; the list survives."""
    redis_client.rpush("tickerq:k", "x")
    factory = Factory([1])
    with pytest.raises(KeyTypeError, match=r"'tickerq:k' holds a Redis list"):
        cache.get_or_set_array("k", factory)
    assert 0 == factory.calls
    assert ["x"] == redis_client.lrange("tickerq:k", 0, -1)


@pytest.mark.parametrize("garbage", [b"[1]", b"not json"])
def test_string_entry_of_an_older_tickerq_is_replaced_by_a_hash(
    cache: DistributedCache, redis_client: redis.Redis, garbage: bytes
) -> None:
    """A string at the key (an older tickerq's layout) is a miss, recomputed and stored as a hash."""
    redis_client.set("tickerq:k", garbage)
    factory = Factory([2])
    assert [2] == cache.get_or_set_array("k", factory, 60)
    assert 1 == factory.calls
    assert {"absexp", "sldexp", "data"} == set(redis_client.hgetall("tickerq:k"))
    assert [2] == cache.get_or_set_array("k", factory, 60)
    assert 1 == factory.calls


def test_hash_without_data_raises_and_is_left_untouched(
    cache: DistributedCache, redis_client: redis.Redis
) -> None:
    """A hash that is not a cache entry (no data field) raises KeyTypeError and survives."""
    redis_client.hset("tickerq:k", "name", "someone's")
    factory = Factory([1])
    with pytest.raises(KeyTypeError, match=r"'tickerq:k' holds a Redis hash without a data field"):
        cache.get_or_set_array("k", factory)
    assert 0 == factory.calls
    assert {"name": "someone's"} == redis_client.hgetall("tickerq:k")


@pytest.mark.parametrize("key", ["", "tq:x", "hb:node", "nodes:registry", "lock:x"])
def test_empty_or_reserved_cache_key_raises(cache: DistributedCache, key: str) -> None:
    """Empty keys and keys in tickerq's own namespaces raise InvalidKeyError."""
    with pytest.raises(InvalidKeyError, match="cache_key"):
        cache.get_or_set_array(key, Factory([1]))
    with pytest.raises(InvalidKeyError, match="cache_key"):
        cache.invalidate(key)


@pytest.mark.parametrize("value", [{"a": 1}, "abc", [object()]])
def test_factory_result_that_cannot_be_cached_raises(
    cache: DistributedCache, redis_client: redis.Redis, value: Any
) -> None:
    """A non-list result or an unencodable item raises SerializationError and frees the lock."""
    with pytest.raises(SerializationError):
        cache.get_or_set_array("k", Factory(value))
    assert [] == redis_client.keys("tickerq:*")


def test_factory_exception_propagates_and_releases_lock(
    cache: DistributedCache, redis_client: redis.Redis
) -> None:
    """The factory's exception reaches the caller, and the recompute lock is released."""
    with pytest.raises(LookupError, match="db down"):
        cache.get_or_set_array("k", Factory(None, error=LookupError("db down")))
    assert [] == redis_client.keys("tickerq:*")
    assert [1] == cache.get_or_set_array("k", Factory([1]))


def test_factory_asking_for_its_own_entry_raises(cache: DistributedCache, redis_client: redis.Redis) -> None:
    """A factory that re-enters get_or_set_array for its own key gets TickerQError instead of a deadlock."""
    with pytest.raises(TickerQError, match="asked for that same entry"):
        cache.get_or_set_array("k", lambda: cache.get_or_set_array("k", Factory([1])))
    assert [] == redis_client.keys("tickerq:*")


# --- stampede --------------------------------------------------------------------------------------


def test_threads_of_one_process_share_one_factory_call(cache: DistributedCache) -> None:
    """16 threads missing one key together cause one factory call and each get an equal, separate list."""
    factory = Factory([{"n": 1}], delay=0.2)
    results = run_threads(16, lambda: cache.get_or_set_array("k", factory, 60))
    assert 1 == factory.calls
    assert [[{"n": 1}]] * 16 == results
    assert 16 == len({id(result) for result in results})


def test_waiting_threads_receive_the_factory_error(cache: DistributedCache) -> None:
    """Threads waiting on a failing computation get its exception instead of retrying the factory."""
    factory = Factory(None, delay=0.2, error=LookupError("db down"))
    results = run_threads(8, lambda: cache.get_or_set_array("k", factory))
    assert 1 == factory.calls
    assert 8 * [True] == [isinstance(r, LookupError) for r in results]


def stampede_child(host: str, port: int, keys: list[str], ready: Any, out: Any) -> None:
    """One process of the stampede: 16 threads miss each key together; reports what they got."""
    client = make_client(host, port, timeout=5.0)
    cache = DistributedCache(client, Keys(INSTANCE), operation_timeout=timedelta(seconds=5))
    results: dict[str, list[Any]] = {}
    try:
        for key in keys:

            def factory(key: str = key) -> list[Any]:
                client.incr(f"calls:{key}")
                time.sleep(0.2)
                return [key, 1, 2]

            ready.wait(timeout=60)  # all processes start each key together
            results[key] = run_threads(16, lambda key=key, f=factory: cache.get_or_set_array(key, f, 60))
        out.put(results)
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_stampede_across_processes_calls_factory_once(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """3 processes x 16 threads missing the same cold key together cause exactly one factory call."""
    context = multiprocessing.get_context("spawn")
    keys = ["cold-a", "cold-b"]
    ready, out = context.Barrier(3), context.Queue()
    processes = [
        context.Process(target=stampede_child, args=(redis_server.host, redis_server.port, keys, ready, out))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    try:
        reports = [out.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert [0, 0, 0] == [process.exitcode for process in processes]
    assert {"calls:cold-a": "1", "calls:cold-b": "1"} == {
        k: redis_client.get(k) for k in ("calls:cold-a", "calls:cold-b")
    }
    for key in keys:
        assert 48 * [[key, 1, 2]] == [result for report in reports for result in report[key]]


def test_crashed_computer_does_not_block_waiters(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """With the recompute lock held by a dead process, waiters compute themselves after about wait_bound."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cache, client = make_cache(redis_server, wait_bound=timedelta(seconds=0.5))
    redis_client.set("tickerq:tq:cache-lock:k", "dead-process-token", px=60_000)
    factory = Factory([1])
    started = time.monotonic()
    results = run_threads(8, lambda: cache.get_or_set_array("k", factory, 60))
    elapsed = time.monotonic() - started
    client.close()
    assert 0.45 <= elapsed < 3.0
    assert ([[1]] * 8, 1) == (results, factory.calls)
    assert "[1]" == redis_client.hget("tickerq:k", "data")  # stored, so other processes stop waiting too
    assert 1 == sum("did not finish within" in r.getMessage() for r in caplog.records)


def test_result_is_stored_when_lock_lapsed_during_slow_factory(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A factory slower than the recompute lock's TTL still gets its result cached."""
    cache, client = make_cache(redis_server, recompute_lock_ttl=timedelta(seconds=0.05))
    assert [1] == cache.get_or_set_array("k", Factory([1], delay=0.2))
    client.close()
    assert "[1]" == redis_client.hget("tickerq:k", "data")


# --- invalidate ------------------------------------------------------------------------------------


def test_invalidate_removes_entry(cache: DistributedCache, redis_client: redis.Redis) -> None:
    """invalidate() deletes the entry, reports whether there was one, and the next call recomputes."""
    cache.get_or_set_array("k", Factory([1]))
    assert (True, False) == (cache.invalidate("k"), cache.invalidate("k"))
    assert 0 == redis_client.exists("tickerq:k")
    assert [2] == cache.get_or_set_array("k", Factory([2]))


def test_invalidate_during_computation_discards_its_result(
    cache: DistributedCache, redis_client: redis.Redis
) -> None:
    """A computation in flight when the entry is invalidated returns its result but does not store it."""
    started, go = threading.Event(), threading.Event()

    def factory() -> list[int]:
        started.set()
        assert go.wait(timeout=10)
        return [1]

    results = []
    thread = threading.Thread(target=lambda: results.append(cache.get_or_set_array("k", factory)))
    thread.start()
    assert started.wait(timeout=10)
    assert cache.invalidate("k") is False
    go.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert [[1]] == results
    assert [] == redis_client.keys("tickerq:*")


# --- fail-open -----------------------------------------------------------------------------------


def test_fails_open_while_redis_is_stopped_and_recovers(
    fault_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With redis-server stopped: factory results, no errors, one warning; back to caching when it returns."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    cache, client = make_cache(fault_server, timeout=0.5, breaker_open_for=timedelta(seconds=0.5))
    fault_server.stop()
    started = time.monotonic()
    assert [[n] for n in range(20)] == [cache.get_or_set_array("k", Factory([n])) for n in range(20)]
    assert time.monotonic() - started < 1.5
    fault_server.start()
    assert wait_until(lambda: cache.get_or_set_array("k", Factory([7]), 60) and client.exists("tickerq:k"))
    assert [7] == cache.get_or_set_array("k", Factory([8]))
    client.close()
    levels = [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records]
    assert [
        ("WARNING", "Redis is unavailable to the cache"),
        ("INFO", "Redis answers again; the cache is back in use"),
    ] == levels


@pytest.mark.slow
def test_fails_open_when_redis_is_paused_within_the_operation_timeout(
    fault_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGSTOPped server costs the first call ~operation_timeout, later calls nothing; then it recovers."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    cache, client = make_cache(fault_server, timeout=0.5, breaker_open_for=timedelta(seconds=2))
    assert [0] == cache.get_or_set_array("warm", Factory([0]))  # a pooled connection exists
    fault_server.pause()
    try:
        started = time.monotonic()
        assert [1] == cache.get_or_set_array("k", Factory([1]))
        first = time.monotonic() - started
        started = time.monotonic()
        assert [[2]] * 20 == [cache.get_or_set_array("k", Factory([2])) for _ in range(20)]
        rest = time.monotonic() - started
    finally:
        fault_server.resume()
    assert 0.45 <= first < 1.5
    assert rest < 0.25
    assert wait_until(lambda: cache.get_or_set_array("k", Factory([3]), 60) and client.exists("tickerq:k"))
    client.close()
    assert ["WARNING", "INFO"] == [r.levelname for r in caplog.records]


def test_threads_share_one_factory_call_while_breaker_is_open(fault_server: RedisServer) -> None:
    """During an outage, concurrent callers of one key still share one factory call."""
    cache, client = make_cache(fault_server, timeout=0.5, breaker_open_for=timedelta(seconds=30))
    fault_server.stop()
    cache.get_or_set_array("k", Factory([0]))  # opens the breaker
    factory = Factory([1], delay=0.2)
    assert [[1]] * 8 == run_threads(8, lambda: cache.get_or_set_array("k", factory))
    assert 1 == factory.calls
    client.close()


def test_invalidate_with_redis_down_raises_redis_unavailable(fault_server: RedisServer) -> None:
    """invalidate() cannot fail open: it raises RedisUnavailableError naming the key."""
    cache, client = make_cache(fault_server, timeout=0.5)
    fault_server.stop()
    with pytest.raises(RedisUnavailableError, match="tickerq:k"):
        cache.invalidate("k")
    client.close()


# --- circuit breaker (pure) ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_then_lets_one_probe_through() -> None:
    """After a failure calls are refused for open_for, then exactly one probe passes; success closes it."""
    clock = FakeClock()
    breaker = CircuitBreaker(timedelta(seconds=5), clock=clock)
    assert (True, "closed") == (breaker.allow(), breaker.state)
    assert breaker.record_failure() is True
    assert (False, "open") == (breaker.allow(), breaker.state)
    clock.now += 5
    assert "half-open" == breaker.state
    assert [True, False, False] == [breaker.allow() for _ in range(3)]
    assert breaker.record_success() is True
    assert (True, "closed", False) == (breaker.allow(), breaker.state, breaker.record_success())


def test_breaker_failed_probe_reopens_without_starting_a_new_outage() -> None:
    """A failing probe re-opens the breaker and reports no new outage."""
    clock = FakeClock()
    breaker = CircuitBreaker(5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow() is True
    assert breaker.record_failure() is False
    assert breaker.allow() is False


def test_breaker_replaces_a_probe_that_never_reports() -> None:
    """A probe silent for open_for is presumed lost and another caller probes."""
    clock = FakeClock()
    breaker = CircuitBreaker(timedelta(seconds=1), clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert (True, False) == (breaker.allow(), breaker.allow())
    clock.now += 1
    assert breaker.allow() is True
