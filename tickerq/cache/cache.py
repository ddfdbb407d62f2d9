"""A get-or-set cache of JSON arrays in Redis that calls each factory once and fails open.

Entries live at ``{instance}{cache_key}`` as orjson-encoded JSON arrays, stored as
TickerQ .NET stores them (a ``RedisCache`` hash of ``absexp``, ``sldexp`` and ``data``,
see :mod:`tickerq._redis.entry`): an entry written by a .NET node is a hit here, and
ours are hits there, with their expiry. A hit is one ``HMGET`` (plus the TTL renewal a
.NET entry with a sliding expiration asks of its readers). A string at the key is an
older tickerq's entry: a miss, replaced by the recomputed hash. A miss
is filled by one computer for the whole cluster: threads of one process share
one call (in-process single-flight), and processes and nodes elect a computer
with a short recompute lock (``SET NX PX`` on an internal key, with a random
token). Waiters poll the entry with a short backoff and, after ``wait_bound``,
compute it themselves, so a crashed computer delays them but never blocks them.

Redis trouble (down, slow, paused, out of memory, refusing the command) never
reaches the caller: the call returns ``factory()``'s result, the outage is
logged once (a warning when it starts, an info line when Redis answers again)
and a circuit breaker keeps further calls off Redis for ``breaker_open_for``.

Deliberate choices: a key holding another Redis type (or a hash without ``data``) raises ``KeyTypeError``
and is never overwritten (it is someone's data); threads waiting on a factory
that raised get its exception (no retry storm against a failing database);
``invalidate`` raises ``RedisUnavailableError`` when it cannot reach Redis,
because a silently lost invalidation serves stale data later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from datetime import timedelta
from typing import TypeVar

import redis

from tickerq._redis.entry import FIELDS, NOT_SET, sliding_renewal_ms
from tickerq._redis.keys import Keys
from tickerq._redis.scripts import LuaScript
from tickerq._redis.translate import is_wrong_type
from tickerq.cache.breaker import CircuitBreaker
from tickerq.durations import Duration, to_milliseconds, to_timedelta
from tickerq.errors import (
    KeyTypeError,
    RedisUnavailableError,
    SerializationError,
    ShutdownError,
    TickerQError,
)
from tickerq.serialization import dumps_array, loads_array

__all__ = ["DistributedCache"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_ACQUIRE = LuaScript("cache_acquire", package="tickerq.cache")
_STORE = LuaScript("cache_store", package="tickerq.cache")
_RELEASE = LuaScript("cache_release", package="tickerq.cache")
_INVALIDATE = LuaScript("cache_invalidate", package="tickerq.cache")

_HIT, _LOCKED = 1, 2  # cache_acquire.lua's replies
_NOT_AN_ENTRY = -2  # cache_acquire.lua's reply for a key that holds something else
_INVALIDATED, _LOCK_TAKEN, _WRONG_TYPE = 0, -1, -2  # cache_store.lua's replies other than 1 (stored)
_FIRST_POLL_S, _MAX_POLL_S = 0.005, 0.05
_ZERO, _ONE_MS = timedelta(0), timedelta(milliseconds=1)
_RECOVERED = "Redis answers again; the cache is back in use"
_FIELDS = tuple(field.encode() for field in FIELDS)  # bytes: redis-py sends them without encoding


class _Flight(Future[bytes | None]):
    """One fill in this process; waiting threads get its JSON payload (``None`` if not cached)."""

    def __init__(self) -> None:
        super().__init__()
        self.leader = threading.get_ident()


class DistributedCache:
    """Get-or-set of JSON arrays in Redis, with a stampede guard and fail-open.

    Args:
        client: A redis-py client with bytes responses, no retries and socket
            timeouts of ``operation_timeout``. Used, never closed.
        keys: Builds the entry and lock key names.
        operation_timeout: The client's socket timeout: what one failing
            Redis call costs (mentioned in logs).
        recompute_lock_ttl: How long the recompute lock holds when its owner
            never releases it (a crashed process).
        wait_bound: How long a process waits for another one's computation
            before it calls its own factory.
        breaker_open_for: How long calls skip Redis after a Redis error
            before one call probes it again.

    Raises:
        ConfigurationError: A duration is not a positive duration.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        operation_timeout: timedelta,
        recompute_lock_ttl: timedelta = timedelta(seconds=10),
        wait_bound: timedelta = timedelta(seconds=5),
        breaker_open_for: timedelta = timedelta(seconds=5),
    ) -> None:
        self._client = client
        self._keys = keys
        self.operation_timeout = to_timedelta(operation_timeout, field="operation_timeout")
        self.recompute_lock_ttl = to_timedelta(recompute_lock_ttl, field="recompute_lock_ttl")
        self.wait_bound = to_timedelta(wait_bound, field="wait_bound")
        self._lock_ttl_ms = to_milliseconds(self.recompute_lock_ttl)
        self._wait_bound_s = self.wait_bound.total_seconds()
        self._breaker = CircuitBreaker(to_timedelta(breaker_open_for, field="breaker_open_for"))
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = threading.Event()

    def close(self) -> None:
        """Release the threads waiting for a computation with ``ShutdownError``; safe twice.

        Threads waiting for another thread's (or process's) factory raise at once;
        a factory already running finishes for its own caller. Later calls still
        work, but any of them that would wait for another computer raises.
        """
        self._closed.set()
        with self._flights_lock:
            flights = list(self._flights.items())
        for key, flight in flights:
            # The leader's own result, set later, is then ignored (see _settle).
            _settle(flight, exception=self._shutdown(key))

    def _shutdown(self, key: str) -> ShutdownError:
        return ShutdownError(
            f"cache entry {key!r}: shutdown_resources() released this wait for its computation",
            operation="cache get_or_set",
            key=key,
        )

    def get_or_set_array(
        self,
        cache_key: str,
        factory: Callable[[], list[T] | None],
        expiration: Duration | None = None,
        *,
        item_type: type[T] | None = None,
    ) -> list[T] | None:
        """Return the cached array at ``cache_key``, filling it from ``factory`` on a miss.

        On a miss ``factory`` runs once for all the threads, processes and
        nodes that miss the key together; threads of this process that waited
        for it get their own decoded copy of the result, or the exception it
        raised. A ``None`` result is returned and not cached; ``[]`` is cached.
        An entry that does not decode (not JSON, not an array, items that do
        not fit ``item_type``) is logged, treated as a miss and overwritten.
        When Redis is unavailable the factory's result is returned uncached.

        Args:
            cache_key: The entry's key under the instance name.
            factory: Computes the array; it may return ``None`` (not cached).
            expiration: The entry's TTL (``timedelta`` or seconds); ``None``
                keeps it until invalidated or evicted.
            item_type: Build each item of a cached array with
                ``item_type(**obj)`` (dataclasses, attrs classes); without it
                items come back as plain JSON values.

        Returns:
            The cached or computed array, or ``None`` from the factory.

        Raises:
            InvalidKeyError: ``cache_key`` is empty or reserved.
            ConfigurationError: ``expiration`` is not a positive duration.
            KeyTypeError: The key holds another Redis type (it is left untouched).
            SerializationError: The factory returned something other than a
                list of JSON-encodable items.
            TickerQError: The factory asked for its own entry (which would deadlock).
            Exception: Whatever ``factory`` raised.
        """
        key = self._keys.cache(cache_key)
        if expiration is None:
            ttl_ms = 0
        elif expiration.__class__ is timedelta and expiration > _ZERO:
            ttl_ms = -(-expiration // _ONE_MS)  # to_milliseconds, inlined: this is the hit path
        else:
            ttl_ms = to_milliseconds(to_timedelta(expiration, field="expiration"))
        bad: bytes | None = None
        online = self._breaker.allow()
        if online:
            try:
                absexp, sldexp, raw = self._client.execute_command("HMGET", key, *_FIELDS)  # type: ignore[no-untyped-call]
            except redis.RedisError as exc:
                # WRONGTYPE: an older tickerq's string or someone else's data; the
                # acquire script tells which.
                if not is_wrong_type(exc):
                    self._redis_error(exc, key)
                    online = False
            else:
                if self._breaker.record_success():  # inline: this is the hit path
                    log.info(_RECOVERED)
                if raw is not None:
                    if sldexp != NOT_SET and sldexp is not None:
                        self._renew(key, absexp, sldexp)
                    try:
                        return loads_array(raw, item_type)
                    except SerializationError as exc:
                        log.warning("cache entry %r is unusable, recomputing it: %s", key, exc)
                        bad = raw
        return self._fill(cache_key, key, factory, ttl_ms=ttl_ms, item_type=item_type, bad=bad, online=online)

    def invalidate(self, cache_key: str) -> bool:
        """Remove the entry at ``cache_key``.

        A computation of this entry already in flight is marked stale, so its
        result is returned to its callers but not stored.

        Returns:
            ``True`` if an entry was removed.

        Raises:
            InvalidKeyError: ``cache_key`` is empty or reserved.
            RedisUnavailableError: Redis could not be reached, so the entry may
                still be there (unlike reads, a lost invalidation is not harmless).
        """
        key = self._keys.cache(cache_key)
        try:
            removed = _INVALIDATE(self._client, (key, self._keys.cache_recompute_lock(cache_key)))
        except redis.RedisError as exc:
            self._redis_error(exc, key)
            raise RedisUnavailableError(
                f"could not invalidate cache entry {key!r}: {exc}", operation="cache invalidate", key=key
            ) from exc
        self._redis_ok()
        return bool(removed)

    def _fill(
        self,
        cache_key: str,
        key: str,
        factory: Callable[[], list[T] | None],
        *,
        ttl_ms: int,
        item_type: type[T] | None,
        bad: bytes | None,
        online: bool,
    ) -> list[T] | None:
        """In-process single-flight: the first thread to miss ``key`` leads, the others wait for it."""
        if os.getpid() != self._pid:
            self._after_fork()
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if flight.leader == threading.get_ident():
                raise TickerQError(f"the factory for cache entry {key!r} asked for that same entry")
            if self._closed.is_set():
                raise self._shutdown(key)
            payload = flight.result()  # re-raises the leader's exception, as Future does
            if payload is None:
                return None
            try:
                return loads_array(payload, item_type)
            except SerializationError as exc:  # this caller's item_type differs from the leader's
                log.warning("cache entry %r does not fit this caller, computing it here: %s", key, exc)
                return factory()
        try:
            if online:
                value, payload = self._fill_shared(cache_key, key, factory, ttl_ms, item_type, bad)
            else:
                value, payload = _compute(factory)
        except BaseException as exc:
            self._land(key, flight)
            _settle(flight, exception=exc)
            raise
        self._land(key, flight)
        _settle(flight, payload)
        return value

    def _land(self, key: str, flight: _Flight) -> None:
        with self._flights_lock:
            if self._flights.get(key) is flight:
                del self._flights[key]

    def _fill_shared(  # noqa: PLR0917
        self,
        cache_key: str,
        key: str,
        factory: Callable[[], list[T] | None],
        ttl_ms: int,
        item_type: type[T] | None,
        bad: bytes | None,
    ) -> tuple[list[T] | None, bytes | None]:
        """Across processes: take the recompute lock and compute, or wait for the holder."""
        lock_key = self._keys.cache_recompute_lock(cache_key)
        token = secrets.token_hex(16)
        bad_sha = "" if bad is None else hashlib.sha1(bad).hexdigest()  # noqa: S324 - an identity, not security
        deadline = time.monotonic() + self._wait_bound_s
        delay = _FIRST_POLL_S
        while True:
            if self._closed.is_set():
                raise self._shutdown(key)
            if self._breaker.state == "open":  # another thread found Redis down: do not wait on it
                return _compute(factory)
            try:
                reply = _ACQUIRE(self._client, (key, lock_key), (token, self._lock_ttl_ms, bad_sha))
            except redis.RedisError as exc:
                self._redis_error(exc, key)
                return _compute(factory)
            self._redis_ok()
            if reply[0] == _NOT_AN_ENTRY:
                raise self._not_an_entry(key, _text(reply[1]))
            if reply[0] == _HIT:
                raw: bytes = reply[1]
                try:
                    return loads_array(raw, item_type), raw
                except SerializationError as exc:
                    log.warning("cache entry %r is unusable, recomputing it: %s", key, exc)
                    bad_sha = hashlib.sha1(raw).hexdigest()  # noqa: S324
                    continue
            if reply[0] == _LOCKED:
                return self._compute_and_store(key, lock_key, token, factory, ttl_ms, force=False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "cache entry %r: its computer did not finish within %g s; computing it here",
                    key,
                    self._wait_bound_s,
                )
                return self._compute_and_store(key, lock_key, token, factory, ttl_ms, force=True)
            if self._closed.wait(min(remaining, delay * random.uniform(0.5, 1.0))):
                raise self._shutdown(key)
            delay = min(delay * 2, _MAX_POLL_S)

    def _compute_and_store(
        self,
        key: str,
        lock_key: str,
        token: str,
        factory: Callable[[], list[T] | None],
        ttl_ms: int,
        *,
        force: bool,
    ) -> tuple[list[T] | None, bytes | None]:
        """Run the factory and store its result; release our lock whatever happens."""
        try:
            value, payload = _compute(factory)
        except BaseException:
            if not force:
                self._release(key, lock_key, token)
            raise
        if payload is None:
            if not force:
                self._release(key, lock_key, token)
            return value, payload
        try:
            outcome = _STORE(self._client, (key, lock_key), (token, payload, ttl_ms, int(force)))
        except redis.RedisError as exc:
            self._redis_error(exc, key)
            return value, payload
        self._redis_ok()
        if outcome == _INVALIDATED:
            log.info("cache entry %r was invalidated while it was computed; result not stored", key)
        elif outcome == _LOCK_TAKEN:
            log.info("cache entry %r: our recompute lock lapsed and another computer took it", key)
        elif outcome == _WRONG_TYPE:
            log.warning("cache key %r now holds another Redis type; result not stored, key untouched", key)
        return value, payload

    def _release(self, key: str, lock_key: str, token: str) -> None:
        try:
            _RELEASE(self._client, (lock_key,), (token,))
        except redis.RedisError as exc:  # the lock expires by itself
            self._redis_error(exc, key)

    def _renew(self, key: str, absexp: bytes | None, sldexp: bytes) -> None:
        """Renew a sliding entry's TTL as a RedisCache reader does (entries .NET wrote with one)."""
        window_ms = sliding_renewal_ms(absexp, sldexp, time.time_ns() // 1_000_000)
        if window_ms is None:
            return
        try:  # SE.Redis sends whole seconds as EXPIRE
            if window_ms % 1000 == 0:
                self._client.expire(key, window_ms // 1000)
            else:
                self._client.pexpire(key, window_ms)
        except redis.RedisError as exc:
            self._redis_error(exc, key)

    def _not_an_entry(self, key: str, kind: str) -> KeyTypeError:
        return KeyTypeError(
            f"cache key {key!r} holds a Redis {kind}, not an entry written by get_or_set_array "
            "(a hash of absexp, sldexp and data); it was left untouched: delete it or use another cache_key",
            operation="cache",
            key=key,
        )

    def _redis_ok(self) -> None:
        if self._breaker.record_success():
            log.info(_RECOVERED)

    def _redis_error(self, exc: redis.RedisError, key: str) -> None:
        """Raise for a wrong-type key (a data problem); count anything else as an outage."""
        if is_wrong_type(exc):
            self._breaker.record_success()
            raise self._not_an_entry(key, self._type_of(key)) from exc
        if self._breaker.record_failure():
            log.warning(
                "Redis is unavailable to the cache (%s: %s; operation timeout %g s); calling factories "
                "directly and probing Redis every %g s",
                type(exc).__name__,
                exc,
                self.operation_timeout.total_seconds(),
                self._breaker.open_for.total_seconds(),
            )
        else:
            log.debug("Redis still unavailable to the cache: %s", exc)

    def _type_of(self, key: str) -> str:
        try:
            kind = self._client.type(key)
        except redis.RedisError:
            return "value of another type"
        return kind.decode() if isinstance(kind, bytes) else str(kind)

    def _after_fork(self) -> None:
        """A forked child inherits no threads: forget flights and the parent's breaker state."""
        self._flights = {}
        self._flights_lock = threading.Lock()
        self._breaker.reset()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"DistributedCache(instance={self._keys.instance!r}, breaker={self._breaker.state!r})"


def _settle(flight: _Flight, payload: bytes | None = None, *, exception: BaseException | None = None) -> None:
    """Set a flight's outcome unless ``close()`` already released its waiters."""
    try:
        if exception is not None:
            flight.set_exception(exception)
        else:
            flight.set_result(payload)
    except InvalidStateError:
        pass


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _compute(factory: Callable[[], list[T] | None]) -> tuple[list[T] | None, bytes | None]:
    """Call the factory and encode its result (``None`` stays ``None``)."""
    value = factory()
    return (None, None) if value is None else (value, dumps_array(value))
