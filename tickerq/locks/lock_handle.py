"""``Lock``: the handle a caller acquires and releases; the shortest ttl a lock takes.

A ``Lock`` counts its own acquisitions and gives the ``with`` block its meaning;
the :class:`~tickerq.locks.lock.LockManager` that made it talks to Redis.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from tickerq.durations import Duration, to_timedelta
from tickerq.errors import ConfigurationError, LockError, LockLostError
from tickerq.locks.lease import Lease

if TYPE_CHECKING:
    from tickerq.locks.lock import LockManager

__all__ = ["DEFAULT_TTL", "MIN_TTL", "Lock", "lock_ttl"]

log = logging.getLogger(__name__)

#: The shortest ttl a lock takes. A lease is renewed ttl/3 after its last renewal was sent and
#: is lost unless one is confirmed by ttl minus 1 % minus 2 ms: about 0.65 ttl for the watchdog
#: and renewer threads to wake (each may wait a GIL switch interval, 5 ms, on a busy process),
#: a round trip, and a retry (after ttl/6 at most) if that one failed. At 100 ms that is 64 ms;
#: much shorter, the thread wake-ups alone eat the margin and the lease is lost while Redis is fine.
#: A lock's ttl unless the caller gives one.
DEFAULT_TTL = timedelta(seconds=30)

MIN_TTL = timedelta(milliseconds=100)


def lock_ttl(value: Duration) -> timedelta:
    """``value`` as a lock ttl.

    Raises:
        ConfigurationError: ``value`` is not a duration, or below :data:`MIN_TTL`.
    """
    ttl = to_timedelta(value, field="ttl")
    if ttl < MIN_TTL:
        raise ConfigurationError(
            f"ttl={value!r} is too short: expected at least {MIN_TTL.total_seconds():g} s "
            "(renewal every ttl/3 needs a round trip and thread wake-ups to fit in the ttl)"
        )
    return ttl


class Lock:
    """A named distributed lock; made by :meth:`LockManager.lock`, no I/O until used.

    ``with lock as lease:`` acquires on entry and releases on exit. Leaving the
    block raises :class:`LockLostError` if the lease was lost, unless the body
    raised: then the body's exception propagates.
    """

    def __init__(
        self, manager: LockManager, name: str, *, ttl: Duration, blocking: bool,
        wait_timeout: Duration | None, auto_renew: bool, on_lost: Callable[[Lease], None] | None,
        reentrant: bool,
    ) -> None:  # fmt: skip
        self.name = name
        self.ttl = lock_ttl(ttl)
        self.blocking = blocking
        self.wait_timeout: timedelta | None = None
        if wait_timeout is not None:
            if not blocking:
                raise ConfigurationError(
                    f"wait_timeout={wait_timeout!r} with blocking=False: a non-blocking lock does not wait"
                )
            self.wait_timeout = to_timedelta(wait_timeout, field="wait_timeout", allow_zero=True)
        self.auto_renew = auto_renew
        self.on_lost = on_lost
        self.reentrant = reentrant
        self._commands = manager._commands(name)
        self.keys = self._commands.keys
        self._manager = manager
        self._mutex = threading.Lock()
        self._leases: list[Lease] = []  # one entry per acquire() not yet released
        self._last: Lease | None = None  # the lease of the latest acquire(), even once released

    @property
    def lease(self) -> Lease | None:
        """The lease this Lock holds now, or None."""
        with self._mutex:
            return self._leases[-1] if self._leases else None

    def acquire(self) -> Lease:
        """Acquire the lock, waiting in line if ``blocking``.

        While Redis hangs or is down, a non-blocking acquire answers within one
        ``sync_timeout`` (the client's socket timeout), and one with a ``wait_timeout``
        within that plus one ``sync_timeout``; otherwise each call to Redis gives up
        after one ``sync_timeout``. The cleanup after a failure (leaving the line, or
        letting go of a lock whose reply was lost) fits in that time or is skipped:
        the key then expires within its ttl.

        Returns:
            The lease; with ``reentrant=True`` the owner's existing lease when it holds one.

        Raises:
            LockTimeoutError: Taken and ``blocking=False``, or ``wait_timeout`` elapsed.
            LockLostError: Reentering a lease that is lost.
            LockError: This non-reentrant Lock already holds the lock, or the manager is closed.
            RedisUnavailableError: Redis could not be reached.
        """
        if self.lease is not None and not self.reentrant:
            raise LockError(f"this Lock already holds {self.name!r}: release it first, or use reentrant=True")
        lease = self._manager._acquire(self)
        with self._mutex:
            self._leases.append(lease)
            self._last = lease
        return lease

    def release(self) -> bool:
        """Release one acquisition (the lock itself when it is the owner's last).

        Returns:
            Whether the lease was still held (never declared lost) until now.

        Raises:
            LockError: This Lock holds nothing.
            RedisUnavailableError: Redis could not be reached (the key then expires by itself).
        """
        with self._mutex:
            if not self._leases:
                raise LockError(f"cannot release {self.name!r}: this Lock does not hold it")
            lease = self._leases.pop()
        return self._manager._release(lease)

    def extend(self, ttl: Duration | None = None) -> None:
        """Set the lock's remaining time to ``ttl`` (default: the lease's ttl) now.

        Raises:
            LockLostError: The lease is lost or was released (also when it was declared
                lost while the extension was in flight, even if Redis applied it).
            LockError: This Lock was never acquired, or was acquired by another process
                (a forked child cannot extend its parent's lease).
        """
        with self._mutex:
            lease = self._leases[-1] if self._leases else self._last
        if lease is None:
            raise LockError(f"cannot extend {self.name!r}: this Lock was never acquired")
        self._manager._extend(lease, None if ttl is None else lock_ttl(ttl))

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease = self.lease
        error: Exception | None = None
        try:
            held = self.release()
        except Exception as release_error:
            if exc_type is not None:  # the body's exception wins
                log.warning("releasing lock %r failed while its body raised: %s", self.name, release_error)
                return
            held, error = False, release_error
        lost = lease is not None and (lease.is_lost or (error is None and not held))
        if exc_type is None and lease is not None and lost:
            reason = lease.lost_reason or "the key was gone or held by another owner at release"
            raise LockLostError(
                f"lock {self.name!r} (fence {lease.fence}) was lost inside the with block: {reason}"
            ) from error
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} ttl={self.ttl} lease={self.lease!r}>"
