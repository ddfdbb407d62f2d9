"""This node's leadership of one election: its term, its renew deadline and the deadline watch.

:mod:`tickerq.redis.election_campaign` decides when a leadership begins and
ends; this module keeps the state other threads read (``term``) and ends a
leadership at its renew deadline on a service thread of its own, so that
``stop_event`` is set on time whatever the campaign's thread is waiting on (a
Redis call that hangs). Time comes from the election's clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.service import Service

__all__ = ["Leadership"]

log = logging.getLogger(__name__)


class Leadership(Service):
    """The leadership state of one started election, and its deadline watch (a :class:`Service`).

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
        stopping: True once the election stops: no leadership begins after that.
        on_begin: ``on_begin(term, stop_event)`` when a leadership begins.
        on_end: ``on_end(term, reason)`` when it ends.
        clock: Where deadlines are read and the watch sleeps.
    """

    def __init__(
        self,
        name: str,
        renew_deadline: float,
        stopping: Callable[[], bool],
        on_begin: Callable[[int, threading.Event], None],
        on_end: Callable[[int, str], None],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(f"tickerq-election-{name}-deadline", clock=clock)
        self._renew_deadline = renew_deadline
        self._election_stopping = stopping
        self._on_begin = on_begin
        self._on_end = on_end
        self._lock = threading.Lock()  # the state below; never held while user code runs
        self._transition = threading.RLock()  # keeps "began" before "ended" in the callback queue
        self._term: int | None = None
        self._deadline = 0.0
        self._ended: threading.Event | None = None  # the current leadership's stop_event
        self._resign_pending = False
        self._release_pending = False

    @property
    def term(self) -> int | None:
        """The term while this node leads and its renew deadline has not passed, else None."""
        with self._lock:
            return self._term if self.clock.monotonic() < self._deadline else None

    def current(self) -> tuple[int | None, float]:
        """The term (None when not leading) and its renew deadline (on the clock)."""
        with self._lock:
            return self._term, self._deadline

    def take_requests(self) -> tuple[bool, bool, bool]:
        """``(resigning, releasing, leading)``, clearing the first two.

        ``resigning``: :meth:`end` was called with ``resign`` since the last
        call; ``releasing``: a leadership ended since, so its lease should go.
        """
        with self._lock:
            resigning, self._resign_pending = self._resign_pending, False
            releasing, self._release_pending = self._release_pending, False
            return resigning, releasing, self._term is not None

    def begin(self, term: int, sent: float) -> bool:
        """Begin leading ``term``, acquired by a request sent at ``sent`` (on the clock).

        Refused (False) when the election stops, a resignation is pending, or
        the renew deadline counted from ``sent`` has already passed. Wakes the
        deadline watch.
        """
        with self._transition:
            with self._lock:
                refused = self._election_stopping() or self._resign_pending
                if refused or self.clock.monotonic() >= sent + self._renew_deadline:
                    return False
                ended = threading.Event()
                self._term, self._deadline, self._ended = term, sent + self._renew_deadline, ended
            self._on_begin(term, ended)
        self.wake()
        return True

    def extend(self, term: int, sent: float) -> bool:
        """Move the deadline of ``term`` to ``sent`` + renew deadline after a successful renewal.

        False when that leadership is over or its deadline passed meanwhile
        (``is_leader`` was already False): the caller then ends it.
        """
        with self._lock:
            if self._term == term and self.clock.monotonic() < self._deadline:
                self._deadline = sent + self._renew_deadline
                return True
            return False

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
                term, ended = self._term, self._ended
                if term is None or ended is None or leadership not in (None, ended):
                    return
                self._term = self._ended = None
                self._release_pending = True
            ended.set()
            self._on_end(term, reason)

    # -- the deadline watch -------------------------------------------------------

    def run_once(self) -> float | None:
        """End the leadership whose renew deadline passed; else sleep until that deadline.

        The deadline only moves later, so waking early just means waiting again.
        """
        with self._lock:
            ended = self._ended
            if ended is None:
                return None  # not leading: begin() wakes us
            remaining = self._deadline - self.clock.monotonic()
        if remaining > 0:
            return remaining
        self.end("renew deadline passed", ended)
        return None

    def failed(self, exc: Exception) -> float | None:
        """Log and look again soon: a deadline must not wait out a long back-off."""
        log.exception("%s: deadline check failed; retrying", self.name, exc_info=exc)
        return 0.05
