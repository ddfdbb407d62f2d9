"""The lease core: what a process believes about a lease it holds in Redis.

Locks, elections (and, shaped for it, the scheduler's job claims) are leases: a
token set with compare-and-set, a fence (or term) that never goes backwards, a
local deadline with a drift margin, and renewal. This module holds the parts
that are the same for all of them, and no I/O:

- :class:`LocalLease`: the local deadline, counted from when the last
  successful renewal request was *sent* (Redis set the ttl after that, so its
  key lives at least that long), the renewal schedule, one renewal in flight
  at a time, and "lost" declared once, with the owner's hook run at once and
  the user's ``on_lost`` on a dispatcher.
- :class:`FenceFloors`: the node-local floor of fences handed out per name,
  which lets a holder notice that Redis lost its data and restarted a counter.

The deadline watch and batched renewal that drive these live in
:mod:`tickerq._runtime.deadline_watch`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import Dispatcher, DispatcherStoppedError

__all__ = ["FenceFloors", "LocalLease", "drift_margin", "hold_for"]

log = logging.getLogger(__name__)


def drift_margin(ttl: float) -> float:
    """Seconds before its ttl runs out that a lease counts as lost: 1 % of the ttl plus 2 ms."""
    return ttl * 0.01 + 0.002


def hold_for(ttl: float) -> float:
    """How long after sending a request that set ``ttl`` seconds the lease may be believed held."""
    return ttl - drift_margin(ttl)


class LocalLease:
    """One lease as its holder sees it: fence, local deadline, renewal schedule, lost once.

    The token belongs to the lease, not to a thread: any thread may end it and
    a watch renews it. Once lost, a lease stays lost, whatever Redis answers
    later.

    Args:
        name: What the lease is of (a lock's or an election's name), for log lines.
        token: The unique value the holder's compare-and-set checks in Redis.
        fence: The fence (a lock's) or term (an election's) of this holding.
        hold: Seconds after a successful request was sent that the lease is
            believed held (a lock: its ttl minus :func:`drift_margin`; an
            election: its renew deadline).
        renew_every: Seconds between renewals, counted from the last one sent.
        sent_at: When the request that took the lease was sent (on ``clock``).
        auto_renew: Whether a watch renews it (else its owner does, or nobody).
        clock: Where deadlines are read.
        on_expired: The owner's hook, called once with ``(lease, reason)`` on the
            thread that declared the loss (a watch thread): bookkeeping only,
            never user code.
        on_lost: The user's callback, called once with the lease on ``dispatcher``.
        dispatcher: Where ``on_lost`` runs (required with ``on_lost``).
    """

    def __init__(
        self, *, name: str, token: str, fence: int, hold: float, renew_every: float, sent_at: float,
        auto_renew: bool = False, clock: Clock = SYSTEM_CLOCK,
        on_expired: Callable[[LocalLease, str], None] | None = None,
        on_lost: Callable[..., None] | None = None, dispatcher: Dispatcher | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.token = token
        self.fence = fence
        self.auto_renew = auto_renew
        self.renew_every = renew_every
        self.clock = clock
        #: Held while a renewal of this lease is in flight: Redis then applies them in the
        #: order they were sent, so the deadline always matches the ttl Redis holds.
        self.renewing = threading.Lock()
        self.released = False
        self.lost_reason: str | None = None
        self.lost_at: float | None = None
        self._lost = False
        self._lost_event: threading.Event | None = None  # made on first use: most leases never need it
        self._on_expired = on_expired
        self._on_lost = on_lost
        self._dispatcher = dispatcher
        self._mutex = threading.Lock()
        self._last_sent = sent_at
        self.valid_until = sent_at + hold

    # -- state ---------------------------------------------------------------

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
    def held(self) -> bool:
        """True while the lease is neither released, lost nor past its local deadline."""
        return not (self.released or self._lost or self.clock.monotonic() >= self.valid_until)

    @property
    def over(self) -> bool:
        """True once released or lost: no watch needs it any more."""
        return self.released or self._lost

    # -- the deadline --------------------------------------------------------

    def check_deadline(self, reason: str = "no successful renewal within its ttl") -> bool:
        """Declare the lease lost if its local deadline passed; True if this call did."""
        if not self._lost and self.clock.monotonic() >= self.valid_until:
            return self.declare_lost(reason)
        return False

    def declare_lost(self, reason: str) -> bool:
        """Mark the lease lost, call the owner's hook and queue ``on_lost``, once.

        Returns:
            False when it was already lost or released (nothing done).
        """
        with self._mutex:
            if self._lost or self.released:
                return False
            self.lost_reason = reason
            self.lost_at = self.clock.monotonic()
            self._lost = True
            if self._lost_event is not None:
                self._lost_event.set()
        log.warning("%s (fence %d) lost: %s", self.describe(), self.fence, reason)
        if self._on_expired is not None:
            self._on_expired(self, reason)
        if self._on_lost is not None:
            self._notify()
        return True

    def _notify(self) -> None:
        assert self._on_lost is not None
        what = f"on_lost callback of {self.describe()}"
        if self._dispatcher is None:
            log.error("%s not run: no dispatcher", what)
            return
        try:
            self._dispatcher.submit(self._on_lost, self, description=what)
        except DispatcherStoppedError:
            log.warning("%s not run: the dispatcher is stopping", what)

    def confirm(self, sent_at: float, hold: float) -> bool:
        """A renewal sent at ``sent_at`` succeeded: the lease is held until ``sent_at + hold``.

        Only a request sent after the last one confirmed moves the deadline.

        Returns:
            False when the lease is already lost, or its deadline passed before
            this was known (the belief had ended: it is not revived).
        """
        with self._mutex:
            if self._lost or self.clock.monotonic() >= self.valid_until:
                return False
            if sent_at > self._last_sent:
                self._last_sent = sent_at
                self.valid_until = sent_at + hold
            return True

    def cap(self, sent_at: float, hold: float) -> None:
        """A request sent at ``sent_at`` may have shortened the lease to ``hold``: never count on more."""
        with self._mutex:
            self.valid_until = min(self.valid_until, sent_at + hold)

    # -- the renewal schedule ------------------------------------------------

    @property
    def last_sent(self) -> float:
        """When the last request confirmed was sent (on the clock)."""
        return self._last_sent

    def renew_at(self, early: float = 0.0) -> float:
        """When the next renewal is due, ``early`` intervals sooner."""
        return self._last_sent + self.renew_every * (1.0 - early)

    def next_check(self) -> float:
        """When a watch must look at this lease next: its renewal (if it renews it) or its deadline."""
        return min(self.valid_until, self.renew_at()) if self.auto_renew else self.valid_until

    def describe(self) -> str:
        """How log lines name this lease."""
        return f"lease {self.name!r}"

    def __repr__(self) -> str:
        state = "released" if self.released else "lost" if self._lost else "held"
        return f"<{type(self).__name__} {self.name!r} fence={self.fence} {state}>"


class FenceFloors:
    """Per name, the highest fence this process was given and the longest hold it asked for.

    After Redis lost its data a counter may restart below fences still in use;
    a holder that remembers its floor notices (the scripts compare it to the
    counter) and never takes a fence at or below it. Bounded: the oldest name
    is forgotten past ``limit`` (that name then has no floor, a documented limit).

    Args:
        limit: How many names are remembered.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._floors: dict[str, tuple[int, int]] = {}

    def get(self, name: str) -> tuple[int, int]:
        """``(highest fence, longest hold in ms)`` for ``name``; ``(0, 0)`` when unknown."""
        return self._floors.get(name, (0, 0))

    def raise_to(self, name: str, fence: int, hold_ms: int = 0) -> None:
        """Remember ``fence`` and ``hold_ms`` for ``name`` (a floor never goes down)."""
        with self._lock:
            floors = self._floors
            if len(floors) >= self.limit and name not in floors:
                del floors[next(iter(floors))]
            floor, longest = floors.get(name, (0, 0))
            floors[name] = (max(floor, fence), max(longest, hold_ms))

    def after_fork(self) -> None:
        """In a forked child: a fresh mutex (a parent's thread may have held it); the floors stay true."""
        self._lock = threading.Lock()
