"""One started election's loop: campaign, renew, release (a :class:`Service`).

:class:`tickerq.election.election.LeaderElection` builds a fresh :class:`Campaign`
at every ``start()``, so nothing of an ended (or a forked parent's) campaign is
ever resumed. The campaign owns what lives from start to stop: its pool (from a
:class:`ClientSource`, so it follows a master failover), its
:class:`Leadership` (state and deadline watch), its token, and the strand that
queues the callbacks and events on a dispatcher (its own, unless one is given).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import attrs
import redis

from tickerq._redis.connection import ClientSource
from tickerq._runtime.clock import Clock
from tickerq._runtime.dispatcher import Dispatcher, DispatcherStoppedError
from tickerq._runtime.lease import FenceFloors
from tickerq._runtime.outage import OutageTracker
from tickerq._runtime.service import Service
from tickerq._runtime.strand import Strand
from tickerq.election.election_leadership import Leadership
from tickerq.election.election_lease import ElectionLease, LeaseReply, LeaseTimings, Status
from tickerq.events import (
    EventHub,
    LeaderChanged,
    LeadershipAcquired,
    LeadershipLost,
    RedisConnectionLost,
    RedisConnectionRestored,
)

__all__ = ["Campaign", "Notifications"]

log = logging.getLogger("tickerq.election.election")

T = TypeVar("T")

#: The campaign's Redis calls give up after min(retry_period, this), so it stays
#: responsive and stopping stays fast even while Redis hangs. It is also
#: stopping's budget: the final release must be answered within it, counted from
#: ``request_stop()``, or the lease is left to lapse.
MAX_CALL_TIMEOUT = 0.5


@attrs.frozen(kw_only=True)
class Notifications:
    """Who hears about an election: its callbacks and its event hub (each may be None)."""

    on_elected: Callable[[int, threading.Event], None] | None = None
    on_demoted: Callable[[int], None] | None = None
    on_new_leader: Callable[[str | None], None] | None = None
    events: EventHub | None = None


class Campaign(Service):
    """The thread ``tickerq-election-{name}``: campaigns, renews and releases one election's lease.

    Args:
        ops: The lease's scripts for this node.
        timings: The election's validated timings.
        clients: Where the campaign's pool comes from (and goes back to).
        notify: The callbacks and the event hub, run on ``dispatcher``.
        dispatcher: Where callbacks and events run, in order; None for a
            one-worker dispatcher of the campaign's own,
            ``tickerq-election-{name}-callbacks``, stopped with it.
        clock: Where the lease logic takes time from and sleeps on. Redis
            calls and stopping's budget count in real time (sockets do).
        floors: The node's term floor (the highest term seen), kept across
            campaigns; default: this campaign's own.
    """

    def __init__(
        self,
        ops: ElectionLease,
        timings: LeaseTimings,
        clients: ClientSource,
        notify: Notifications,
        *,
        dispatcher: Dispatcher | None,
        clock: Clock,
        floors: FenceFloors | None = None,
    ) -> None:
        super().__init__(f"tickerq-election-{ops.name}", clock=clock)
        self.election = ops.name
        self._ops = ops
        self._notify = notify
        self._lease_s = timings.lease.total_seconds()
        self._retry_s = timings.retry_period.total_seconds()
        self._call_timeout = min(self._retry_s, MAX_CALL_TIMEOUT)
        self._clients = clients
        self._redis: redis.Redis | None = clients.derive_client(2, self._call_timeout)  # no I/O yet
        self._own_dispatcher = dispatcher is None
        self.dispatcher = dispatcher or Dispatcher(f"tickerq-election-{ops.name}-callbacks")
        self.strand = Strand(self.dispatcher, f"election {ops.name!r}")
        self.leadership = Leadership(
            ops.name,
            timings.renew_deadline.total_seconds(),
            retry_period=self._retry_s,
            stopping=lambda: self.stopping,
            on_begin=self._began,
            on_end=self._ended,
            clock=clock,
        )
        self._outage = OutageTracker(f"election {ops.name!r}", log)  # its events are published here, queued
        self._outage_since = 0.0
        self._token = uuid.uuid4().hex  # one per leadership: an ended one is never resumed
        self._token_sent = False  # whether the token may hold the lease
        self._release_by = 0.0  # once stopping: the final release must be answered by then (time.monotonic)
        self._failed_stopping = False  # a call failed after stop was requested: Redis is unreachable
        self._step_back_until = 0.0
        self._observed: tuple[str | None, int] | None = None
        self._floors = floors if floors is not None else FenceFloors(1)
        self._corrupt_reported = False

    # -- the service contract ----------------------------------------------------

    def start(self) -> None:
        """Start the deadline watch, then the campaign's thread."""
        self.leadership.start()
        super().start()

    def request_stop(self) -> None:
        """End the leadership now and ask the thread to release the lease and end; no waiting.

        The final release is given up when no answer came within one call
        timeout of this request (the lease then lapses by itself).
        """
        if self.forked or self.stopping:
            return
        self._release_by = time.monotonic() + self._call_timeout  # before the stop: the thread reads it then
        super().request_stop()
        self.leadership.end("stopped")
        self.leadership.request_stop()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the thread, the deadline watch and the callbacks queued so far; release the pool.

        Returns:
            Whether all of them ended by ``deadline`` (``time.monotonic()``).
        """
        if self.forked:
            return True
        ended = super().wait_stopped(deadline)
        ended = self.leadership.wait_stopped(deadline) and ended
        ended = self._wait_callbacks(deadline) and ended
        client, self._redis = self._redis, None
        if client is not None:
            self._clients.release_client(client)
        return ended

    def interrupt(self) -> None:
        """Nothing to break: every call gives up within the call timeout by itself, and the
        final release in flight is allowed that long (see :meth:`request_stop`)."""

    def _wait_callbacks(self, deadline: float) -> bool:
        idle = self.strand.wait_idle(deadline)
        if self._own_dispatcher:
            self.dispatcher.request_stop()
            if not self.strand.running_here():  # from a callback: its worker ends once it returns
                idle = self.dispatcher.wait_stopped(deadline) and idle
        if not idle:
            log.warning("election %r: a callback was still running when stop() returned", self.election)
        return idle

    # -- the loop ------------------------------------------------------------------

    def run_once(self) -> float:
        """One attempt; returns how long to wait before the next."""
        resigning, releasing, leading = self.leadership.take_requests()
        if resigning or releasing:
            self._release()  # a leadership ended (resigned, deadline passed): its lease goes too
            if resigning:
                self._step_back_until = self.clock.monotonic() + self._lease_s
            return 0.0
        if leading:
            return self._renew()
        remaining = self._step_back_until - self.clock.monotonic()
        if remaining > 0:
            reply = self._call(self._ops.read)
            if reply is not None:
                self._report(reply)
            return min(self._retry_s, remaining)
        return self._campaign()

    def failed(self, exc: Exception) -> float:
        """An unexpected error: logged, and the next attempt comes one retry period later."""
        log.exception("election %r: unexpected error; retrying", self.election, exc_info=exc)
        return self._retry_s

    def finalize(self) -> None:
        """The thread ends: so does the leadership, and its lease is released if Redis answers in time."""
        self.leadership.end("stopped")
        self._release()

    def _campaign(self) -> float:
        sent = self.clock.monotonic()
        token, seen = self._token, self._max_term
        self._token_sent = True
        reply = self._call(lambda client: self._ops.acquire(client, token, seen))
        if reply is None:
            return self._retry_s
        if reply.status != Status.OURS:
            self._token_sent = False  # the script saw the lease is not ours: nothing to release
            self._report(reply)
            return self._until_lapse(reply.pttl_ms)
        if not self.leadership.begin(reply.term, sent):
            self._release()  # resign() or stop() came meanwhile, or the reply came too late
            return 0.0
        return self._until_renewal()

    def _renew(self) -> float:
        term, deadline = self.leadership.current()
        sent = self.clock.monotonic()
        if term is None:
            return 0.0
        if sent >= deadline:
            self.leadership.end("renew deadline passed")  # normally the deadline watch has done it
            return 0.0
        token = self._token
        reply = self._call(lambda client: self._ops.renew(client, token, term))
        if reply is None:
            return max(0.0, min(self._retry_s, deadline - self.clock.monotonic()))
        if reply.status == Status.OURS:
            if self.leadership.extend(term, sent):
                return self._until_renewal()
            # The deadline passed while we waited (is_leader was already False), or the
            # leadership ended on another thread meanwhile; the next step releases the lease.
            self.leadership.end("renewed only after the renew deadline")
            return 0.0
        self.leadership.end(reply.loss_reason)
        self._token, self._token_sent = uuid.uuid4().hex, False  # the lease is not ours to release
        self._report(reply)
        return self._until_lapse(reply.pttl_ms)

    def _began(self, term: int, stop_event: threading.Event) -> None:
        """A leadership began (called by ``Leadership``, on this thread): queue its news."""
        log.info("election %r: %s is the leader, term %d", self.election, self._ops.node_id, term)
        self._observe(self._ops.node_id, term)
        self._publish(LeadershipAcquired(election=self.election, node=self._ops.node_id, term=term))
        self._submit(self._notify.on_elected, term, stop_event)

    def _ended(self, term: int, reason: str) -> None:
        """A leadership ended (called by ``Leadership``, on any thread): queue its news."""
        node = self._ops.node_id
        log.info("election %r: %s no longer leads term %d: %s", self.election, node, term, reason)
        self._publish(LeadershipLost(election=self.election, node=node, term=term, reason=reason))
        self._submit(self._notify.on_demoted, term)

    def _release(self) -> None:
        """Delete the lease if our token may hold it; never use that token again.

        Once stopping, skipped when Redis failed at the last call (it is
        unreachable: the lease lapses by itself), else bounded by what is left
        of stopping's budget (see :meth:`request_stop`).
        """
        token, sent = self._token, self._token_sent
        self._token, self._token_sent = uuid.uuid4().hex, False
        if not sent:
            return
        timeout: float | None = None
        if self.stopping:
            timeout = self._release_by - time.monotonic()
            if self._outage.in_outage or self._failed_stopping or timeout <= 0:
                log.debug("election %r: stopping, Redis not answering; the lease will lapse", self.election)
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
                self.election, self._ops.key, reply.holder, reply.pttl_ms,
            )  # fmt: skip

    @property
    def _max_term(self) -> int:
        """The highest term this node has seen (its floor: below it, Redis lost its data)."""
        return self._floors.get(self.election)[0]

    def _until_renewal(self) -> float:
        """How long until the leadership's next renewal is due (the lease core's schedule)."""
        return max(0.0, self.leadership.renew_at() - self.clock.monotonic())

    def _observe(self, leader: str | None, term: int) -> None:
        self._floors.raise_to(self.election, term)
        if (leader, term) == self._observed:
            return
        self._observed = (leader, term)
        self._publish(LeaderChanged(election=self.election, leader=leader, term=term))
        self._submit(self._notify.on_new_leader, leader)

    def _until_lapse(self, pttl: int) -> float:
        """Wait one retry period, or less: just past the lapse of a lease about to expire."""
        if 0 <= pttl < self._retry_s * 1000:
            return pttl / 1000 + random.uniform(0.001, 0.01)  # spreads the candidates
        return self._retry_s

    def _call(self, operation: Callable[[redis.Redis], T]) -> T | None:
        """Run ``operation`` on the campaign's pool; None when Redis failed (logged once per outage)."""
        client = self._redis
        if client is None:
            return None
        try:
            result = operation(client)
        except redis.RedisError as exc:
            if self.stopping:  # the thread ends: no outage to report, nothing retried
                self._failed_stopping = True
                log.info("election %r: no release while stopping (%s); the lease lapses", self.election, exc)
                return None
            if not self._outage.in_outage:
                self._outage_since = self.clock.monotonic()
                self._publish(RedisConnectionLost(source=self._outage.source, error=str(exc)))
            self._outage.failed(exc)
            return None
        if self._outage.in_outage:
            lasted = self.clock.monotonic() - self._outage_since
            self._publish(RedisConnectionRestored(source=self._outage.source, outage_seconds=lasted))
        self._outage.succeeded()
        return result

    def _publish(self, event: object) -> None:
        """Queue ``event`` for the hub: delivered on the dispatcher, in order with the callbacks."""
        if self._notify.events is not None:
            self._submit(self._notify.events.publish, event)

    def _submit(self, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        what = f"election {self.election!r}: callback {callback!r}{args!r}"
        try:
            self.strand.submit(callback, *args, description=what)
        except DispatcherStoppedError:
            log.warning("%s not run: the dispatcher is stopping", what)
