"""This node's leadership of one election: its term, its renew deadline and the deadline watch.

:mod:`tickerq.election.election_campaign` decides when a leadership begins and
ends; this module keeps the state other threads read (``term``). A leadership
is a :class:`~tickerq._runtime.lease.LocalLease` of the lease core (its term is
the fence, its renew deadline the hold), watched by a
:class:`~tickerq._runtime.deadline_watch.DeadlineWatch` of its own that ends it
at that deadline, so that ``stop_event`` is set on time whatever the campaign's
thread is waiting on (a Redis call that hangs). Time comes from the election's clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.deadline_watch import DeadlineWatch
from tickerq._runtime.lease import LocalLease

__all__ = ["Leadership"]

log = logging.getLogger(__name__)


class Leadership:
    """The leadership state of one started election, and its deadline watch (a service).

    The watch, ``tickerq-election-{name}-deadline``, sleeps until the current
    leadership's renew deadline (or until one begins) and ends it there. Any
    thread may end a leadership; only the campaign's thread begins or extends
    one. ``on_begin`` and ``on_end`` are called on the thread that made the
    change, under a lock that keeps every ``on_begin`` before the ``on_end`` of
    the same leadership: they should only queue work (callbacks, events),
    never run user code.

    Args:
        name: The election's name (for the watch thread's name).
        renew_deadline: Seconds from sending the acquisition or renewal that
            succeeded until the leadership ends unless renewed.
        retry_period: Seconds between renewals (the lease's renewal schedule).
        stopping: True once the election stops: no leadership begins after that.
        on_begin: ``on_begin(term, stop_event)`` when a leadership begins.
        on_end: ``on_end(term, reason)`` when it ends.
        clock: Where deadlines are read and the watch sleeps.
    """

    def __init__(
        self,
        name: str,
        renew_deadline: float,
        *,
        retry_period: float,
        stopping: Callable[[], bool],
        on_begin: Callable[[int, threading.Event], None],
        on_end: Callable[[int, str], None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.name = name
        self.clock = clock
        self.watch = DeadlineWatch(
            f"tickerq-election-{name}-deadline", clock=clock, expired_reason="renew deadline passed"
        )
        self._renew_deadline = renew_deadline
        self._retry_period = retry_period
        self._election_stopping = stopping
        self._on_begin = on_begin
        self._on_end = on_end
        self._lock = threading.Lock()  # the state below; never held while user code runs
        self._transition = threading.RLock()  # keeps "began" before "ended" in the callback queue
        self._lease: LocalLease | None = None  # the current leadership
        self._ended: threading.Event | None = None  # the current leadership's stop_event
        self._resign_pending = False
        self._release_pending = False

    # -- the service contract (the deadline watch's) --------------------------

    def start(self) -> None:
        """Start the deadline watch."""
        self.watch.start()

    def request_stop(self) -> None:
        """Stop the deadline watch; returns at once."""
        self.watch.request_stop()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the deadline watch until ``deadline`` (``time.monotonic()``)."""
        return self.watch.wait_stopped(deadline)

    # -- the state -----------------------------------------------------------------

    @property
    def term(self) -> int | None:
        """The term while this node leads and its renew deadline has not passed, else None."""
        with self._lock:
            lease = self._lease
        return lease.fence if lease is not None and lease.held else None

    def current(self) -> tuple[int | None, float]:
        """The term (None when not leading) and its renew deadline (on the clock)."""
        with self._lock:
            lease = self._lease
        return (None, 0.0) if lease is None else (lease.fence, lease.valid_until)

    def renew_at(self) -> float:
        """When the current leadership's next renewal is due (on the clock; now when none)."""
        with self._lock:
            lease = self._lease
        return self.clock.monotonic() if lease is None else lease.renew_at()

    def take_requests(self) -> tuple[bool, bool, bool]:
        """``(resigning, releasing, leading)``, clearing the first two.

        ``resigning``: :meth:`end` was called with ``resign`` since the last
        call; ``releasing``: a leadership ended since, so its lease should go.
        """
        with self._lock:
            resigning, self._resign_pending = self._resign_pending, False
            releasing, self._release_pending = self._release_pending, False
            return resigning, releasing, self._lease is not None

    def begin(self, term: int, sent: float) -> bool:
        """Begin leading ``term``, acquired by a request sent at ``sent`` (on the clock).

        Refused (False) when the election stops, a resignation is pending, or
        the renew deadline counted from ``sent`` has already passed. The
        deadline watch then watches it.
        """
        lease = LocalLease(
            name=self.name, token=f"term-{term}", fence=term, hold=self._renew_deadline,
            renew_every=self._retry_period, sent_at=sent, clock=self.clock, on_expired=self._expired,
        )  # fmt: skip
        with self._transition:
            with self._lock:
                if self._election_stopping() or self._resign_pending or not lease.held:
                    return False
                ended = threading.Event()
                self._lease, self._ended = lease, ended
            self._on_begin(term, ended)
        self.watch.register(lease)  # refused only once stopping, which has ended it
        return True

    def extend(self, term: int, sent: float) -> bool:
        """Move the deadline of ``term`` to ``sent`` + renew deadline after a successful renewal.

        False when that leadership is over or its deadline passed meanwhile
        (``is_leader`` was already False): the caller then ends it.
        """
        with self._lock:
            lease = self._lease
        if lease is None or lease.fence != term:
            return False
        return lease.confirm(sent, self._renew_deadline)

    def end(self, reason: str, leadership: threading.Event | None = None, *, resign: bool = False) -> None:
        """End the leadership (only ``leadership``, if given), if any; from any thread, acts once.

        With ``resign``, the campaign is also asked to release the lease and
        step back, decided under the same lock so that no acquisition in
        flight begins a leadership meanwhile.
        """
        with self._transition:
            with self._lock:
                if resign:
                    self._resign_pending = True
                lease, ended = self._lease, self._ended
                if lease is None or ended is None or leadership not in (None, ended):
                    return
                self._lease = self._ended = None
                self._release_pending = True
                lease.released = True  # the watch lets go of it
            self.watch.unregister(lease)
            ended.set()
            self._on_end(lease.fence, reason)

    def _expired(self, lease: LocalLease, reason: str) -> None:
        """The watch found ``lease``'s renew deadline passed: end that leadership (if still current)."""
        with self._lock:
            ended = self._ended if self._lease is lease else None
        if ended is not None:
            self.end(reason, ended)
