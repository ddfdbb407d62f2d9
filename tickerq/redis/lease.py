"""Leases: one holding of a distributed lock, its keys, and the renewal requests that keep it.

A :class:`Lease` knows its fence and a local deadline: the monotonic time after
which Redis may have let the key expire, counted from when the last successful
renewal request was *sent* (minus a drift margin). The watchdog and
``Lock.extend()`` renew it with ``lock_renew.lua``; one renewal of a lease runs
at a time (``Lease.renewing``), so Redis applies them in the order they were
sent and the deadline always matches the ttl Redis holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import attrs

from tickerq.durations import to_milliseconds
from tickerq.errors import LockLostError
from tickerq.redis.keys import Keys
from tickerq.redis.scripts import LuaScript

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

log = logging.getLogger(__name__)

#: Renews a batch of leases; see ``lua/lock_renew.lua`` for the reply codes.
RENEW = LuaScript("lock_renew")
LOST = 0
REESTABLISHED = 2


def drift_margin(ttl: float) -> float:
    """Seconds before its ttl runs out that a lease counts as lost: 1 % of the ttl plus 2 ms."""
    return ttl * 0.01 + 0.002


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


class Lease:
    """One holding of a lock: its fence and whether it may still be held.

    The token belongs to the lease, not to a thread: any thread may release it
    and the watchdog renews it. ``lost`` is set (and ``on_lost(lease)`` called
    once, on a thread of its own) the moment we know we may not hold it.

    Attributes:
        name: The lock's name.
        token: The unique value stored in the lock key (``{owner}:{random}``).
        fence: Strictly increasing per lock name; pass it to the protected resource.
        lost: Set when the lease is, or may be, lost.
        lost_reason: Why ``lost`` was set, or None.
        lost_at: ``time.monotonic()`` when ``lost`` was set, or None.
        renewing: Held while a renewal of this lease is in flight (one at a time).
    """

    def __init__(
        self, *, name: str, token: str, fence: int, ttl: timedelta, keys: LockKeys, auto_renew: bool,
        on_lost: Callable[[Lease], None] | None, sent_at: float, pid: int,
    ) -> None:  # fmt: skip
        self.name = name
        self.token = token
        self.fence = fence
        self._lost = False
        self._lost_event: threading.Event | None = None  # made on first use: most leases never need it
        self.lost_reason: str | None = None
        self.lost_at: float | None = None
        self.auto_renew = auto_renew
        self.released = False
        self.keys = keys
        self.lock_key = keys.lock
        self.fence_key = keys.fence
        self.pid = pid
        self.owner_thread = threading.get_ident()
        self.renewing = threading.Lock()
        self._on_lost = on_lost
        self._mutex = threading.Lock()
        self._count = 1
        self._ttl = ttl
        self._last_sent = sent_at
        self.valid_until = sent_at + self.ttl_seconds - drift_margin(self.ttl_seconds)

    @property
    def lost(self) -> threading.Event:
        """Set when the lease is, or may be, lost (wait on it to be told)."""
        event = self._lost_event
        if event is None:
            with self._mutex:
                if self._lost_event is None:
                    self._lost_event = threading.Event()
                    if self._lost:
                        self._lost_event.set()
                event = self._lost_event
        return event

    @property
    def is_lost(self) -> bool:
        """Whether ``lost`` is set (without making the event)."""
        return self._lost

    @property
    def ttl(self) -> timedelta:
        """The ttl each renewal sets."""
        return self._ttl

    @property
    def ttl_seconds(self) -> float:
        return self._ttl.total_seconds()

    @property
    def held(self) -> bool:
        """True while the lease is neither released, lost nor past its local deadline."""
        return not (self.released or self._lost or time.monotonic() >= self.valid_until)

    def ensure_held(self) -> None:
        """Raise unless the lease is still held.

        Raises:
            LockLostError: The lease was released, or is (or may be) lost.
        """
        self.check_deadline()
        if self.released:
            raise LockLostError(f"lock {self.name!r} (fence {self.fence}) was released")
        if self._lost:
            raise LockLostError(f"lock {self.name!r} (fence {self.fence}) is lost: {self.lost_reason}")

    def check_deadline(self) -> None:
        """Declare the lease lost if its local deadline passed unnoticed."""
        if not self._lost and time.monotonic() >= self.valid_until:
            self.declare_lost("no successful renewal within its ttl")

    def declare_lost(self, reason: str) -> bool:
        """Set ``lost`` and start ``on_lost`` once; False if already lost or released."""
        with self._mutex:
            if self._lost or self.released:
                return False
            self.lost_reason = reason
            self.lost_at = time.monotonic()
            self._lost = True
            if self._lost_event is not None:
                self._lost_event.set()
        log.warning("lock %r (fence %d) lost: %s", self.name, self.fence, reason)
        if self._on_lost is not None:
            threading.Thread(target=self._notify, name="tickerq-lock-lost", daemon=True).start()
        return True

    def _notify(self) -> None:
        assert self._on_lost is not None
        try:
            self._on_lost(self)
        except Exception:
            log.exception("on_lost callback for lock %r failed", self.name)

    def confirm(self, sent_at: float, ttl: float) -> None:
        """A renewal sent at ``sent_at`` with ``ttl`` seconds succeeded: move the deadline."""
        with self._mutex:
            if sent_at > self._last_sent:
                self._last_sent = sent_at
                self.valid_until = sent_at + ttl - drift_margin(ttl)

    def cap(self, sent_at: float, ttl: float) -> None:
        """A request sent at ``sent_at`` may have set ``ttl`` seconds: never count on more."""
        with self._mutex:
            self.valid_until = min(self.valid_until, sent_at + ttl - drift_margin(ttl))

    def renew_at(self, early: float = 0.0) -> float:
        """When the next renewal is due (ttl/3 after the last one), ``early`` intervals sooner."""
        return self._last_sent + self.ttl_seconds / 3 * (1.0 - early)

    def next_check(self) -> float:
        return min(self.valid_until, self.renew_at()) if self.auto_renew else self.valid_until

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
            if not self._lost and time.monotonic() < self.valid_until:
                self._count += 1
                return True
        self.check_deadline()
        raise LockLostError(f"lock {self.name!r} (fence {self.fence}) is lost: {self.lost_reason}")

    def drop(self) -> bool:
        """Count one release; True (and ``released`` set) when it was the last."""
        with self._mutex:
            self._count -= 1
            if self._count > 0:
                return False
            self.released = True
            return True

    def set_ttl(self, ttl: timedelta) -> None:
        self._ttl = ttl

    def __repr__(self) -> str:
        state = "released" if self.released else "lost" if self._lost else "held"
        return f"<Lease {self.name!r} fence={self.fence} {state}>"


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


def renew_arguments(renewals: Sequence[Renewal]) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV for ``lock_renew.lua`` covering ``renewals``."""
    keys: list[str] = []
    args: list[str | int] = []
    for renewal in renewals:
        lease = renewal.lease
        keys += (lease.lock_key, lease.fence_key)
        args += (lease.token, renewal.ttl_ms, lease.fence)
    return keys, args
