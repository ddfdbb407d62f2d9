"""This node's leadership of one election: its term, its renew deadline and the deadline timer.

:mod:`tickerq.redis.election` decides when a leadership begins and ends; this
module keeps the state other threads read (``term``) and ends a leadership at
its renew deadline on a timer thread of its own, so that ``stop_event`` is set
on time whatever the election thread is waiting on (a Redis call that hangs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Leadership"]


class Leadership:
    """The leadership state of one started election (a fresh one at every ``start()``).

    Any thread may end the leadership; only the election thread begins or
    extends one. ``on_begin`` and ``on_end`` are called on the thread that made
    the change, under a lock that keeps every ``on_begin`` before the
    ``on_end`` of the same leadership: they should only queue work (callbacks,
    events), never run user code.

    Args:
        name: The election's name (for the timer thread's name).
        renew_deadline: Seconds from sending the acquisition or renewal that
            succeeded until the leadership ends unless renewed.
        stopped: Set when the election stops: no leadership begins after that.
        on_begin: ``on_begin(term, stop_event)`` when a leadership begins.
        on_end: ``on_end(term, reason)`` when it ends.
    """

    def __init__(
        self,
        name: str,
        renew_deadline: float,
        stopped: threading.Event,
        on_begin: Callable[[int, threading.Event], None],
        on_end: Callable[[int, str], None],
    ) -> None:
        self._name = name
        self._renew_deadline = renew_deadline
        self._stopped = stopped
        self._on_begin = on_begin
        self._on_end = on_end
        self._lock = threading.Lock()  # the state below; never held while user code runs
        self._transition = threading.RLock()  # keeps "began" before "ended" in the callback queue
        self._term: int | None = None
        self._deadline = 0.0
        self._ended: threading.Event | None = None  # the current leadership's stop_event
        self._resign_pending = False
        self._release_pending = False
        #: The deadline timer of the latest leadership; assigned by the election thread only,
        #: so it is final once that thread has ended.
        self.timer: threading.Thread | None = None

    @property
    def term(self) -> int | None:
        """The term while this node leads and its renew deadline has not passed, else None."""
        with self._lock:
            return self._term if time.monotonic() < self._deadline else None

    def current(self) -> tuple[int | None, float]:
        """The term (None when not leading) and its renew deadline (monotonic)."""
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
        """Begin leading ``term``, acquired by a request sent at ``sent`` (monotonic).

        Refused (False) when the election stopped, a resignation is pending,
        or the renew deadline counted from ``sent`` has already passed.
        Starts the deadline timer.
        """
        with self._transition:
            with self._lock:
                refused = self._stopped.is_set() or self._resign_pending
                if refused or time.monotonic() >= sent + self._renew_deadline:
                    return False
                ended = threading.Event()
                self._term, self._deadline, self._ended = term, sent + self._renew_deadline, ended
            self._on_begin(term, ended)
        timer = threading.Thread(
            target=self._expire, args=(ended,), name=f"tickerq-election-{self._name}-deadline", daemon=True
        )
        self.timer = timer
        timer.start()
        return True

    def extend(self, term: int, sent: float) -> bool:
        """Move the deadline of ``term`` to ``sent`` + renew deadline after a successful renewal.

        False when that leadership is over or its deadline passed meanwhile
        (``is_leader`` was already False): the caller then ends it.
        """
        with self._lock:
            if self._term == term and time.monotonic() < self._deadline:
                self._deadline = sent + self._renew_deadline
                return True
            return False

    def end(self, reason: str, leadership: threading.Event | None = None, *, resign: bool = False) -> None:
        """End the leadership (only ``leadership``, if given), if any; from any thread, acts once.

        With ``resign``, the election thread is also asked to release the
        lease and step back, decided under the same lock so that no
        acquisition in flight begins a leadership meanwhile.
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

    def _expire(self, ended: threading.Event) -> None:
        """The deadline timer: ends the leadership that ``ended`` belongs to at its renew deadline.

        The deadline only moves later, so waking early just means waiting again.
        """
        while True:
            with self._lock:
                if self._ended is not ended:
                    return
                remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self.end("renew deadline passed", ended)
                return
            ended.wait(remaining)
