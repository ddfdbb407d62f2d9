"""The watchdog: keeps a lock manager's leases alive and declares them lost on time.

Two services per lock manager (the lease core's, shared with elections), started
when the first lease is registered:

- the *watchdog* thread is a :class:`~tickerq._runtime.deadline_watch.DeadlineWatch`:
  it owns the deadlines and never touches the network. It declares leases lost
  when their local deadline passes, decides which leases are due for renewal
  and hands them over as one batch. Its every wait ends at the nearest
  deadline, so no frozen server, half-open connection, slow connect or TLS
  handshake can make it late.
- the *renewer* thread (:class:`LockRenewer`) does the I/O: one call of
  ``lock_renew.lua`` with every lease of the batch in it (one round trip per
  tick), on the manager's own small Redis client, so application traffic cannot
  starve renewals. It may block (in connect, say) for as long as the client's
  timeouts allow; while it does, the watchdog thread goes on declaring leases
  lost on time. It keeps one connection of its own (made by the client's pool),
  so that stopping can close it and end a connect or read blocked on a frozen
  server at once.

A lease is declared lost when renewal finds another owner, or when the time
since its last successful renewal *request was sent* reaches the ttl minus a
drift margin (:func:`~tickerq._runtime.lease.drift_margin`). ``on_lost``
callbacks run on the lock manager's dispatcher, never on these threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.deadline_watch import DeadlineWatch
from tickerq._runtime.lease import LocalLease
from tickerq._runtime.outage import OutageTracker
from tickerq._runtime.service import Service
from tickerq.locks.lease import LOST, REESTABLISHED, RENEW, Lease, Renewal, renew_arguments

__all__ = ["RENEWER_THREAD_NAME", "THREAD_NAME", "LockRenewer", "Watchdog"]

log = logging.getLogger(__name__)

#: The watchdog thread's name (one per lock manager): deadlines and scheduling, no I/O.
THREAD_NAME = "tickerq-lock-watchdog"
#: The renewer thread's name (one per lock manager): the renewal round trips.
RENEWER_THREAD_NAME = "tickerq-lock-renewer"

_REPLY_POLL = 0.05  # how often a pending reply checks whether it still matters


class _Abandoned(redis.ConnectionError):
    """A renewal reply stopped mattering (stop requested, or every lease in it lost or released)."""


class Watchdog(DeadlineWatch):
    """Renews registered leases and declares them lost; started lazily (a service pair).

    The service contract (``start`` / ``request_stop`` / ``wait_stopped``) covers
    both threads: a stop is never lost whatever the renewal interval, and it
    closes the renewer's connection, so a renewal stuck on a frozen server cannot
    hold it up. Fork-safe: a forked child never believes the parent's threads run
    for it; it starts its own when it registers a lease.

    Args:
        client: A redis-py client on its own small pool, without retries (not
            closed here); only the renewer thread uses it, through one connection
            it makes with the pool and keeps.
        on_resurrected: Called on the renewer thread with a lease that a renewal
            re-established just after it was released; it deletes the key again.
        clock: Where deadlines are read and the threads sleep.
    """

    def __init__(
        self, client: redis.Redis, on_resurrected: Callable[[Lease], object], *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.lock_renewer = LockRenewer(client, on_resurrected, self, clock=clock)
        super().__init__(
            THREAD_NAME,
            clock=clock,
            renewer=self.lock_renewer,
            expired_reason="no successful renewal within its ttl (Redis unreachable or too slow)",
        )

    @property
    def is_running(self) -> bool:
        """True while this process's watchdog thread is alive."""
        return self.running

    @property
    def renewer_thread(self) -> threading.Thread | None:
        """The renewer (I/O) thread, once started in this process."""
        return self.lock_renewer.thread

    def poke(self) -> None:
        """Recompute the schedule now (a lease's ttl or deadline changed)."""
        self.wake()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop both threads and wait up to ``timeout`` seconds in all; safe to call twice.

        No renewal is sent once this returns. A renewer blocked on a frozen
        server (in a connect, or waiting for a reply) is woken by closing its
        connection.
        """
        return super().stop(timeout)

    def _renew(self, job: list[Renewal]) -> None:
        self.lock_renewer.renew(job)


class LockRenewer(Service):
    """The renewer thread of a :class:`Watchdog`: one ``lock_renew.lua`` round trip per batch.

    Args:
        client: See :class:`Watchdog`.
        on_resurrected: See :class:`Watchdog`.
        watch: The watchdog whose batches this renews.
        clock: Where renewals are timed (when sent).
    """

    def __init__(
        self, client: redis.Redis, on_resurrected: Callable[[Lease], object], watch: DeadlineWatch, *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:  # fmt: skip
        super().__init__(RENEWER_THREAD_NAME, clock=clock)
        self._client = client
        self._on_resurrected = on_resurrected
        self._watch = watch
        self._job_lock = threading.Lock()
        self._job: list[LocalLease] | None = None
        # The renewer's connection: reachable from wait_stopped(), which closes it to end a blocked call.
        self._conn: Any = None
        # Held by the renewer from its last look at the stop flag until its request is sent.
        self._send_lock = threading.Lock()
        self._outage = OutageTracker("lock watchdog", log)

    @property
    def thread(self) -> threading.Thread | None:
        """The renewer thread, once started in this process."""
        return None if self.forked else self._thread

    def start(self) -> None:
        if not self.running:
            self._conn, self._send_lock, self._job = None, threading.Lock(), None  # nothing of a parent's
        super().start()

    def submit(self, batch: list[LocalLease]) -> None:
        """Renew ``batch`` on the renewer thread (see ``BatchRenewer``)."""
        with self._job_lock:
            self._job = batch
        self.wake()

    def run_once(self) -> None:
        with self._job_lock:
            batch, self._job = self._job, None
        if batch is None:
            return None
        job = [Renewal.of(cast(Lease, lease)) for lease in batch]
        try:
            if not self.stopping:
                self.renew(job)
        except Exception as exc:  # a bug must not end renewals: back off and go on
            if not self.stopping:  # else stopping closed the connection under it
                self._failed(exc, batch, unexpected=True)
        finally:
            self._watch.renewal_done(batch)
        return None

    def finalize(self) -> None:
        with self._job_lock:
            batch, self._job = self._job, None
        if batch is not None:
            self._watch.renewal_done(batch)

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the thread; no renewal is sent once this returns.

        A request being sent goes out (or fails) first; a connect or read
        blocked on a frozen server ends when the connection is closed.
        """
        renewer = self._thread
        if renewer is None or self.forked:
            self._disconnect()
            return True
        current = threading.current_thread()
        self._wait_for_send(deadline)  # the renewer sends nothing after this
        while renewer is not current and renewer.is_alive():
            # Again until it ends: a connect may have begun after the previous close.
            self._disconnect()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            renewer.join(min(remaining, _REPLY_POLL / 2))
        self._disconnect()
        return super().wait_stopped(deadline)

    def interrupt(self) -> None:
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

    def renew(self, job: list[Renewal]) -> None:
        """One round trip renewing ``job``; the leases are confirmed or declared lost."""
        keys, args = renew_arguments(job)
        sent_at = self.clock.monotonic()
        try:
            codes = self._call(keys, args, job)
        except _Abandoned:
            return
        except redis.RedisError as exc:
            if not self.stopping:  # else stop() closed the connection under it
                self._failed(exc, [renewal.lease for renewal in job])
            return
        self._outage.succeeded()
        self._watch.renewal_succeeded()
        resurrected = []
        for renewal, code in zip(job, codes, strict=True):
            lease = renewal.lease
            if code == LOST:
                lease.declare_lost("renewal found the lock gone or held by another owner")
                continue
            lease.confirm(sent_at, renewal.hold)
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

    def _failed(self, exc: Exception, leases: list[LocalLease], *, unexpected: bool = False) -> None:
        self._outage.failed(exc, unexpected=unexpected)  # logged once per outage
        self._watch.renewal_failed(leases)

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

        Made once and kept in ``_conn`` before it connects, so that stopping can
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
        if self.stopping or all(r.lease.is_lost or r.lease.released for r in job):
            raise _Abandoned("renewal no longer needed")

    def _round_trip(self, conn: Any, command: tuple[str | int, ...], job: list[Renewal]) -> Any:
        with self._send_lock:  # stopping either sees this request sent, or it is never sent
            if self.stopping:
                raise _Abandoned("stopped before sending")
            conn.send_command(*command)
        while True:
            if self.stopping:  # stop() closed it: can_read() would connect again
                raise _Abandoned("stopped while waiting for the reply")
            if conn.can_read(timeout=_REPLY_POLL):
                return conn.read_response()
            self._check_needed(job)
