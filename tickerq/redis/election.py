"""Leader election: one node at a time leads, on a Kubernetes-style lease in Redis.

The lease and its scripts are in :mod:`tickerq.redis.election_lease`, the
leadership state and its deadline timer in
:mod:`tickerq.redis.election_leadership`. The term increases at every new
leadership so it can be passed on as a fence.

Why at most one node believes it leads: a renewal sets the TTL when Redis runs
it, after the request was sent; the leader believes it leads only until
``renew_deadline`` after sending its last successful renewal, by its monotonic
clock. Since ``renew_deadline < lease``, its belief ends before the lease can
lapse in Redis and another node can take it (the difference absorbs clock-rate
drift and scheduling delays). ``is_leader`` checks that clock itself, and a
timer thread of each leadership sets ``stop_event`` at that deadline, so both
end on time whatever the election thread is waiting on (a Redis call that
hangs). ``on_demoted`` and ``LeadershipLost`` are queued at that moment and
delivered once the callbacks queued before them have returned.

Limit, Redis losing its data: after a restart without persistence, or a
failover to a replica that had not caught up, the term counter may restart.
A node that never saw the old terms can then be elected at term 1 while the
old leader still believes it leads, say, term 5: both believe they lead until
the old leader's next renewal, at most one retry period later (or until its
renew deadline, if it cannot reach Redis). That renewal finds the lower term,
demotes the old leader and keeps the lease vacant for one lease, so the new
leader demotes at its own next renewal, and the terms go on above 5; a
resource that checks the term as a fence rejects the lower term meanwhile. A
candidate that saw the old terms notices the loss itself and keeps the lease
vacant before anyone is elected. Where strict fencing matters, run Redis with
persistence: ``appendonly yes``, with ``appendfsync always`` to lose no
acknowledged write.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TypeVar

import redis

from tickerq.durations import Duration, to_milliseconds
from tickerq.errors import KeyTypeError, RedisUnavailableError
from tickerq.events import (
    EventHub,
    LeaderChanged,
    LeadershipAcquired,
    LeadershipLost,
    RedisConnectionLost,
    RedisConnectionRestored,
)
from tickerq.redis.callbacks import CallbackThread
from tickerq.redis.connection import ClientSource, DerivedClients
from tickerq.redis.election_leadership import Leadership
from tickerq.redis.election_lease import ElectionLease, LeaseReply, LeaseTimings, Status
from tickerq.redis.election_timings import DEFAULT_LEASE, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD
from tickerq.redis.keys import Keys, check_user_key
from tickerq.redis.outage import OutageTracker

__all__ = ["LeaderElection"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The election thread's Redis calls give up after min(retry_period, this), so it
#: stays responsive and ``stop()`` stays fast even while Redis hangs. It is also
#: stopping's budget: the final release must be answered within it, counted from
#: ``request_stop()``, or the lease is left to lapse.
_MAX_CALL_TIMEOUT = 0.5

#: How long ``stop()`` and ``stop_all()`` wait for the threads by default (s).
_STOP_TIMEOUT = 2.0


class LeaderElection:
    """Campaign for, hold and hand over the leadership of ``name`` among the nodes.

    Created by ``RedisContext.leader_election(name, ...)``. Until :meth:`start`
    it only observes: :meth:`leader` reads Redis and it never campaigns. After
    it, a daemon thread ``tickerq-election-{name}`` campaigns every
    ``retry_period`` (a candidate whose current leader's lease is about to lapse
    tries again just after it lapses) and, while leading, renews every
    ``retry_period``. While this node leads, a daemon thread
    ``tickerq-election-{name}-deadline`` ends the leadership at its renew
    deadline, even while the election thread waits on Redis.

    :meth:`stop` resigns and ends the threads. To stop several elections at
    once, :meth:`request_stop` each (no waiting), then :meth:`wait_stopped`
    each against one deadline, or use :meth:`stop_all`.

    Callbacks and events run in order on a daemon thread of their own,
    ``tickerq-election-{name}-callbacks``, never on the renewing thread; one
    that raises is logged. A long ``on_elected`` (one that works until
    ``stop_event`` is set) delays what is queued after it, but not
    ``stop_event``, which is set on time.

    The election thread uses a small pool of its own that connects like
    ``client`` but gives up a call after ``min(retry_period, 0.5 s)`` and never
    retries (the election retries on its own schedule); ``client`` itself is
    used for :meth:`leader` and never closed.

    Args:
        client: A redis-py client; its pool's settings are copied.
        keys: Key names for this instance.
        node_id: This node's id, stored as the leader's name.
        name: The election's name (part of the key).
        lease: How long a lease lives in Redis without renewal.
        renew_deadline: The leader demotes itself when it could not renew for
            this long (from sending the last successful renewal).
        retry_period: Time between attempts to acquire or renew.
        on_elected: ``on_elected(term, stop_event)`` when this node becomes
            leader; ``stop_event`` is set when that leadership ends, at the
            latest at its renew deadline.
        on_demoted: ``on_demoted(term)`` when the leadership of ``term`` ends
            (resigned, stopped, deadline passed or lease taken).
        on_new_leader: ``on_new_leader(node_id)`` when this node observes a new
            leadership: another node, itself, or ``None`` when the lease is seen
            vacant. Reported as seen at each attempt, nothing during outages.
        clients: Where the election's own pool comes from; pass the
            connections' owner so that the pool follows a master failover.
            Default: a pool copied from ``client``'s.
        events: Where ``LeadershipAcquired``, ``LeadershipLost``,
            ``LeaderChanged``, ``RedisConnectionLost`` and
            ``RedisConnectionRestored`` are published, on the callback thread,
            in order with the callbacks.

    Raises:
        ConfigurationError: A duration is invalid, or not
            ``lease > renew_deadline > 1.2 x retry_period``.
        InvalidKeyError: ``name`` or ``node_id`` is empty.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        node_id: str,
        name: str,
        *,
        lease: Duration = DEFAULT_LEASE,
        renew_deadline: Duration = DEFAULT_RENEW_DEADLINE,
        retry_period: Duration = DEFAULT_RETRY_PERIOD,
        on_elected: Callable[[int, threading.Event], None] | None = None,
        on_demoted: Callable[[int], None] | None = None,
        on_new_leader: Callable[[str | None], None] | None = None,
        events: EventHub | None = None,
        clients: ClientSource | None = None,
    ) -> None:
        check_user_key("node_id", node_id)
        check_user_key("name", name)
        self.name = name
        self.node_id = node_id
        timings = LeaseTimings(lease=lease, renew_deadline=renew_deadline, retry_period=retry_period)
        self.lease, self.renew_deadline, self.retry_period = (
            timings.lease,
            timings.renew_deadline,
            timings.retry_period,
        )
        self._ops = ElectionLease(keys, name, node_id, to_milliseconds(self.lease))
        self._deadline_s = self.renew_deadline.total_seconds()
        self._retry_s = self.retry_period.total_seconds()
        self._call_timeout = min(self._retry_s, _MAX_CALL_TIMEOUT)
        self._client = client
        self._clients = clients if clients is not None else DerivedClients(client)
        self._on_elected = on_elected
        self._on_demoted = on_demoted
        self._on_new_leader = on_new_leader
        self._events = events
        self._outage = OutageTracker(f"election {name!r}", log)  # its events are published here, queued
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        """Fresh state for a start (also in a forked child, whose locks may be held)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._leadership = Leadership(self.name, self._deadline_s, self._stop, self._began, self._ended)
        self._callbacks: CallbackThread | None = None
        self._redis: redis.Redis | None = None
        self._token = uuid.uuid4().hex  # one per leadership: an ended one is never resumed
        self._token_sent = False  # whether the token may hold the lease
        self._release_by = 0.0  # once stopping: the final release must be answered by then (monotonic)
        self._failed_stopping = False  # a call failed after stop was requested: Redis is unreachable
        self._step_back_until = 0.0
        self._observed: tuple[str | None, int] | None = None
        self._max_term = 0
        self._corrupt_reported = False
        self._outage_since = 0.0

    # -- public API --------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True from start() to stop() in the process that started it (False in a forked child)."""
        thread = self._thread
        return (
            self._pid == os.getpid() and thread is not None and thread.is_alive() and not self._stop.is_set()
        )

    @property
    def is_leader(self) -> bool:
        """True while this node leads: checked against the renew deadline on every call."""
        return self.term is not None

    @property
    def term(self) -> int | None:
        """The term of this node's leadership (pass it on as a fence), or None when not leading."""
        if self._pid != os.getpid():
            return None  # a forked child: checked first, as the parent's lock may be held forever
        return self._leadership.term

    def leader(self) -> str | None:
        """The current leader's node id as Redis has it, or None (one round trip).

        Raises:
            RedisUnavailableError: Redis did not answer.
            KeyTypeError: The lease key holds something tickerq did not write.
        """
        try:
            reply = self._ops.read(self._client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailableError(
                f"could not read the leader of election {self.name!r}: {exc}"
            ) from exc
        if reply.status == Status.CORRUPT:
            raise KeyTypeError(
                f"{self._ops.key!r} holds a {reply.holder}, not an election lease "
                "(a hash with node, token and term written by tickerq)"
            )
        return reply.holder if reply.status == Status.HELD else None

    def start(self) -> None:
        """Start campaigning (no I/O on the caller's thread). Safe to call again.

        In a child forked after start, this starts afresh: the parent's
        leadership and threads are not the child's.
        """
        if self.running:
            return
        previous = self._thread
        if previous is not None and self._pid == os.getpid() and previous is not threading.current_thread():
            previous.join()  # after a stop() that timed out: the old thread must not see the new state
        self._pid = os.getpid()
        self._reset()
        self._redis = self._clients.derive_client(2, self._call_timeout)
        self._callbacks = CallbackThread(f"tickerq-election-{self.name}-callbacks")
        self._thread = threading.Thread(target=self._run, name=f"tickerq-election-{self.name}", daemon=True)
        self._thread.start()

    def resign(self) -> None:
        """Stop leading at once and step back for one ``lease`` so another node takes over.

        ``is_leader`` is False when this returns; the election thread deletes
        the lease (if still ours) within one round trip. Without a lead it
        still steps back. Does nothing unless started in this process.
        """
        if not self.running:
            return
        self._leadership.end("resigned", resign=True)
        self._wake.set()

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Resign, end the threads and close the election's pool. Safe to call twice.

        The same as :meth:`request_stop` then :meth:`wait_stopped`. Returns
        within a round trip or two when Redis answers, and within one call
        timeout (``min(retry_period, 0.5 s)``) when it hangs. In a forked
        child it does nothing.

        Args:
            timeout: How long to wait for the threads (a callback that ignores
                ``stop_event`` can keep its thread busy; that is logged).
        """
        self.request_stop()
        self.wait_stopped(timeout)

    def request_stop(self) -> None:
        """Begin stopping and return at once (no I/O, no waiting). Safe to call twice.

        The leadership ends now: ``is_leader`` is False, ``stop_event`` is set
        and ``on_demoted`` is queued. The election thread is woken: once its
        call in flight (if any) returns, it releases the lease, so another
        node can take over at once, and ends. That release is skipped when
        Redis failed at that call, and given up when no answer came within one
        call timeout of this request: the lease then lapses by itself. Does
        nothing unless started in this process; :meth:`wait_stopped` waits for
        the threads.
        """
        if self._thread is None or self._pid != os.getpid() or self._stop.is_set():
            return
        self._release_by = time.monotonic() + self._call_timeout  # before _stop: the thread reads it then
        self._stop.set()
        self._wake.set()
        self._leadership.end("stopped")

    def wait_stopped(self, timeout: float = _STOP_TIMEOUT) -> bool:
        """Wait for the threads after :meth:`request_stop`, then close the election's pool.

        Runs the callbacks queued until then (``on_demoted`` among them).
        Safe to call twice; one that timed out may be called again.

        Args:
            timeout: How long to wait, in all (a callback that ignores
                ``stop_event`` can keep its thread busy; that is logged).

        Returns:
            Whether every thread ended in time: True at once when never
            started in this process; False at once when running and
            :meth:`request_stop` was not called.
        """
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return True
        if not self._stop.is_set():
            return False
        ends = time.monotonic() + timeout
        current = threading.current_thread()
        if thread is not current:
            thread.join(timeout)
        timer = self._leadership.timer  # read after the join: the election thread is what assigns it
        if timer is not None and timer is not current:
            timer.join(max(0.0, ends - time.monotonic()))
        ended = not thread.is_alive() and (timer is None or not timer.is_alive())
        if not ended:
            log.warning("election %r: thread did not end within %.1f s", self.name, timeout)
        callbacks, client = self._callbacks, self._redis
        if callbacks is not None and not callbacks.close(max(0.0, ends - time.monotonic())):
            log.warning("election %r: a callback was still running when stop() returned", self.name)
            ended = False
        if client is not None:
            self._clients.release_client(client)
        return ended

    @staticmethod
    def stop_all(elections: Iterable[LeaderElection], timeout: float = _STOP_TIMEOUT) -> bool:
        """Stop several elections together: all are told to stop first, then waited for by one deadline.

        So this takes as long as the slowest of them, not their sum: within
        one call timeout when Redis hangs, however many there are.

        Returns:
            Whether every election's threads ended within ``timeout``.
        """
        elections = list(elections)
        for election in elections:
            election.request_stop()
        ends = time.monotonic() + timeout
        ended = [election.wait_stopped(max(0.0, ends - time.monotonic())) for election in elections]
        return all(ended)  # every one waited for, even after one timed out

    # -- the election thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                # Cleared before _stop is read: a stop() from here on is either seen
                # now or sets _wake again, which ends the wait below at once.
                self._wake.clear()
                if self._stop.is_set():
                    break
                try:
                    delay = self._step()
                except Exception:
                    log.exception("election %r: unexpected error; retrying", self.name)
                    delay = self._retry_s
                self._wake.wait(delay)
        finally:
            self._leadership.end("stopped")
            self._release()

    def _step(self) -> float:
        """One attempt; returns how long to wait before the next."""
        resigning, releasing, leading = self._leadership.take_requests()
        if resigning or releasing:
            self._release()  # a leadership ended (resigned, deadline passed): its lease goes too
            if resigning:
                self._step_back_until = time.monotonic() + self.lease.total_seconds()
            return 0.0
        if leading:
            return self._renew()
        remaining = self._step_back_until - time.monotonic()
        if remaining > 0:
            reply = self._call(self._ops.read)
            if reply is not None:
                self._report(reply)
            return min(self._retry_s, remaining)
        return self._campaign()

    def _campaign(self) -> float:
        sent = time.monotonic()
        token, seen = self._token, self._max_term
        self._token_sent = True
        reply = self._call(lambda client: self._ops.acquire(client, token, seen))
        if reply is None:
            return self._retry_s
        if reply.status != Status.OURS:
            self._token_sent = False  # the script saw the lease is not ours: nothing to release
            self._report(reply)
            return self._until_lapse(reply.pttl_ms)
        if not self._leadership.begin(reply.term, sent):
            self._release()  # resign() or stop() came meanwhile, or the reply came too late
            return 0.0
        return self._retry_s

    def _renew(self) -> float:
        term, deadline = self._leadership.current()
        sent = time.monotonic()
        if term is None:
            return 0.0
        if sent >= deadline:
            self._leadership.end("renew deadline passed")  # normally the deadline timer has done it
            return 0.0
        token = self._token
        reply = self._call(lambda client: self._ops.renew(client, token, term))
        if reply is None:
            return max(0.0, min(self._retry_s, deadline - time.monotonic()))
        if reply.status == Status.OURS:
            if self._leadership.extend(term, sent):
                return self._retry_s
            # The deadline passed while we waited (is_leader was already False), or the
            # leadership ended on another thread meanwhile; the next step releases the lease.
            self._leadership.end("renewed only after the renew deadline")
            return 0.0
        self._leadership.end(reply.loss_reason)
        self._token, self._token_sent = uuid.uuid4().hex, False  # the lease is not ours to release
        self._report(reply)
        return self._until_lapse(reply.pttl_ms)

    def _began(self, term: int, stop_event: threading.Event) -> None:
        """A leadership began (called by ``Leadership``, on the election thread): queue its news."""
        log.info("election %r: %s is the leader, term %d", self.name, self.node_id, term)
        self._observe(self.node_id, term)
        self._publish(LeadershipAcquired(election=self.name, node=self.node_id, term=term))
        self._submit(self._on_elected, term, stop_event)

    def _ended(self, term: int, reason: str) -> None:
        """A leadership ended (called by ``Leadership``, on any thread): queue its news."""
        log.info("election %r: %s no longer leads term %d: %s", self.name, self.node_id, term, reason)
        self._publish(LeadershipLost(election=self.name, node=self.node_id, term=term, reason=reason))
        self._submit(self._on_demoted, term)

    def _release(self) -> None:
        """Delete the lease if our token may hold it; never use that token again.

        Once stopping, skipped when Redis failed at the last call (it is
        unreachable: the lease lapses by itself), else bounded by what is left
        of stopping's budget (see ``request_stop``).
        """
        token, sent = self._token, self._token_sent
        self._token, self._token_sent = uuid.uuid4().hex, False
        if not sent:
            return
        timeout: float | None = None
        if self._stop.is_set():
            timeout = self._release_by - time.monotonic()
            if self._outage.in_outage or self._failed_stopping or timeout <= 0:
                log.debug("election %r: stopping, Redis not answering; the lease will lapse", self.name)
                return
        released = self._call(lambda client: self._ops.release(client, token, timeout))
        if released and self._observed is not None:
            self._observe(None, self._observed[1])

    def _report(self, reply: LeaseReply) -> None:
        if reply.status != Status.CORRUPT:
            self._corrupt_reported = False
            self._observe(
                reply.holder, max(self._max_term, reply.term) if reply.status == Status.VACANT else reply.term
            )
        elif not self._corrupt_reported:
            self._corrupt_reported = True
            log.warning(
                "election %r: %r holds a %s, not an election lease; it lapses in %d ms and is then replaced",
                self.name, self._ops.key, reply.holder, reply.pttl_ms,
            )  # fmt: skip

    def _observe(self, leader: str | None, term: int) -> None:
        self._max_term = max(self._max_term, term)
        if (leader, term) == self._observed:
            return
        self._observed = (leader, term)
        self._publish(LeaderChanged(election=self.name, leader=leader, term=term))
        self._submit(self._on_new_leader, leader)

    def _until_lapse(self, pttl: int) -> float:
        """Wait one retry period, or less: just past the lapse of a lease about to expire."""
        if 0 <= pttl < self._retry_s * 1000:
            return pttl / 1000 + random.uniform(0.001, 0.01)  # spreads the candidates
        return self._retry_s

    def _call(self, operation: Callable[[redis.Redis], T]) -> T | None:
        """Run ``operation`` on the election's pool; None when Redis failed (logged once per outage)."""
        client = self._redis
        if client is None:
            return None
        try:
            result = operation(client)
        except redis.RedisError as exc:
            if self._stop.is_set():  # the thread ends: no outage to report, nothing retried
                self._failed_stopping = True
                log.info("election %r: no release while stopping (%s); the lease lapses", self.name, exc)
                return None
            if not self._outage.in_outage:
                self._outage_since = time.monotonic()
                self._publish(RedisConnectionLost(source=self._outage.source, error=str(exc)))
            self._outage.failed(exc)
            return None
        if self._outage.in_outage:
            lasted = time.monotonic() - self._outage_since
            self._publish(RedisConnectionRestored(source=self._outage.source, outage_seconds=lasted))
        self._outage.succeeded()
        return result

    def _publish(self, event: object) -> None:
        """Queue ``event`` for the hub: delivered on the callback thread, in order with the callbacks."""
        if self._events is not None:
            self._submit(self._events.publish, event)

    def _submit(self, callback: Callable[..., None] | None, *args: object) -> None:
        callbacks = self._callbacks
        if callback is not None and callbacks is not None:
            callbacks.submit(callback, *args)

    def __enter__(self) -> LeaderElection:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"LeaderElection({self.name!r}, node={self.node_id!r}, running={self.running}, term={self.term})"
        )
