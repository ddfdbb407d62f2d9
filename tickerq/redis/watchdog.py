"""The watchdog: keeps a lock manager's leases alive and declares them lost on time.

Two threads per lock manager, started when the first lease is registered:

- the *watchdog* thread owns the deadlines. It never touches the network: it
  declares leases lost when their local deadline passes, decides which leases
  are due for renewal and hands them over as one batch. Its every wait ends at
  the nearest deadline, so no frozen server, half-open connection, slow connect
  or TLS handshake can make it late.
- the *renewer* thread does the I/O: one call of ``lock_renew.lua`` with every
  lease of the batch in it (one round trip per tick), on the manager's own small
  Redis client, so application traffic cannot starve renewals. It may block (in
  connect, say) for as long as the client's timeouts allow; while it does, the
  watchdog thread goes on declaring leases lost on time. It keeps one connection
  of its own (made by the client's pool), so that ``stop()`` can close it and end
  a connect or read blocked on a frozen server at once.

A lease is declared lost when renewal finds another owner, or when the time
since its last successful renewal *request was sent* reaches the ttl minus a
drift margin (:func:`~tickerq.redis.lease.drift_margin`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import NoScriptError

from tickerq.errors import LockError
from tickerq.redis.lease import LOST, REESTABLISHED, RENEW, Lease, Renewal, renew_arguments
from tickerq.redis.outage import OutageTracker

__all__ = ["RENEWER_THREAD_NAME", "THREAD_NAME", "Watchdog"]

log = logging.getLogger(__name__)

#: The watchdog thread's name (one per lock manager): deadlines and scheduling, no I/O.
THREAD_NAME = "tickerq-lock-watchdog"
#: The renewer thread's name (one per lock manager): the renewal round trips.
RENEWER_THREAD_NAME = "tickerq-lock-renewer"

_REPLY_POLL = 0.05  # how often a pending reply checks whether it still matters; busy-lease retry
_BACKOFF_FIRST = 0.05  # first retry delay after a failed renewal, doubled per failure


class _Abandoned(redis.ConnectionError):
    """A renewal reply stopped mattering (stop requested, or every lease in it lost or released)."""


class Watchdog:
    """Renews registered leases and declares them lost; started lazily.

    Huey's shape: ``stop()`` sets an event both threads wait on, so it returns
    at once whatever the renewal interval; it also closes the renewer's
    connection, so a renewal stuck on a frozen server cannot hold it up. Fork-safe:
    a forked child never believes the parent's threads run for it; it starts its
    own when it registers a lease.

    Args:
        client: A redis-py client on its own small pool, without retries (not
            closed here); only the renewer thread uses it, through one connection
            it makes with the pool and keeps.
        on_resurrected: Called on the renewer thread with a lease that a renewal
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
        self._job_ready = threading.Event()
        self._job: list[Renewal] | None = None
        self._in_flight = False
        self._thread: threading.Thread | None = None
        self._renewer: threading.Thread | None = None
        # The renewer's connection: reachable from stop(), which closes it to end a blocked call.
        self._conn: Any = None
        # Held by the renewer from its last look at the stop flag until its request is sent.
        self._send_lock = threading.Lock()
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
            # The parent's threads did not survive fork and its leases are not ours;
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
        """The watchdog (deadline) thread, once started in this process."""
        self._check_fork()
        return self._thread

    @property
    def renewer_thread(self) -> threading.Thread | None:
        """The renewer (I/O) thread, once started in this process."""
        self._check_fork()
        return self._renewer

    def leases(self) -> list[Lease]:
        """The leases watched now."""
        self._check_fork()
        with self._mutex:
            return list(self._leases.values())

    def register(self, lease: Lease) -> None:
        """Watch ``lease`` (renewing it when it auto-renews); start the threads if needed.

        Raises:
            LockError: The watchdog was stopped.
        """
        self._check_fork()
        with self._mutex:
            if self._closed:
                raise LockError("the lock manager is closed: no new lease can be watched")
            self._leases[lease.token] = lease
            self._idle_wait = min(max(lease.ttl_seconds / 3, 0.05), 60.0)
            if self._thread is None:
                self._renewer = threading.Thread(
                    target=self._run_renewer, name=RENEWER_THREAD_NAME, daemon=True
                )
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._renewer.start()
                self._thread.start()
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
        """Stop both threads and wait up to ``timeout`` seconds in all; safe to call twice.

        No renewal is sent once this returns. A renewer blocked on a frozen
        server (in a connect, or waiting for a reply) is woken by closing its
        connection.
        """
        self._check_fork()
        deadline = time.monotonic() + timeout
        with self._mutex:
            self._closed = True
            self._stop.set()
            watchdog, renewer = self._thread, self._renewer
        self._wake.set()
        self._job_ready.set()
        current = threading.current_thread()
        if watchdog is not None and watchdog is not current:
            watchdog.join(max(0.0, deadline - time.monotonic()))  # it never blocks on I/O
        self._wait_for_send(deadline)  # the renewer sends nothing after this
        while renewer is not None and renewer is not current and renewer.is_alive():
            # Again until it ends: a connect may have begun after the previous close.
            self._disconnect()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            renewer.join(min(remaining, _REPLY_POLL / 2))
        self._disconnect()

    def _wait_for_send(self, deadline: float) -> None:
        """Wait until a request being sent has gone out (or failed: a send blocked on a frozen
        server ends when the connection is closed), at the latest until ``deadline``."""
        while not self._send_lock.acquire(
            timeout=min(_REPLY_POLL / 2, max(0.0, deadline - time.monotonic()))
        ):
            self._disconnect()
            if time.monotonic() >= deadline:
                return
        self._send_lock.release()

    def _disconnect(self) -> None:
        """Close the renewer's connection (from any thread): a blocked connect or read ends now."""
        conn = self._conn
        if conn is not None:
            try:
                conn.disconnect()
            except Exception as exc:  # closing is best effort; the socket is gone either way
                log.debug("closing the lock renewer's connection failed: %s", exc)

    # -- the watchdog thread: deadlines and scheduling, never I/O -------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if self._stop.is_set():  # stop() set it and woke us just before the clear()
                break
            with self._mutex:
                self._next_wake = math.inf  # registrations during a tick wake the next wait
            try:
                delay = self._tick()
            except Exception:  # a bug must not end renewals for every other lease
                log.exception("lock watchdog tick failed")
                delay = self._delay_after_error()
            with self._mutex:
                if delay is None:
                    delay = self._idle_wait
                self._next_wake = time.monotonic() + delay
            self._wake.wait(delay)

    def _delay_after_error(self) -> float:
        """Retry a failed tick within a second, and no later than the nearest deadline."""
        deadlines = [lease.valid_until for lease in self.leases()]
        return max(0.01, min(1.0, min(deadlines, default=math.inf) - time.monotonic()))

    def _tick(self) -> float | None:
        with self._mutex:
            leases = list(self._leases.values())
        live = self._expire(leases)
        if not live:
            return None
        now = time.monotonic()
        if not self._in_flight and now >= self._retry_at and any(self._due(lease, now) for lease in live):
            # Leases due within half their interval ride along, so leases settle into shared ticks.
            self._submit([lease for lease in live if self._due(lease, now, early=0.5)])
        due = min(lease.valid_until for lease in live)
        if not self._in_flight:  # else the renewer wakes us when the reply is in
            for lease in live:
                if lease.auto_renew:
                    at = lease.renew_at()
                    if lease.renewing.locked():  # its owner is extending it: look again shortly
                        at = max(at, now + _REPLY_POLL)
                    due = min(due, max(at, self._retry_at))
        return max(0.0, due - time.monotonic())

    @staticmethod
    def _due(lease: Lease, now: float, early: float = 0.0) -> bool:
        return lease.auto_renew and lease.renew_at(early) <= now

    def _expire(self, leases: list[Lease]) -> list[Lease]:
        """Declare lost the leases past their deadline; return those still held."""
        now = time.monotonic()
        live = []
        for lease in leases:
            if not lease.is_lost and now >= lease.valid_until:
                lease.declare_lost("no successful renewal within its ttl (Redis unreachable or too slow)")
            if lease.is_lost or lease.released:
                with self._mutex:
                    self._leases.pop(lease.token, None)
            else:
                live.append(lease)
        return live

    def _submit(self, batch: list[Lease]) -> None:
        """Hand ``batch`` to the renewer, leaving out leases their owner is extending right now."""
        job = [Renewal.of(lease) for lease in batch if lease.renewing.acquire(blocking=False)]
        if not job:
            return
        with self._mutex:
            if self._stop.is_set():
                _finish(job)
            else:
                self._job, self._in_flight = job, True
                self._job_ready.set()

    # -- the renewer thread: one round trip per batch --------------------------------

    def _run_renewer(self) -> None:
        while True:
            self._job_ready.wait()
            with self._mutex:
                self._job_ready.clear()
                job, self._job = self._job, None
                if self._stop.is_set():
                    if job:
                        _finish(job)
                    return
            if job is None:
                continue
            try:
                self._renew(job)
            except Exception as exc:  # a bug must not end renewals: back off and go on
                if not self._stop.is_set():  # else stop() closed the connection under it
                    self._failed(exc, job, unexpected=True)
            finally:
                _finish(job)
                self._in_flight = False
                self._wake.set()

    def _renew(self, job: list[Renewal]) -> None:
        keys, args = renew_arguments(job)
        sent_at = time.monotonic()
        try:
            codes = self._call(keys, args, job)
        except _Abandoned:
            return
        except redis.RedisError as exc:
            if not self._stop.is_set():  # else stop() closed the connection under it
                self._failed(exc, job)
            return
        self._outage.succeeded()
        self._failures, self._retry_at = 0, 0.0
        resurrected = []
        for renewal, code in zip(job, codes, strict=True):
            lease = renewal.lease
            if code == LOST:
                lease.declare_lost("renewal found the lock gone or held by another owner")
                continue
            lease.confirm(sent_at, renewal.ttl)
            if code == REESTABLISHED:
                log.warning(
                    "lock %r re-established after Redis lost its data (fence %d)", lease.name, lease.fence
                )
                if lease.released:  # released while the renewal was in flight: undo the resurrection
                    resurrected.append(lease)
        for lease in resurrected:
            try:
                self._on_resurrected(lease)
            except Exception as exc:  # the key expires by itself within its ttl
                log.warning(
                    "could not delete the re-established key of released lock %r: %s", lease.name, exc
                )

    def _failed(self, exc: Exception, job: list[Renewal], *, unexpected: bool = False) -> None:
        self._outage.failed(exc, unexpected=unexpected)  # logged once per outage
        cap = min(renewal.ttl for renewal in job) / 6
        self._retry_at = time.monotonic() + min(_BACKOFF_FIRST * 2**self._failures, max(cap, 0.01))
        self._failures = min(self._failures + 1, 16)

    def _call(self, keys: list[str], args: list[str | int], job: list[Renewal]) -> Any:
        pool = getattr(self._client, "connection_pool", None)
        if pool is None:  # not a plain client: fall back to a blocking call
            with self._send_lock:
                self._check_needed(job)
                return RENEW(self._client, keys, args)
        conn = self._connection(pool, job)
        try:
            try:
                return self._round_trip(conn, ("EVALSHA", RENEW.sha, len(keys), *keys, *args), job)
            except NoScriptError:
                return self._round_trip(conn, ("EVAL", RENEW.source, len(keys), *keys, *args), job)
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: start afresh next time
            raise

    def _connection(self, pool: Any, job: list[Renewal]) -> Any:
        """The renewer's connection, connected and ready to send (what a pool's checkout does).

        Made once and kept in ``_conn`` before it connects, so that :meth:`stop` can
        close it while it blocks in the connect handshake on a frozen server.
        """
        self._check_needed(job)
        if self._conn is None:
            self._conn = pool.make_connection()
        conn = self._conn
        try:
            conn.connect()  # nothing to do when connected
            try:
                stale = conn.can_read(timeout=0)  # a reply left over, or closed by the server
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                stale = True
            if stale:
                conn.disconnect()
                conn.connect()
        except BaseException:
            conn.disconnect()
            raise
        return conn

    def _check_needed(self, job: list[Renewal]) -> None:
        """Raise :class:`_Abandoned` once stop() was called or no lease in ``job`` needs the reply."""
        if self._stop.is_set() or all(r.lease.is_lost or r.lease.released for r in job):
            raise _Abandoned("renewal no longer needed")

    def _round_trip(self, conn: Any, command: tuple[str | int, ...], job: list[Renewal]) -> Any:
        with self._send_lock:  # stop() either sees this request sent, or it is never sent
            if self._stop.is_set():
                raise _Abandoned("stopped before sending")
            conn.send_command(*command)
        while True:
            if self._stop.is_set():  # stop() closed it: can_read() would connect again
                raise _Abandoned("stopped while waiting for the reply")
            if conn.can_read(timeout=_REPLY_POLL):
                return conn.read_response()
            self._check_needed(job)


def _finish(job: list[Renewal]) -> None:
    for renewal in job:
        renewal.lease.renewing.release()
