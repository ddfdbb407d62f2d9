"""A lock's lease: its keys, its reentrant count, and the renewal requests that keep it.

:class:`Lease` is a :class:`~tickerq._runtime.lease.LocalLease` (the lease core
shared with elections): its local deadline is counted from when the last
successful renewal request was *sent*, minus a drift margin. The watchdog and
``Lock.extend()`` renew it with ``lock_renew.lua``; one renewal of a lease runs
at a time (``Lease.renewing``), so Redis applies them in the order they were
sent and the deadline always matches the ttl Redis holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import timedelta

import attrs

from tickerq._redis.keys import Keys
from tickerq._redis.scripts import LuaScript
from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import Dispatcher
from tickerq._runtime.lease import LocalLease, drift_margin, hold_for
from tickerq.durations import to_milliseconds
from tickerq.errors import LockLostError

__all__ = [
    "LOST",
    "REESTABLISHED",
    "RENEW",
    "Lease",
    "LockKeys",
    "Renewal",
    "drift_margin",
    "renew_arguments",
]

#: Renews a batch of leases; see ``lua/lock_renew.lua`` for the reply codes.
RENEW = LuaScript("lock_renew", package="tickerq.locks")
LOST = 0
REESTABLISHED = 2


@attrs.frozen
class LockKeys:
    """The keys one lock uses (lock, fence, and its waiting line)."""

    lock: str
    fence: str
    queue: str
    turn: str
    waiters: str
    wake_prefix: str

    @classmethod
    def build(cls, keys: Keys, name: str) -> LockKeys:
        return cls(
            keys.lock(name), keys.lock_fence(name), keys.lock_queue(name),
            keys.lock_turn(name), keys.lock_waiters(name), keys.lock_wake_prefix(name),
        )  # fmt: skip

    @property
    def script_keys(self) -> list[str]:
        return [self.lock, self.fence, self.queue, self.turn, self.waiters]


class Lease(LocalLease):
    """One holding of a lock: its fence and whether it may still be held.

    The token belongs to the lease, not to a thread: any thread may release it
    and the watchdog renews it. ``lost`` is set (and ``on_lost(lease)`` queued
    once, on the lock manager's dispatcher) the moment we know we may not hold it.

    Attributes:
        name: The lock's name.
        token: The unique value stored in the lock key (``{owner}:{random}``).
        fence: Strictly increasing per lock name; pass it to the protected resource.
        lost: Set when the lease is, or may be, lost.
        lost_reason: Why ``lost`` was set, or None.
        lost_at: The clock's monotonic time when ``lost`` was set, or None.
        renewing: Held while a renewal of this lease is in flight (one at a time).
    """

    def __init__(
        self, *, name: str, token: str, fence: int, ttl: timedelta, keys: LockKeys, auto_renew: bool,
        on_lost: Callable[[Lease], None] | None, sent_at: float, pid: int, clock: Clock = SYSTEM_CLOCK,
        dispatcher: Dispatcher | None = None,
    ) -> None:  # fmt: skip
        seconds = ttl.total_seconds()
        super().__init__(
            name=name, token=token, fence=fence, hold=hold_for(seconds), renew_every=seconds / 3,
            sent_at=sent_at, auto_renew=auto_renew, clock=clock, on_lost=on_lost, dispatcher=dispatcher,
        )  # fmt: skip
        self.keys = keys
        self.lock_key = keys.lock
        self.fence_key = keys.fence
        self.pid = pid
        self.owner_thread = threading.get_ident()
        self._count = 1
        self._ttl = ttl

    @property
    def ttl(self) -> timedelta:
        """The ttl each renewal sets."""
        return self._ttl

    @property
    def ttl_seconds(self) -> float:
        return self._ttl.total_seconds()

    def describe(self) -> str:
        return f"lock {self.name!r}"

    def ensure_held(self) -> None:
        """Raise unless the lease is still held.

        Raises:
            LockLostError: The lease was released, or is (or may be) lost.
        """
        self.check_deadline()
        if self.released:
            raise LockLostError(f"lock {self.name!r} (fence {self.fence}) was released", name=self.name)
        if self.is_lost:
            raise LockLostError(
                f"lock {self.name!r} (fence {self.fence}) is lost: {self.lost_reason}", name=self.name
            )

    def try_join(self) -> bool:
        """Count one more reentrant acquisition by the owner, unless the lease was released.

        Checked and counted under the lease's mutex, so a release on another
        thread either happens first (and this returns False: acquire afresh) or
        sees the extra count (and keeps the lock).

        Raises:
            LockLostError: The lease is lost.
        """
        with self._mutex:
            if self.released:
                return False
            if not self.is_lost and self.clock.monotonic() < self.valid_until:
                self._count += 1
                return True
        self.check_deadline()
        raise LockLostError(
            f"lock {self.name!r} (fence {self.fence}) is lost: {self.lost_reason}", name=self.name
        )

    def drop(self) -> bool:
        """Count one release; True (and ``released`` set) when it was the last."""
        with self._mutex:
            self._count -= 1
            if self._count > 0:
                return False
            self.released = True
            return True

    def set_ttl(self, ttl: timedelta) -> None:
        """Renew with ``ttl`` from now on (every third of it)."""
        self._ttl = ttl
        self.renew_every = ttl.total_seconds() / 3


@attrs.frozen
class Renewal:
    """One lease in one renewal request, with the ttl it sends (read once, so the
    reply is confirmed with exactly the ttl Redis was given)."""

    lease: Lease
    ttl_ms: int

    @classmethod
    def of(cls, lease: Lease, ttl: timedelta | None = None) -> Renewal:
        """Renew ``lease`` with ``ttl``, or with its ttl as of now."""
        return cls(lease, to_milliseconds(lease.ttl if ttl is None else ttl))

    @property
    def ttl(self) -> float:
        """The ttl sent, in seconds."""
        return self.ttl_ms / 1000

    @property
    def hold(self) -> float:
        """How long after sending the lease may be believed held, if this renewal succeeds."""
        return hold_for(self.ttl_ms / 1000)


def renew_arguments(renewals: Sequence[Renewal]) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV for ``lock_renew.lua`` covering ``renewals``."""
    keys: list[str] = []
    args: list[str | int] = []
    for renewal in renewals:
        lease = renewal.lease
        keys += (lease.lock_key, lease.fence_key)
        args += (lease.token, renewal.ttl_ms, lease.fence)
    return keys, args
