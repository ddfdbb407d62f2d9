"""Distributed locks with fencing tokens, automatic renewal and fair waiting.

A Redis lock gives efficiency, not perfect safety. A process can pause (GC, swap,
SIGSTOP) or Redis can lose its data after the lock was checked and before the
protected work is done, so two holders can overlap. For correctness the protected
resource must check ``lease.fence``: it is strictly increasing per lock name, so
the resource rejects any write carrying a fence lower than one it has seen.

Keys: the lock is the string ``{instance}lock:{name}`` holding the lease's token;
its fence counter is ``{instance}lock:{name}:fence`` and never expires (run Redis
with ``noeviction`` or a ``volatile-*`` policy so it is not evicted). Waiters
queue under ``{instance}tq:lock-*:{name}`` and are woken in FIFO order when the
lock is released. A waiter also re-checks every ``WAITER_POLL`` seconds, to notice
a holder that crashed and whose key expired. A waiter that dies in line delays
the others by at most ``DEAD_WAITER_STALL_BOUND`` (2.5 s).

Fences after Redis lost its data (a restart without persistence, a failover to
a replica that missed writes): each process remembers, per lock name, the
highest fence it was given and the longest ttl it used. An acquisition that finds
the counter at or below that fence knows the counter was lost, and that a holder
from before the loss may still be renewing with any fence up to the lost value.
So it grants nothing yet: it raises the counter to the fence it remembers and
parks ``RECOVERING`` in the lock key for the longest ttl, during which the
surviving holder's next renewal re-establishes its lease over it and raises the
counter to its own fence. Only a lease whose fence is at least the counter can:
one with a lower fence is stale (its key had expired before the loss, and a
later holder got a higher fence) and learns it lost the lock. The lock is
granted, with a higher fence, once that holder releases it or the hold-back ends
(waiters keep their place, the one whose turn it was at the front). Limits:

- A process that never held the lock (or restarted since) has no floor: its
  first acquisition after the loss starts the counter again, possibly at a fence
  a surviving holder still uses. So does any process once the lock name dropped
  out of the 4096 names it remembers.
- A surviving holder with a longer ttl than the acquirer has used, whose
  renewal does not reach Redis within the hold-back, can still share its fence
  with the next holder: use one ttl per lock name.
- A loss that leaves the counter above the acquirer's floor (Redis restored from
  an older snapshot) is not detected.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis

from tickerq._redis.keys import Keys
from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import Dispatcher
from tickerq._runtime.lease import FenceFloors
from tickerq.durations import Duration, to_milliseconds
from tickerq.errors import LockError, LockLostError, LockTimeoutError, ShutdownError, TickerQError
from tickerq.locks.lease import LOST, RENEW, Lease, LockKeys, Renewal, renew_arguments
from tickerq.locks.lock_calls import ACQUIRE, RELEASE, LockCalls, LockCommands, pack
from tickerq.locks.lock_handle import DEFAULT_TTL, MIN_TTL, Lock
from tickerq.locks.watchdog import Watchdog

__all__ = [
    "ACQUIRE", "DEAD_WAITER_STALL_BOUND", "DEFAULT_TTL", "MIN_TTL", "RECOVERING", "RELEASE", "Lease", "Lock",
    "LockKeys", "LockManager",
]  # fmt: skip

log = logging.getLogger(__name__)

#: A waiter re-checks the lock (and refreshes its place in line) at least this often, in seconds.
WAITER_POLL = 0.5
#: A waiter that stops refreshing loses its place in line after this long.
WAITER_LIVENESS = 1.5
#: A waiter given the turn must take the free lock within this long, or the turn moves on.
TURN_TIMEOUT = 0.5
#: The longest a waiter that died in line can keep a free lock from the next live waiter: it may
#: still get the turn until its place expires, the turn lapses, then the next waiter polls.
DEAD_WAITER_STALL_BOUND = WAITER_LIVENESS + TURN_TIMEOUT + WAITER_POLL
_MAX_FLOORS = 4096  # lock names whose highest fence and longest ttl this process remembers
#: The lock key's value while an acquisition after a data loss holds the lock back (never a token).
RECOVERING = "tickerq:recovering-after-data-loss"


class LockManager:
    """Makes locks for one node and runs their watchdog (a deadline thread and a renewer thread).

    A Redis lock gives efficiency, not perfect safety: for correctness the
    protected resource must check ``lease.fence`` (see the module docstring).

    A waiting thread holds one connection of ``client`` while it blocks (at most
    ``WAITER_POLL`` seconds at a time), so size its pool for concurrent waiters.

    Args:
        client: Used to acquire, wait and release (not closed here). Each call gives up
            after its socket timeout; a pool without retries keeps new connections to
            that bound too (redis-py retries a connect's handshake), as the container's
            ``fail_fast`` pool does.
        watchdog_client: A client on its own small pool without retries, used only
            for renewals so application traffic cannot starve them (not closed here).
        keys: Key names for this instance.
        owner: This node's id; tokens are ``{owner}:{random}`` for debuggability.
        retries: How often a call retries a connection error, within its time bound
            (default: as often as ``client``'s ``Retry`` says).
        dispatcher: Where ``on_lost`` callbacks run (a shared one is not stopped by
            :meth:`close`). Default: one of the manager's own, whose one thread,
            ``tickerq-lock-lost-1``, starts with the first callback.
        clock: Where leases and the watchdog take time from (deadlines, renewals).
    """

    def __init__(
        self, client: redis.Redis, watchdog_client: redis.Redis, keys: Keys, owner: str, *,
        retries: int | None = None, dispatcher: Dispatcher | None = None, clock: Clock = SYSTEM_CLOCK,
    ) -> None:  # fmt: skip
        self.keys = keys
        self.owner = owner
        self.clock = clock
        self.watchdog = Watchdog(watchdog_client, on_resurrected=self._delete_key, clock=clock)
        self._own_dispatcher = dispatcher is None
        self.dispatcher = dispatcher if dispatcher is not None else Dispatcher("tickerq-lock-lost")
        self._client = client
        self._calls = LockCalls(client, retries, closed=lambda: self.watchdog.closed)
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._floors = FenceFloors(_MAX_FLOORS)  # name: (highest fence, longest ttl ms)
        self._commands_by_name: dict[str, LockCommands] = {}
        self._reentrant: dict[tuple[int, str, int], Lease] = {}
        timeout = self._calls.timeout
        # A BLPOP must return before the client's socket timeout would call it a failure.
        self._max_block = max(0.01, min(WAITER_POLL, timeout / 2)) if timeout else WAITER_POLL

    def lock(
        self, name: str, ttl: Duration = DEFAULT_TTL, *, blocking: bool = True,
        wait_timeout: Duration | None = None, auto_renew: bool = True,
        on_lost: Callable[[Lease], None] | None = None, reentrant: bool = False,
    ) -> Lock:  # fmt: skip
        """A lock named ``name`` (no I/O until it is acquired).

        Args:
            name: The lock's name (key ``{instance}lock:{name}``).
            ttl: How long the lock outlives its last renewal; a timedelta or seconds,
                at least :data:`MIN_TTL` (0.1 s).
            blocking: Wait in line while it is taken; otherwise fail at once.
            wait_timeout: Longest wait when blocking; None waits forever. It bounds the
                whole ``acquire()``, with at most one ``sync_timeout`` more while Redis hangs.
            auto_renew: Renew every ttl/3 from the watchdog thread until released. Without
                it the lease is declared lost when its ttl runs out, unless extended.
            on_lost: Called once with the lease when it is lost, on the manager's dispatcher
                (never on the watchdog's threads).
            reentrant: The thread that holds the lease may acquire it again (counted).

        Raises:
            ConfigurationError: ``ttl`` below :data:`MIN_TTL`, ``wait_timeout < 0``, or a
                ``wait_timeout`` with ``blocking=False``.
            InvalidKeyError: ``name`` is empty or not a string.
        """
        return Lock(
            self, name, ttl=ttl, blocking=blocking, wait_timeout=wait_timeout,
            auto_renew=auto_renew, on_lost=on_lost, reentrant=reentrant,
        )  # fmt: skip

    def close(self, timeout: float = 1.0) -> None:
        """Stop the watchdog's threads and release waiting callers; safe twice.

        Leases still held are no longer renewed or watched (``ensure_held()`` still
        checks their deadline), a thread waiting in ``acquire()`` raises
        :class:`~tickerq.errors.ShutdownError` at once, and new acquisitions raise
        :class:`LockError`. The same as :meth:`request_stop` then :meth:`wait_stopped`.
        """
        self.request_stop()
        self.wait_stopped(time.monotonic() + timeout)

    def request_stop(self) -> None:
        """Stop renewing and watching, and release waiting callers; returns at once."""
        self.watchdog.request_stop()
        # Wake the waiters: a BLPOP in flight fails when its connection is closed,
        # and the loop then sees that the manager is closed.
        self._client.connection_pool.disconnect()
        if self._own_dispatcher:
            self.dispatcher.request_stop()  # on_lost callbacks already queued still run

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the watchdog's threads (and the manager's own dispatcher) until ``deadline``.

        Returns:
            Whether they all ended by ``deadline`` (``time.monotonic()``).
        """
        ended = self.watchdog.wait_stopped(deadline)
        if self._own_dispatcher:
            ended = self.dispatcher.wait_stopped(deadline) and ended
        return ended

    def _acquire(self, lock: Lock) -> Lease:
        """Acquire ``lock`` for its Lock object; see :meth:`Lock.acquire`."""
        pid = os.getpid()
        if self._pid != pid:  # forked: the parent's bookkeeping (and its mutex) are not ours
            self._pid, self._mutex, self._reentrant = pid, threading.Lock(), {}
            self._floors.after_fork()
        if self.watchdog.closed:
            raise LockError(f"cannot acquire {lock.name!r}: the lock manager is closed")
        if lock.reentrant:
            with self._mutex:
                owned = self._reentrant.get((pid, lock.name, threading.get_ident()))
            if owned is not None and owned.try_join():  # False: released meanwhile, acquire afresh
                return owned
        started = time.monotonic()  # the call's bounds count in real time, as sockets do
        name, blocking, commands, calls = lock.name, lock.blocking, lock._commands, self._calls
        token = f"{self.owner}:{os.urandom(10).hex()}"
        raw_token = calls.encode(token)
        # The time bounds (see Lock.acquire): ``ends`` for the whole call, ``let_go_by`` for the
        # cleanup after a failure. None: each call is bounded by the client's socket timeout only.
        timeout = calls.timeout
        wait = None if lock.wait_timeout is None else lock.wait_timeout.total_seconds()
        wait_ends = None if wait is None else started + wait
        ends = None if wait_ends is None or timeout is None else wait_ends + timeout
        let_go_by = ends if blocking else None if timeout is None else started + timeout
        ttl_ms = to_milliseconds(lock.ttl)
        floor, floor_ttl_ms = self._floors.get(name)
        command = commands.acquire(raw_token, ttl_ms, blocking, floor, max(ttl_ms, floor_ttl_ms))
        try:
            while True:
                sent_at = self.clock.monotonic()
                reply = calls.run(name, command, ACQUIRE, ends)
                if reply[0]:
                    break
                if not blocking:
                    raise LockTimeoutError(f"lock {name!r} is {_describe(reply)}, and blocking=False")
                remaining = self._max_block if wait_ends is None else wait_ends - time.monotonic()
                if remaining <= 0:
                    raise LockTimeoutError(f"lock {name!r} not acquired within wait_timeout={wait} s")
                self._wait_turn(name, commands.keys.wake_prefix + token, remaining, ends)
        except ShutdownError:
            raise  # the pools are closing: the place in line expires after WAITER_LIVENESS
        except BaseException as exc:
            # Only a non-blocking "taken" reply is known to have changed nothing.
            if blocking or not isinstance(exc, LockTimeoutError):
                self._let_go(lock, raw_token, let_go_by)
            raise
        lease = Lease(
            name=name, token=token, fence=int(reply[1]), ttl=lock.ttl, keys=commands.keys,
            auto_renew=lock.auto_renew, on_lost=lock.on_lost, sent_at=sent_at, pid=pid, clock=self.clock,
            dispatcher=self.dispatcher,
        )  # fmt: skip
        self._remember(lock, lease, ttl_ms)
        if not self.watchdog.register(lease):
            self._release(lease)
            raise LockError(
                f"lock {name!r}: the lock manager is closed: no new lease can be watched", name=name
            )
        return lease

    def _wait_turn(self, name: str, wake_key: str, remaining: float, ends: float | None) -> None:
        """Block until woken for our turn (BLPOP on our wake list), at most ``remaining`` s."""
        self._raise_if_closed(name)
        block = max(0.01, min(self._max_block, remaining))
        try:
            self._calls.run(name, pack(self._calls.encoder, "BLPOP", wake_key, block), None, ends)
        except TickerQError:
            self._raise_if_closed(name)  # close() broke the connection under us
            raise

    def _raise_if_closed(self, name: str) -> None:
        if self.watchdog.closed:
            raise ShutdownError(
                f"lock {name!r} was not acquired: shutdown_resources() stopped the lock manager",
                operation="lock acquire",
                name=name,
            )

    def _let_go(self, lock: Lock, token: bytes, by: float | None) -> None:
        """After a failed acquire: leave the line, and let go if a reply we never got was a success.

        Done only while time is left before ``by``. A timed-out acquire may also still
        be on its way to Redis and run after this release. Either way a lock it took
        expires after one ttl, unrenewed, and a place in line after ``WAITER_LIVENESS``.
        """
        if by is not None and time.monotonic() >= by:
            log.warning(
                "lock %r: no time left to let go after a failed acquire; if it took the lock, "
                "the key expires within its ttl",
                lock.name,
            )
            return
        try:
            self._calls.run(
                lock.name, lock._commands.release(token, token if lock.blocking else b"", 0), RELEASE, by
            )
        except (TickerQError, redis.RedisError) as exc:
            log.warning("could not let go of lock %r after a failed acquire: %s", lock.name, exc)

    def _remember(self, lock: Lock, lease: Lease, ttl_ms: int) -> None:
        """Record the floor (highest fence, longest ttl) for ``lock``'s name, and a reentrant owner."""
        self._floors.raise_to(lock.name, lease.fence, ttl_ms)
        if lock.reentrant:
            with self._mutex:
                self._reentrant[(lease.pid, lock.name, lease.owner_thread)] = lease

    def _release(self, lease: Lease) -> bool:
        """Release one acquisition of ``lease``; see :meth:`Lock.release`."""
        if lease.pid != os.getpid():
            raise LockError(
                f"lock {lease.name!r} was acquired by process {lease.pid}; a fork cannot release it"
            )
        lease.check_deadline()
        if not lease.drop():
            return not lease.is_lost
        self.watchdog.unregister(lease)
        if self._reentrant:  # empty unless reentrant locks were taken: no mutex on the common path
            with self._mutex:
                key = (lease.pid, lease.name, lease.owner_thread)
                if self._reentrant.get(key) is lease:
                    del self._reentrant[key]
        code = self._calls.run(lease.name, self._release_command(lease), RELEASE)
        # 2: the key was already gone and nobody took it since, e.g. our retried call.
        return code in (1, 2) and not lease.is_lost

    def _extend(self, lease: Lease, ttl: timedelta | None) -> None:
        """Set ``lease``'s remaining time to ``ttl`` (default its ttl); see :meth:`Lock.extend`."""
        if lease.pid != os.getpid():
            raise LockError(
                f"lock {lease.name!r} was acquired by process {lease.pid}; a fork cannot extend it"
            )
        lease.ensure_held()
        # One renewal of a lease at a time: Redis then applies them in the order they were
        # sent, so the ttl of the last one confirmed is the ttl Redis holds.
        if not lease.renewing.acquire(timeout=max(0.0, lease.valid_until - self.clock.monotonic())):
            lease.ensure_held()  # the deadline passed while the watchdog's renewal was in flight
            raise LockLostError(f"lock {lease.name!r} (fence {lease.fence}) could not be extended in time")
        try:
            lease.ensure_held()
            renewal = Renewal.of(lease, ttl)
            keys, args = renew_arguments([renewal])
            command = pack(self._calls.encoder, "EVALSHA", RENEW.sha, len(keys), *keys, *args)
            sent_at = self.clock.monotonic()
            lease.cap(sent_at, renewal.hold)  # if the reply is lost, Redis may hold the shorter ttl
            if self._calls.run(lease.name, command, RENEW)[0] == LOST:
                lease.declare_lost("extend found the lock gone or held by another owner")
                lease.ensure_held()
            if ttl is not None:
                lease.set_ttl(ttl)
            lease.confirm(sent_at, renewal.hold)
            # The watchdog may have declared it lost (its deadline passed) while the call was in
            # flight: once lost, a lease stays lost, whatever Redis answered.
            lease.ensure_held()
        finally:
            lease.renewing.release()
        self.watchdog.poke()

    def _delete_key(self, lease: Lease) -> Any:
        return self._calls.run(lease.name, self._release_command(lease), RELEASE)

    def _release_command(self, lease: Lease) -> bytes:
        return self._commands(lease.name).release(self._calls.encode(lease.token), b"", lease.fence)

    def _commands(self, name: str) -> LockCommands:
        """The packed commands for lock ``name`` (built once per name, as its key strings are)."""
        commands = self._commands_by_name.get(name)
        if commands is None:
            if len(self._commands_by_name) >= _MAX_FLOORS:
                self._commands_by_name.clear()
            keys = LockKeys.build(self.keys, name)
            commands = LockCommands.build(
                self._calls.encoder, keys, int(WAITER_LIVENESS * 1000), int(TURN_TIMEOUT * 1000)
            )
            self._commands_by_name[name] = commands
        return commands


def _describe(reply: list[Any]) -> str:
    """Why an acquire reply ``{0, pttl, recovering}`` did not grant the lock."""
    pttl = int(reply[1])
    if len(reply) > 2 and reply[2]:
        return f"held back for {pttl / 1000:.1f} s more after Redis lost its data (see RECOVERING)"
    if pttl == -2:
        return "free but promised to a queued waiter"
    if pttl == -1:
        return "held with no expiry"
    return f"held by another owner for {pttl / 1000:.1f} s more"
