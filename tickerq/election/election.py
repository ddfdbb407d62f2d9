"""Leader election: one node at a time leads, on a Kubernetes-style lease in Redis.

The lease and its scripts are in :mod:`tickerq.election.election_lease`, the
campaign loop (a runtime ``Service``) in :mod:`tickerq.election.election_campaign`,
the leadership state and its deadline watch in
:mod:`tickerq.election.election_leadership`. The term increases at every new
leadership so it can be passed on as a fence.

Why at most one node believes it leads: a renewal sets the TTL when Redis runs
it, after the request was sent; the leader believes it leads only until
``renew_deadline`` after sending its last successful renewal, by its monotonic
clock. Since ``renew_deadline < lease``, its belief ends before the lease can
lapse in Redis and another node can take it (the difference absorbs clock-rate
drift and scheduling delays). ``is_leader`` checks that clock itself, and the
deadline watch (a thread of its own) sets ``stop_event`` at that deadline, so
both end on time whatever the campaign's thread is waiting on (a Redis call
that hangs). ``on_demoted`` and ``LeadershipLost`` are queued at that moment
and delivered once the callbacks queued before them have returned.

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
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType

import redis

from tickerq._redis.connection import ClientSource, DerivedClients
from tickerq._redis.keys import Keys, check_user_key
from tickerq._redis.translate import translate_errors
from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import Dispatcher
from tickerq._runtime.lease import FenceFloors
from tickerq.durations import Duration, to_milliseconds
from tickerq.election.election_campaign import Campaign, Notifications
from tickerq.election.election_lease import ElectionLease, LeaseTimings, Status
from tickerq.election.election_timings import DEFAULT_LEASE, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD
from tickerq.errors import KeyTypeError
from tickerq.events import EventHub

__all__ = ["LeaderElection"]

log = logging.getLogger(__name__)

#: How long ``stop()`` and ``stop_all()`` wait for the threads by default (s).
_STOP_TIMEOUT = 2.0


class LeaderElection:
    """Campaign for, hold and hand over the leadership of ``name`` among the nodes.

    Created by ``RedisContext.leader_election(name, ...)``. Until :meth:`start`
    it only observes: :meth:`leader` reads Redis and it never campaigns. After
    it, a daemon thread ``tickerq-election-{name}`` campaigns every
    ``retry_period`` (a candidate whose current leader's lease is about to lapse
    tries again just after it lapses) and, while leading, renews every
    ``retry_period``. A daemon thread ``tickerq-election-{name}-deadline`` ends
    a leadership at its renew deadline, even while the election thread waits on
    Redis. Both are runtime services (one stop contract, one loop shape, fork
    aware) and take their time from ``clock``.

    :meth:`stop` resigns and ends the threads. To stop several elections at
    once, :meth:`request_stop` each (no waiting), then :meth:`wait_stopped`
    each against one deadline, or use :meth:`stop_all`.

    Callbacks and events run in order on a dispatcher, never on the renewing
    thread: by default one of the election's own whose one daemon thread,
    ``tickerq-election-{name}-callbacks-1``, starts with the first callback;
    one that raises is logged. A long ``on_elected`` (one that works until
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
        events: Where ``LeadershipAcquired``, ``LeadershipLost``,
            ``LeaderChanged``, ``RedisConnectionLost`` and
            ``RedisConnectionRestored`` are published, on the dispatcher, in
            order with the callbacks.
        clients: Where the election's own pool comes from; pass the
            connections' owner so that the pool follows a master failover.
            Default: a pool copied from ``client``'s.
        dispatcher: Where callbacks and events run (a shared one of several
            workers keeps this election's order; it is not stopped with the
            election). Default: one of the election's own, per start.
        clock: Where the election takes time from (renew deadline, retry
            period, stepping back); tests pass a ``ManualClock``.

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
        dispatcher: Dispatcher | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        check_user_key("node_id", node_id)
        check_user_key("name", name)
        self.name = name
        self.node_id = node_id
        self._timings = LeaseTimings(lease=lease, renew_deadline=renew_deadline, retry_period=retry_period)
        self.lease = self._timings.lease
        self.renew_deadline = self._timings.renew_deadline
        self.retry_period = self._timings.retry_period
        self._ops = ElectionLease(keys, name, node_id, to_milliseconds(self.lease))
        self._client = client
        self._clients = clients if clients is not None else DerivedClients(client)
        self._notify = Notifications(
            on_elected=on_elected, on_demoted=on_demoted, on_new_leader=on_new_leader, events=events
        )
        self._dispatcher = dispatcher
        self._clock = clock
        self._campaign: Campaign | None = None  # a fresh one at every start()
        self._floors = FenceFloors(1)  # the highest term seen, kept from one start() to the next

    # -- public API --------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True from start() to stop() in the process that started it (False in a forked child)."""
        campaign = self._campaign
        return campaign is not None and campaign.running and not campaign.stopping

    @property
    def is_leader(self) -> bool:
        """True while this node leads: checked against the renew deadline on every call."""
        return self.term is not None

    @property
    def term(self) -> int | None:
        """The term of this node's leadership (pass it on as a fence), or None when not leading."""
        campaign = self._campaign
        if campaign is None or not campaign.running:
            return None  # also a forked child: checked first, as the parent's lock may be held forever
        return campaign.leadership.term

    def leader(self) -> str | None:
        """The current leader's node id as Redis has it, or None (one round trip).

        Raises:
            RedisUnavailableError: Redis did not answer (``RedisReadOnlyError`` never: it only reads).
            RedisCommandError: Redis refused the read (``NOPERM``, say).
            KeyTypeError: The lease key holds something tickerq did not write.
        """
        where = f"could not read the leader of election {self.name!r}"
        with translate_errors("election leader", key=self._ops.key, name=self.name, where=where):
            reply = self._ops.read(self._client)
        if reply.status == Status.CORRUPT:
            raise KeyTypeError(
                f"{self._ops.key!r} holds a {reply.holder}, not an election lease "
                "(a hash with node, token and term written by tickerq)",
                operation="election leader",
                key=self._ops.key,
                name=self.name,
            )
        return reply.holder if reply.status == Status.HELD else None

    def start(self) -> None:
        """Start campaigning (no I/O on the caller's thread). Safe to call again.

        In a child forked after start, this starts afresh: the parent's
        leadership and threads are not the child's.
        """
        if self.running:
            return
        previous = self._campaign
        if previous is not None:  # stopped, maybe not waited for: its pool and dispatcher go now
            previous.request_stop()
            previous.wait_stopped(time.monotonic() + _STOP_TIMEOUT)
        campaign = Campaign(
            self._ops,
            self._timings,
            self._clients,
            self._notify,
            dispatcher=self._dispatcher,
            clock=self._clock,
            floors=self._floors,
        )
        self._campaign = campaign
        campaign.start()

    def resign(self) -> None:
        """Stop leading at once and step back for one ``lease`` so another node takes over.

        ``is_leader`` is False when this returns; the election thread deletes
        the lease (if still ours) within one round trip. Without a lead it
        still steps back. Does nothing unless started in this process.
        """
        campaign = self._campaign
        if campaign is None or not self.running:
            return
        campaign.leadership.end("resigned", resign=True)
        campaign.wake()

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
        campaign = self._campaign
        if campaign is not None and campaign.running:
            campaign.request_stop()

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
        return self._wait_stopped_by(time.monotonic() + timeout)

    def _wait_stopped_by(self, deadline: float) -> bool:
        campaign = self._campaign
        if campaign is None or campaign.forked:
            return True
        if campaign.running and not campaign.stopping:
            return False
        return campaign.wait_stopped(deadline)

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
        deadline = time.monotonic() + timeout
        ended = [election._wait_stopped_by(deadline) for election in elections]
        return all(ended)  # every one waited for, even after one timed out

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
