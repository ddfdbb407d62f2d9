"""The deadline watch: declares leases lost on time and schedules their batched renewal.

One :class:`DeadlineWatch` (a :class:`~tickerq._runtime.service.Service`)
watches :class:`~tickerq._runtime.lease.LocalLease`\\ s. Its thread never does
I/O: it declares a lease lost when its local deadline passes, decides which
leases are due for renewal and hands them to a :class:`BatchRenewer` as one
batch (leases due within half their interval ride along, so leases settle into
shared ticks). Its every wait ends at the nearest deadline, so no frozen
server, half-open connection or slow connect can make it late.

A lock manager's watchdog is a watch with a renewer (its own service, doing
the round trips); an election's deadline watch is one without (the campaign
renews its lease on the schedule :meth:`LocalLease.renew_at` gives).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Protocol

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.lease import LocalLease
from tickerq._runtime.service import Service

__all__ = ["BUSY_RETRY", "BatchRenewer", "DeadlineWatch"]

log = logging.getLogger(__name__)

#: How soon a lease whose owner is renewing it itself is looked at again.
BUSY_RETRY = 0.05
_BACKOFF_FIRST = 0.05  # first retry delay after a failed renewal, doubled per failure


class BatchRenewer(Protocol):
    """Does a watch's renewal round trips, on a service of its own.

    :meth:`submit` is called on the watch's thread with every lease's
    ``renewing`` held and must return at once; the renewer then calls the
    watch's :meth:`DeadlineWatch.renewal_done` (and before it
    :meth:`~DeadlineWatch.renewal_failed` or
    :meth:`~DeadlineWatch.renewal_succeeded`).
    """

    def submit(self, batch: list[LocalLease]) -> None:
        """Renew ``batch`` (one round trip) soon, on the renewer's thread."""
        ...

    def start(self) -> None:
        """Start the renewer's thread."""
        ...

    def request_stop(self) -> None:
        """Send no new request; returns at once."""
        ...

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the renewer's thread until ``deadline`` (``time.monotonic()``)."""
        ...


class DeadlineWatch(Service):
    """Watches leases: lost at their local deadline, renewed in batches when a renewer is given.

    Started by the first :meth:`register` (or by :meth:`start`); stopped with
    the service contract, its renewer with it. Fork-aware: a forked child never
    believes the parent's threads run for it, and forgets the parent's leases.

    Args:
        name: The watch thread's name.
        clock: Where deadlines are read and the watch sleeps.
        renewer: Renews the leases that auto-renew; None when their owners renew them.
        expired_reason: Why a lease past its deadline is lost (the lost reason).
    """

    def __init__(
        self,
        name: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        renewer: BatchRenewer | None = None,
        expired_reason: str = "no successful renewal within its ttl",
    ) -> None:
        super().__init__(name, clock=clock)
        self.renewer = renewer
        self.expired_reason = expired_reason
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._thread = None  # in a forked child, the parent's thread is not ours
        self._mutex = threading.Lock()
        self._leases: dict[str, LocalLease] = {}
        self._closed = False
        self._in_flight = False
        self._next_wake = math.inf
        # Idle, the thread still wakes every renewal interval of the last lease, so a new lease
        # with the same interval needs no wake-up (a hot acquire/release loop never wakes it).
        self._idle_wait = 1.0
        self._failures = 0
        self._retry_at = 0.0

    def _check_fork(self) -> None:
        if self.forked:
            # The parent's threads did not survive fork and its leases are not ours;
            # the inherited mutex may even be held by a thread that no longer exists.
            self._reset()

    # -- the owner's verbs ---------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a stop was requested: no lease can be registered any more."""
        return self._closed

    @property
    def thread(self) -> threading.Thread | None:
        """The watch thread, once started in this process."""
        self._check_fork()
        return self._thread

    def leases(self) -> list[LocalLease]:
        """The leases watched now."""
        self._check_fork()
        with self._mutex:
            return list(self._leases.values())

    def register(self, lease: LocalLease) -> bool:
        """Watch ``lease`` (renewing it when it auto-renews); start the threads if needed.

        Returns:
            False when the watch is closed (nothing watched).
        """
        self._check_fork()
        with self._mutex:
            if self._closed:
                return False
            self._leases[lease.token] = lease
            self._idle_wait = min(max(lease.renew_every, 0.05), 60.0)
            if self._thread is None:
                self.start()
            elif lease.next_check() < self._next_wake:
                self.wake()
        return True

    def unregister(self, lease: LocalLease) -> None:
        """Stop watching ``lease`` (it stays asleep until its next tick; nothing to wake)."""
        self._check_fork()
        with self._mutex:
            self._leases.pop(lease.token, None)

    def start(self) -> None:
        """Start the renewer (if any), then the watch thread."""
        if self.renewer is not None:
            self.renewer.start()
        super().start()

    def request_stop(self) -> None:
        """Refuse new leases, stop watching and renewing; returns at once."""
        if self.forked:
            return
        with self._mutex:
            self._closed = True
        super().request_stop()
        if self.renewer is not None:
            self.renewer.request_stop()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the watch thread (it never blocks on I/O), then for the renewer."""
        ended = super().wait_stopped(deadline)
        if self.renewer is not None and not self.forked:
            ended = self.renewer.wait_stopped(deadline) and ended
        return ended

    # -- called by the renewer -------------------------------------------------

    def renewal_succeeded(self) -> None:
        """A renewal round trip got its reply: no back-off for the next one."""
        self._failures, self._retry_at = 0, 0.0

    def renewal_failed(self, batch: list[LocalLease]) -> None:
        """A renewal round trip failed: retry after a back-off, at most half a renewal interval."""
        cap = min(lease.renew_every for lease in batch) / 2
        self._retry_at = self.clock.monotonic() + min(_BACKOFF_FIRST * 2**self._failures, max(cap, 0.01))
        self._failures = min(self._failures + 1, 16)

    def renewal_done(self, batch: list[LocalLease]) -> None:
        """The renewer is done with ``batch``: its leases may be renewed again."""
        for lease in batch:
            lease.renewing.release()
        self._in_flight = False
        self.wake()

    # -- the watch thread: deadlines and scheduling, never I/O -------------------

    def run_once(self) -> float:
        with self._mutex:
            self._next_wake = math.inf  # registrations during a tick wake the next wait
        delay = self._tick()
        return self._sleep(self._idle_wait if delay is None else delay)

    def failed(self, exc: Exception) -> float:
        """A bug must not end the watch for every other lease: look again soon."""
        log.exception("%s: tick failed", self.name, exc_info=exc)
        return self._sleep(self._delay_after_error())

    def _sleep(self, delay: float) -> float:
        with self._mutex:
            self._next_wake = self.clock.monotonic() + delay
        return delay

    def _delay_after_error(self) -> float:
        """Retry a failed tick within a second, and no later than the nearest deadline."""
        deadlines = [lease.valid_until for lease in self.leases()]
        return max(0.01, min(1.0, min(deadlines, default=math.inf) - self.clock.monotonic()))

    def _tick(self) -> float | None:
        with self._mutex:
            leases = list(self._leases.values())
        live = self._expire(leases)
        if not live:
            return None
        now = self.clock.monotonic()
        renewing = self.renewer is not None
        if renewing and not self._in_flight and now >= self._retry_at and any(_due(x, now) for x in live):
            self._submit([lease for lease in live if _due(lease, now, early=0.5)])
        due = min(lease.valid_until for lease in live)
        if renewing and not self._in_flight:  # else the renewer wakes us when the reply is in
            for lease in live:
                if lease.auto_renew:
                    at = lease.renew_at()
                    if lease.renewing.locked():  # its owner is extending it: look again shortly
                        at = max(at, now + BUSY_RETRY)
                    due = min(due, max(at, self._retry_at))
        return max(0.0, due - self.clock.monotonic())

    def _expire(self, leases: list[LocalLease]) -> list[LocalLease]:
        """Declare lost the leases past their deadline; return those still held."""
        live = []
        for lease in leases:
            lease.check_deadline(self.expired_reason)
            if lease.over:
                with self._mutex:
                    self._leases.pop(lease.token, None)
            else:
                live.append(lease)
        return live

    def _submit(self, batch: list[LocalLease]) -> None:
        """Hand ``batch`` to the renewer, leaving out leases their owner is renewing right now."""
        assert self.renewer is not None
        job = [lease for lease in batch if lease.renewing.acquire(blocking=False)]
        if not job:
            return
        with self._mutex:
            stopping = self.stopping
            if not stopping:
                self._in_flight = True
        if stopping:
            for lease in job:
                lease.renewing.release()
        else:
            self.renewer.submit(job)


def _due(lease: LocalLease, now: float, early: float = 0.0) -> bool:
    return lease.auto_renew and lease.renew_at(early) <= now
