"""The node runtime: the one owner of a node's pools, user-code dispatcher and background services.

One :class:`NodeRuntime` per node (the container's ``node_runtime`` Resource).
Built, it holds everything and runs nothing: ``container.redis_context()``
without ``init_resources()`` gets a working context that starts no thread.
:meth:`NodeRuntime.start` starts the services in this order:

1. the heartbeat (its first beat is written before ``start()`` returns);
2. the node's election, when ``configure_scheduler(leader_election=...)`` asked for one;
3. the scheduler (its loop and its wake-up subscription).

:meth:`NodeRuntime.shutdown` stops them against one deadline (``STOP_BUDGET``
plus the scheduler's ``shutdown_timeout`` while jobs run):

1. the scheduler and every election are told to stop (no waiting);
2. the scheduler is waited for: it stops claiming and hands running jobs back
   while the heartbeat still keeps the node alive;
3. the elections are waited for (each resigns);
4. the heartbeat is told to stop and waited for;
5. callers blocked in tickerq are released with ``ShutdownError`` (lock and
   cache waiters) and the lock watchdog stops;
6. the dispatcher runs what is queued (``on_demoted``, last events) until the deadline;
7. the pools tickerq created are closed (a client given by the user never is).

Fork: one ``os.register_at_fork`` hook marks every runtime of the parent as
forked in the child. A forked runtime's threads are the parent's: the child
neither waits for nor interrupts them, and its ``shutdown()`` closes nothing
the parent uses (redis-py gives a forked child fresh sockets); building a new
runtime (``shutdown_resources()`` then ``init_resources()``) is the documented path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import Dispatcher
from tickerq.errors import ShutdownError

if TYPE_CHECKING:  # the runtime owns these; it imports nothing of the rooms above it at run time
    from tickerq._redis.connection import RedisConnections
    from tickerq.context import RedisContext
    from tickerq.election.election import LeaderElection
    from tickerq.nodes.heartbeat import HeartbeatService
    from tickerq.scheduler.executor import SchedulerService
    from tickerq.scheduler.runner import SchedulerRunner
    from tickerq.scheduler.store import JobStore

__all__ = ["DISPATCH_WORKERS", "STOP_BUDGET", "NodeRuntime"]

log = logging.getLogger(__name__)

#: How long the whole shutdown may take, beyond the scheduler's grace for running jobs (s).
STOP_BUDGET = 0.9

#: Workers of the shared user-code dispatcher (``tickerq-dispatch-N``): dead-node
#: handlers, event subscribers and election callbacks. Each source keeps its order
#: on a strand, so one slow callback holds one worker, not the others.
DISPATCH_WORKERS = 4

#: How long idle dispatcher workers get to end when the deadline has already passed (s).
_IDLE_WORKER_GRACE = 0.05

_RUNTIMES: weakref.WeakSet[NodeRuntime] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for runtime in list(_RUNTIMES):
        runtime._forked = True


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class NodeRuntime:
    """Owns one node's pools, dispatcher and services; starts and stops them in a stated order.

    Build it with everything in place (no I/O, no thread); :meth:`start` and
    :meth:`shutdown` are the only verbs. See the module docstring for the orders.

    Args:
        node_id: The node's identifier (for log lines).
        dispatcher: The shared dispatcher for user code; stopped by :meth:`shutdown`.
        clock: The clock the services take time from.
        connections: The pools (None without Redis); closed by :meth:`shutdown`.
        context: The ``RedisContext``: its elections, lock watchdog and waiters.
        heartbeat: The heartbeat service.
        election: The node's own election (also stopped through ``context``).
        scheduler: The scheduler (None with ``producer_only``).
        job_store: The store ``ticker_manager()`` schedules into.
        stop_budget: How long :meth:`shutdown` may take beyond the scheduler's grace.
    """

    def __init__(
        self,
        *,
        node_id: str,
        dispatcher: Dispatcher,
        clock: Clock = SYSTEM_CLOCK,
        connections: RedisConnections | None = None,
        context: RedisContext | None = None,
        heartbeat: HeartbeatService | None = None,
        election: LeaderElection | None = None,
        scheduler: SchedulerRunner | None = None,
        job_store: JobStore | None = None,
        stop_budget: float = STOP_BUDGET,
    ) -> None:
        self.node_id = node_id
        self.dispatcher = dispatcher
        self.clock = clock
        self.connections = connections
        self.context = context
        self.heartbeat = heartbeat
        self.election = election
        self.scheduler = scheduler
        self.job_store = job_store
        self.stop_budget = stop_budget
        #: What :meth:`shutdown` did, in order (for logs and tests).
        self.steps: list[str] = []
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._forked = False
        _RUNTIMES.add(self)

    @property
    def forked(self) -> bool:
        """True in a child forked after this runtime was built: its threads are the parent's."""
        return self._forked

    @property
    def running(self) -> bool:
        """True from :meth:`start` to :meth:`shutdown`, in the process that started it."""
        return self._started and not self._closed and not self._forked

    @property
    def scheduler_service(self) -> SchedulerService | None:
        """The scheduler's loop while it runs (None with ``producer_only`` or before start)."""
        return None if self.scheduler is None else self.scheduler.service

    def start(self) -> None:
        """Start the heartbeat, the node's election and the scheduler, in that order.

        If one of them refuses to start, those already started are stopped.

        Raises:
            ConfigurationError: ``on_duplicate_node="refuse"`` and another live
                process beats under this node's identifier.
            ShutdownError: The runtime was shut down (build a new one).
        """
        with self._lock:
            if self._closed:
                raise ShutdownError(f"node {self.node_id!r}: this runtime was shut down; build a new one")
            if self.running:
                return
            self._forked = False  # a child that starts this runtime owns what it starts
            self._started = True
            self.dispatcher.start()
            try:
                if self.heartbeat is not None:
                    if self.connections is not None:
                        self.heartbeat.beat_on_start = self.connections.reachable
                    self.heartbeat.start()
                if self.election is not None:
                    self.election.start()
                if self.scheduler is not None:
                    self.scheduler.start()
            except BaseException:
                self._stop_services(time.monotonic() + self.stop_budget)
                self._started = False
                raise
        log.debug("node %s: runtime started", self.node_id)

    def shutdown(self) -> bool:
        """Stop every service, release blocked callers, close the pools; see the module docstring.

        Safe to call twice, and without :meth:`start` (then it only closes the pools).

        Returns:
            True when every thread ended before the deadline.
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            grace = 0.0 if self.scheduler is None or self._forked else self.scheduler.grace
            deadline = time.monotonic() + self.stop_budget + grace
            stopped = True
            if not self._forked:
                stopped = self._stop_services(deadline)
                if self.context is not None:
                    self._step("callers released")
                    self.context.release_waiters(deadline)
                self._step("dispatcher")
                self.dispatcher.request_stop()
                # Idle workers end as soon as they see the stop: a moment for them even
                # when the services used up the deadline.
                floor = time.monotonic() + _IDLE_WORKER_GRACE
                stopped = self.dispatcher.wait_stopped(max(deadline, floor)) and stopped
            if self.connections is not None:
                self._step("pools closed")
                self.connections.close()
        if not stopped:
            log.warning("node %s: some threads did not stop in time; they are daemons", self.node_id)
        return stopped

    def _stop_services(self, deadline: float) -> bool:
        """Stop the services in order against ``deadline``; returns whether all ended in time."""
        stopped = True
        if self.scheduler is not None:
            self._step("scheduler: stop requested")
            self.scheduler.request_stop()
        if self.context is not None:
            self._step("elections: stop requested")
            self.context.request_stop()
        if self.scheduler is not None:
            stopped = self.scheduler.wait_stopped(deadline)
            self._step("scheduler: stopped")
        if self.context is not None:
            stopped = self.context.wait_stopped(deadline) and stopped
            self._step("elections: stopped")
        if self.heartbeat is not None:
            self.heartbeat.request_stop()
            stopped = self.heartbeat.wait_stopped(deadline) and stopped
            self._step("heartbeat: stopped")
        return stopped

    def _step(self, step: str) -> None:
        self.steps.append(step)
        log.debug("node %s: shutdown: %s (at %.3f)", self.node_id, step, time.monotonic())

    def __repr__(self) -> str:
        return f"NodeRuntime(node={self.node_id!r}, running={self.running}, forked={self._forked})"
