"""Leases, and the watchdog: one thread per lock manager that keeps leases alive.

A :class:`Lease` is one holding of a lock. Every tick the watchdog renews all
leases that are due in a single round trip (one call of ``lock_renew.lua`` with
every lease in it), on the manager's own small Redis client so application
traffic cannot starve renewals. A lease is declared lost when renewal finds
another owner, or when the time since its last successful renewal *request was
sent* reaches the ttl minus a drift margin. The wait for a reply is polled, so a
frozen server or a partitioned network cannot keep the thread from declaring
leases lost on time.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import NoScriptError

from tickerq.durations import to_milliseconds
from tickerq.errors import LockError, LockLostError
from tickerq.redis.outage import OutageTracker
from tickerq.redis.scripts import LuaScript

if TYPE_CHECKING:
    from tickerq.redis.lock import LockKeys

__all__ = ["RENEW", "THREAD_NAME", "Lease", "Watchdog", "drift_margin", "renew_arguments"]

log = logging.getLogger(__name__)

#: The watchdog thread's name (one per lock manager).
THREAD_NAME = "tickerq-lock-watchdog"

#: Renews a batch of leases; see ``lua/lock_renew.lua`` for the reply codes.
RENEW = LuaScript("lock_renew")
LOST = 0
REESTABLISHED = 2

_REPLY_POLL = 0.05  # how often a pending renewal checks deadlines and the stop flag
_BACKOFF_FIRST = 0.05  # first retry delay after a failed renewal, doubled per failure


def drift_margin(ttl: float) -> float:
    """Seconds before its ttl runs out that a lease counts as lost: 1 % of the ttl plus 2 ms."""
    return ttl * 0.01 + 0.002


class Lease:
    """One holding of a lock: its fence and whether it may still be held.

    The token belongs to the lease, not to a thread: any thread may release it
    and the watchdog renews it. ``lost`` is set (and ``on_lost(lease)`` called
    once, on a thread of its own) the moment we know we may not hold it.

    Attributes:
        name: The lock's name.
        token: The unique value stored in the lock key (``{owner}:{random}``).
        fence: Strictly increasing per lock name; pass it to the protected resource.
        lost: Set when the lease is, or may be, lost.
        lost_reason: Why ``lost`` was set, or None.
    """

    def __init__(
        self, *, name: str, token: str, fence: int, ttl: timedelta, keys: LockKeys, auto_renew: bool,
        on_lost: Callable[[Lease], None] | None, sent_at: float, pid: int,
    ) -> None:  # fmt: skip
        self.name = name
        self.token = token
        self.fence = fence
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self.auto_renew = auto_renew
        self.released = False
        self.keys = keys
        self.lock_key = keys.lock
        self.fence_key = keys.fence
        self.pid = pid
        self.owner_thread = threading.get_ident()
        self._on_lost = on_lost
        self._mutex = threading.Lock()
        self._count = 1
        self._ttl = ttl
        self._last_sent = sent_at
        self.valid_until = sent_at + self.ttl_seconds - drift_margin(self.ttl_seconds)

    @property
    def ttl(self) -> timedelta:
        """The ttl each renewal sets."""
        return self._ttl

    @property
    def ttl_seconds(self) -> float:
        return self._ttl.total_seconds()

    @property
    def ttl_ms(self) -> int:
        return to_milliseconds(self._ttl)

    @property
    def held(self) -> bool:
        """True while the lease is neither released, lost nor past its local deadline."""
        return not (self.released or self.lost.is_set() or time.monotonic() >= self.valid_until)

    def ensure_held(self) -> None:
        """Raise unless the lease is still held.

        Raises:
            LockLostError: The lease was released, or is (or may be) lost.
        """
        self.check_deadline()
        if self.released:
            raise LockLostError(f"lock {self.name!r} (fence {self.fence}) was released")
        if self.lost.is_set():
            raise LockLostError(f"lock {self.name!r} (fence {self.fence}) is lost: {self.lost_reason}")

    def check_deadline(self) -> None:
        """Declare the lease lost if its local deadline passed unnoticed."""
        if not self.lost.is_set() and time.monotonic() >= self.valid_until:
            self.declare_lost("no successful renewal within its ttl")

    def declare_lost(self, reason: str) -> bool:
        """Set ``lost`` and start ``on_lost`` once; False if already lost or released."""
        with self._mutex:
            if self.lost.is_set() or self.released:
                return False
            self.lost_reason = reason
            self.lost.set()
        log.warning("lock %r (fence %d) lost: %s", self.name, self.fence, reason)
        if self._on_lost is not None:
            threading.Thread(target=self._notify, name="tickerq-lock-lost", daemon=True).start()
        return True

    def _notify(self) -> None:
        assert self._on_lost is not None
        try:
            self._on_lost(self)
        except Exception:
            log.exception("on_lost callback for lock %r failed", self.name)

    def confirm(self, sent_at: float, ttl: float) -> None:
        """A renewal sent at ``sent_at`` with ``ttl`` succeeded: move the deadline."""
        with self._mutex:
            if sent_at > self._last_sent:
                self._last_sent = sent_at
                self.valid_until = sent_at + ttl - drift_margin(ttl)

    def renew_at(self, early: float = 0.0) -> float:
        """When the next renewal is due (ttl/3 after the last one), ``early`` intervals sooner."""
        return self._last_sent + self.ttl_seconds / 3 * (1.0 - early)

    def next_check(self) -> float:
        return min(self.valid_until, self.renew_at()) if self.auto_renew else self.valid_until

    def join(self) -> None:
        """Count one more reentrant acquisition by the owner."""
        self.ensure_held()
        with self._mutex:
            self._count += 1

    def drop(self) -> bool:
        """Count one release; True (and ``released`` set) when it was the last."""
        with self._mutex:
            self._count -= 1
            if self._count > 0:
                return False
            self.released = True
            return True

    def set_ttl(self, ttl: timedelta) -> None:
        self._ttl = ttl

    def __repr__(self) -> str:
        state = "released" if self.released else "lost" if self.lost.is_set() else "held"
        return f"<Lease {self.name!r} fence={self.fence} {state}>"


class _Abandoned(redis.ConnectionError):
    """A renewal reply stopped mattering (stop requested, or every lease in it lost)."""


def renew_arguments(leases: Sequence[Lease]) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV for ``lock_renew.lua`` covering ``leases``."""
    keys: list[str] = []
    args: list[str | int] = []
    for lease in leases:
        keys += (lease.lock_key, lease.fence_key)
        args += (lease.token, lease.ttl_ms, lease.fence)
    return keys, args


class Watchdog:
    """Renews registered leases and declares them lost; started lazily.

    Huey's shape: ``stop()`` sets an event the loop waits on, so it returns at
    once whatever the renewal interval. Fork-safe: a forked child never believes
    the parent's thread runs for it; it starts its own when it registers a lease.

    Args:
        client: A redis-py client on its own small pool, without retries (not
            closed here). Give it ``socket_connect_timeout`` and
            ``socket_timeout``: connecting is the one step whose wait cannot be
            polled.
        on_resurrected: Called on the watchdog thread with a lease that a renewal
            re-established just after it was released; it deletes the key again.
    """

    def __init__(self, client: redis.Redis, on_resurrected: Callable[[Lease], object]) -> None:
        self._client = client
        self._on_resurrected = on_resurrected
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._next_wake = math.inf
        # Idle, the thread still wakes every ttl/3 of the last lease, so a new lease with
        # the same ttl needs no wake-up (a hot acquire/release loop never wakes it).
        self._idle_wait = 1.0
        self._failures = 0
        self._retry_at = 0.0
        self._outage = OutageTracker("lock watchdog", log)

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            # The parent's thread did not survive fork and its leases are not ours;
            # the inherited mutex may even be held by a thread that no longer exists.
            self._reset()

    @property
    def closed(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._closed

    @property
    def is_running(self) -> bool:
        """True while this process's watchdog thread is alive."""
        thread = self._thread
        return thread is not None and self._pid == os.getpid() and thread.is_alive()

    @property
    def thread(self) -> threading.Thread | None:
        """The watchdog thread, once started in this process."""
        self._check_fork()
        return self._thread

    def leases(self) -> list[Lease]:
        """The leases watched now."""
        self._check_fork()
        with self._mutex:
            return list(self._leases.values())

    def register(self, lease: Lease) -> None:
        """Watch ``lease`` (renewing it when it auto-renews); start the thread if needed.

        Raises:
            LockError: The watchdog was stopped.
        """
        self._check_fork()
        with self._mutex:
            if self._closed:
                raise LockError("the lock manager is closed: no new lease can be watched")
            self._leases[lease.token] = lease
            self._idle_wait = min(max(lease.ttl_seconds / 3, 0.05), 60.0)
            thread = self._thread
            if thread is None:
                thread = self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                thread.start()
            elif lease.next_check() < self._next_wake:
                self._wake.set()

    def unregister(self, lease: Lease) -> None:
        """Stop watching ``lease`` (it stays asleep until its next tick; nothing to wake)."""
        self._check_fork()
        with self._mutex:
            self._leases.pop(lease.token, None)

    def poke(self) -> None:
        """Recompute the schedule now (a lease's ttl or deadline changed)."""
        self._wake.set()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds; safe to call twice."""
        self._check_fork()
        with self._mutex:
            self._closed = True
            thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with self._mutex:
                self._next_wake = math.inf  # registrations during a tick wake the next wait
            try:
                delay = self._tick()
            except Exception:  # a bug must not end renewals for every other lease
                log.exception("lock watchdog tick failed")
                delay = 1.0
            with self._mutex:
                if delay is None:
                    delay = self._idle_wait
                self._next_wake = time.monotonic() + delay
            self._wake.wait(delay)

    def _tick(self) -> float | None:
        with self._mutex:
            leases = list(self._leases.values())
        live = self._expire(leases)
        now = time.monotonic()
        if now >= self._retry_at and any(lease.auto_renew and lease.renew_at() <= now for lease in live):
            # Leases due within half their interval ride along, so leases settle into shared ticks.
            self._renew([lease for lease in live if lease.auto_renew and lease.renew_at(0.5) <= now])
            live = self._expire(live)
        if not live:
            return None
        now = time.monotonic()
        due = min(lease.valid_until for lease in live)
        renewing = [lease.renew_at() for lease in live if lease.auto_renew]
        if renewing:
            due = min(due, max(min(renewing), self._retry_at))
        return max(0.0, due - now)

    def _expire(self, leases: list[Lease]) -> list[Lease]:
        """Declare lost the leases past their deadline; return those still held."""
        now = time.monotonic()
        live = []
        for lease in leases:
            if not lease.lost.is_set() and now >= lease.valid_until:
                lease.declare_lost("no successful renewal within its ttl (Redis unreachable or too slow)")
            if lease.lost.is_set() or lease.released:
                with self._mutex:
                    self._leases.pop(lease.token, None)
            else:
                live.append(lease)
        return live

    def _renew(self, batch: list[Lease]) -> None:
        keys, args = renew_arguments(batch)
        ttls = [lease.ttl_seconds for lease in batch]
        sent_at = time.monotonic()
        try:
            codes = self._call(keys, args, batch)
        except _Abandoned:
            return
        except redis.RedisError as exc:
            self._failed(exc, batch)
            return
        self._outage.succeeded()
        self._failures, self._retry_at = 0, 0.0
        for lease, ttl, code in zip(batch, ttls, codes, strict=True):
            if code == LOST:
                lease.declare_lost("renewal found the lock gone or held by another owner")
                continue
            lease.confirm(sent_at, ttl)
            if code == REESTABLISHED:
                log.warning(
                    "lock %r re-established after Redis lost its data (fence %d)", lease.name, lease.fence
                )
                if lease.released:  # released while the renewal was in flight: undo the resurrection
                    self._on_resurrected(lease)

    def _failed(self, exc: redis.RedisError, batch: list[Lease]) -> None:
        self._outage.failed(exc)  # logged once per outage
        now = time.monotonic()
        cap = min(lease.ttl_seconds for lease in batch) / 6
        self._retry_at = now + min(_BACKOFF_FIRST * 2**self._failures, max(cap, 0.01))
        self._failures = min(self._failures + 1, 16)

    def _call(self, keys: list[str], args: list[str | int], batch: list[Lease]) -> Any:
        pool = getattr(self._client, "connection_pool", None)
        if pool is None:  # not a plain client: fall back to a blocking call
            return RENEW(self._client, keys, args)
        conn = pool.get_connection()
        try:
            try:
                return self._round_trip(conn, ("EVALSHA", RENEW.sha, len(keys), *keys, *args), batch)
            except NoScriptError:
                return self._round_trip(conn, ("EVAL", RENEW.source, len(keys), *keys, *args), batch)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _round_trip(self, conn: Any, command: tuple[str | int, ...], batch: list[Lease]) -> Any:
        conn.send_command(*command)
        while not conn.can_read(timeout=_REPLY_POLL):
            self._expire(self.leases())  # every lease's deadline holds while we wait, not just the batch's
            if self._stop.is_set() or all(lease.lost.is_set() or lease.released for lease in batch):
                raise _Abandoned("renewal reply no longer needed")
        return conn.read_response()
