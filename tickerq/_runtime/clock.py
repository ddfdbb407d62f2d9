"""One injectable clock for every background service.

Services read monotonic and wall time, and sleep, through a :class:`Clock`, so
tests can drive time with :class:`ManualClock` where that is clearer than
sleeping. Decisions that compare nodes use Redis ``TIME``, never this clock.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Where services take time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for deadlines and intervals)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (for display and local cron math)."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until ``event`` is set or ``timeout`` seconds pass on this clock.

        Returns:
            True when the event is set.
        """
        ...


class SystemClock:
    """The real clocks: ``time.monotonic``, ``time.time`` and ``Event.wait``."""

    def monotonic(self) -> float:
        """See :meth:`Clock.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """See :meth:`Clock.time`."""
        return time.time()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """See :meth:`Clock.wait`."""
        return event.wait(timeout)

    def __repr__(self) -> str:
        return "SystemClock()"


#: The clock every service uses unless it is given another.
SYSTEM_CLOCK = SystemClock()

#: How often a waiter on a :class:`ManualClock` looks at its event in real time.
_POLL = 0.005


class ManualClock:
    """A clock that moves only when told to, for tests.

    ``wait()`` returns when its event is set (checked every few real
    milliseconds) or when :meth:`advance` moves the clock past its timeout.

    Args:
        monotonic: The starting monotonic reading.
        wall: The starting wall-clock reading (Unix seconds).
    """

    def __init__(self, monotonic: float = 1_000.0, wall: float = 1_767_225_600.0) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._changed = threading.Condition()

    def monotonic(self) -> float:
        """See :meth:`Clock.monotonic`."""
        with self._changed:
            return self._monotonic

    def time(self) -> float:
        """See :meth:`Clock.time`."""
        with self._changed:
            return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake the waiters whose timeout passed."""
        if seconds < 0:
            raise ValueError(f"seconds={seconds!r}: a clock only moves forward")
        with self._changed:
            self._monotonic += seconds
            self._wall += seconds
            self._changed.notify_all()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """See :meth:`Clock.wait`; ``timeout`` counts on this clock, not in real time."""
        with self._changed:
            deadline = None if timeout is None else self._monotonic + timeout
            while not event.is_set():
                if deadline is not None and self._monotonic >= deadline:
                    return False
                self._changed.wait(_POLL)
        return True

    def __repr__(self) -> str:
        return f"ManualClock(monotonic={self._monotonic}, wall={self._wall})"
