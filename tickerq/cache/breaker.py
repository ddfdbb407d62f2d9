"""A small circuit breaker: stop calling a dependency that just failed, probe it later.

States: *closed* (calls go through), *open* (calls are refused for
``open_for`` after a failure) and *half-open* (the first caller after that is
let through as a probe; its outcome closes or re-opens the breaker). While the
probe is out every other caller is refused, so a dead server costs one slow
call per ``open_for``, not one per caller.

The breaker reports outage boundaries instead of logging them itself:
``record_failure`` returns ``True`` only for the failure that opened a closed
breaker, and ``record_success`` returns ``True`` only for the success that
closed it again, so a caller can log exactly once per outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Literal, cast

from tickerq.durations import Duration, to_timedelta

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Closed → open after a failure → half-open probe → closed (or open again).

    Thread-safe. ``allow`` and ``record_success`` take no lock while the
    breaker is closed, so the healthy path costs two attribute reads.

    Args:
        open_for: How long calls are refused after a failure before one probe
            is let through. A probe that has not reported back after this long
            is presumed lost, and another caller becomes the probe.
        clock: A monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, open_for: Duration, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_for: timedelta = to_timedelta(open_for, field="open_for")
        self._open_for_s = self.open_for.total_seconds()
        self._clock = clock
        self._lock = threading.Lock()
        self._state: str = "closed"  # a State; plain str so re-checks under the lock type-check
        self._until = 0.0  # open: refuse until then; half-open: the probe's deadline

    @property
    def state(self) -> State:
        """``"closed"``, ``"open"`` or ``"half-open"`` (an open breaker past its time reads as half-open)."""
        state = self._state
        if state == "open" and self._clock() >= self._until:
            return "half-open"
        return cast(State, state)

    def allow(self) -> bool:
        """Whether the caller may use the dependency now.

        Returns ``True`` while closed, and for exactly one caller (the probe)
        once an open breaker's time is up. The caller must then report the
        outcome with :meth:`record_success` or :meth:`record_failure`.
        """
        if self._state == "closed":
            return True
        with self._lock:
            if self._state == "closed":
                return True
            now = self._clock()
            if now < self._until:
                return False
            self._state = "half-open"
            self._until = now + self._open_for_s
            return True

    def record_success(self) -> bool:
        """Report a call that worked; close the breaker.

        Returns:
            ``True`` if this success ended an outage (the breaker was not closed).
        """
        if self._state == "closed":
            return False
        with self._lock:
            was_closed = self._state == "closed"
            self._state = "closed"
            return not was_closed

    def record_failure(self) -> bool:
        """Report a call that failed; open the breaker for ``open_for``.

        Returns:
            ``True`` if this failure started an outage (the breaker was closed).
        """
        with self._lock:
            was_closed = self._state == "closed"
            self._state = "open"
            self._until = self._clock() + self._open_for_s
            return was_closed

    def reset(self) -> None:
        """Forget all state (for a process forked while the breaker was in use)."""
        self._lock = threading.Lock()
        self._state = "closed"
        self._until = 0.0

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, open_for={self.open_for!r})"
