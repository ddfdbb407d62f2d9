"""The scheduler service: claims due jobs for this node's functions and runs them.

One ``Service`` loop (``tickerq-scheduler``) does the talking to the store;
job functions run on a worker ``Dispatcher`` (``tickerq-worker-N``). Each
iteration, in as few round trips as the batch allows:

1. materialises due cron occurrences (:class:`CronMaterializer`);
2. reports the outcomes of attempts that ended and claims no more due jobs
   than it can start now (per-function ``max_concurrency``,
   ``SchedulerOptions.max_concurrency`` in all), in one ``claim_due`` call
   that also marks them started (``start=True``: the node runs them at once),
   and hands them to the workers; with no room to claim, the outcomes go in
   one ``finish`` call;
3. every ``CANCEL_POLL`` while jobs run, asks which were cancelled and sets
   their ``context.cancelled``;
4. sleeps until the next due time (on the store's clock, measured from the
   reply), a worker finishing, a wake-up from the store, or the safety poll.

Shutdown: stop claiming, let running jobs finish up to ``shutdown_timeout``,
then set ``context.cancelled`` on the rest and hand them back (HANDED_BACK,
run again elsewhere with ``is_rerun``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import Dispatcher, DispatcherStoppedError
from tickerq._runtime.outage import OutageTracker
from tickerq._runtime.service import Service
from tickerq.errors import TickerQError
from tickerq.events import EventHub, Publisher
from tickerq.options import SchedulerOptions
from tickerq.scheduler.cron import CronSchedule, resolve_time_zone
from tickerq.scheduler.function import TickerFunction
from tickerq.scheduler.manager import cron_id_for
from tickerq.scheduler.materializer import CronMaterializer
from tickerq.scheduler.model import (
    Claim,
    FunctionLimits,
    NewCron,
    Outcome,
    OutcomeKind,
)
from tickerq.scheduler.store import JobStore
from tickerq.scheduler.worker import JobRunner, RunningJob, handed_back

__all__ = ["SchedulerService"]

log = logging.getLogger(__name__)

#: How often running jobs are checked for cancel requests (one round trip).
CANCEL_POLL = 0.5

#: How often finished jobs past retention are dropped (more often when retention is shorter).
EXPIRE_EVERY = 60.0

#: Index entries one ``expire_finished`` call drops; a full batch is followed by another.
EXPIRE_BATCH = 1000

#: At most this many ``expire_finished`` calls per loop iteration; the rest wait for the next.
_EXPIRE_CALLS = 10


class SchedulerService(Service):
    """Runs this node's share of the jobs; see the module docstring.

    Args:
        store: The job store.
        functions: The functions this node runs (fixed for its lifetime).
        node_id: This node's identifier.
        options: The scheduler options.
        container: Handed to job functions as ``context.container``.
        events: Where lifecycle events are published.
        clock: Monotonic time and sleeping (store time comes from the store).
        interrupt: Breaks a store call blocked on a frozen server (closes the
            connections of the loop's own pool).
        outage_events: Where the loop's outage events go (default ``events``); the
            node runtime passes a deferred publisher, so that no subscriber runs on
            the loop's thread.
    """

    def __init__(
        self,
        store: JobStore,
        functions: Mapping[str, TickerFunction],
        node_id: str,
        options: SchedulerOptions,
        *,
        container: Any = None,
        events: EventHub | None = None,
        clock: Clock = SYSTEM_CLOCK,
        interrupt: Callable[[], object] | None = None,
        outage_events: Publisher | None = None,
    ) -> None:
        super().__init__("tickerq-scheduler", clock=clock)
        self._interrupt = interrupt
        self.store = store
        self.functions = dict(functions)
        self.node_id = node_id
        self.options = options
        self.container = container
        self.events = events if events is not None else EventHub()
        self.workers = Dispatcher("tickerq-worker", workers=options.max_concurrency)
        self.runner = JobRunner(
            node_id, options, container=container, events=self.events, clock=clock, ended=self._ended
        )
        self.crons = CronMaterializer(
            store, self.functions, options.missed_occurrence_policy, options.missed_occurrence_threshold
        )
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: dict[str, RunningJob] = {}
        self._outcomes: list[Outcome] = []
        self._prepared = False
        self._claims_uncertain = False  # the store may hold claims of ours we do not know (lost reply)
        self._next_cron_ms = 0
        self._next_cancel_poll = 0.0
        self._next_expire = 0.0
        self._last_store_ms: int | None = None  # the store's clock at our last read...
        self._last_read_at = 0.0  # ...and our monotonic clock then
        self._outage = OutageTracker("scheduler", log, outage_events or self.events)

    # -- the owner's view ------------------------------------------------------

    @property
    def running_jobs(self) -> int:
        """How many attempts run on this node now."""
        return len(self._running)

    def start(self) -> None:
        """Start the loop (and accept work on the workers again)."""
        self.workers.start()
        super().start()

    def interrupt(self) -> None:
        """Break a store call blocked on a frozen server (the ``interrupt`` given: closes the pool)."""
        if self._interrupt is not None:
            self._interrupt()

    def on_store_wake(self, _due_ms: int | None = None) -> None:
        """Wake-up from the store (new or returned work): look now."""
        self.wake()

    # -- the loop ----------------------------------------------------------------

    def run_once(self) -> float | None:
        """One iteration; returns the seconds to sleep."""
        if not self._prepared:
            self._prepare()
        if self._claims_uncertain:
            # Outcomes not reported yet stay kept (they are known claims): the next claim reports them.
            self._release_unknown()
        read_at = self.clock.monotonic()
        now_ms = self.store.now_ms() if self.crons.functions and self._crons_due() else None
        if now_ms is not None:
            self._next_cron_ms = self.crons.run(now_ms)
        next_due_ms, now_ms, read_at = self._claim(now_ms, read_at)
        self._chores()
        self._outage.succeeded()
        return self._delay(next_due_ms, now_ms, read_at)

    def _crons_due(self) -> bool:
        return self._next_cron_ms <= 0 or self._store_now_estimate() >= self._next_cron_ms

    def _store_now_estimate(self) -> int:
        if self._last_store_ms is None:
            return 0
        return self._last_store_ms + int((self.clock.monotonic() - self._last_read_at) * 1000)

    def _prepare(self) -> None:
        """Before the first claim: release our own stale claims, then sync code crons."""
        self._release_own("a previous run of this node")
        self._sync_code_crons()
        self._prepared = True

    def _release_own(self, why: str) -> None:
        """Hand back every claim the store holds for this node (before it runs anything)."""
        released = self.store.release_node(self.node_id)
        if released:
            log.info("node %s: handed back %d claim(s) of %s", self.node_id, len(released), why)

    def _known_claims(self) -> dict[str, int]:
        """The claims this node knows it holds: running, or ended but not reported yet."""
        with self._lock:
            known = {outcome.job_id: outcome.fence for outcome in self._outcomes}
            known.update((job_id, entry.claim.fence) for job_id, entry in self._running.items())
        return known

    def _release_unknown(self) -> None:
        """Hand back the claims the store holds for us that we do not know (a lost reply)."""
        released = self.store.release_node(self.node_id, keep=list(self._known_claims().items()))
        self._claims_uncertain = False
        if released:
            log.warning(
                "node %s: handed back %d claim(s) whose claim reply was lost: %s",
                self.node_id,
                len(released),
                ", ".join(released),
            )

    def _sync_code_crons(self) -> None:
        now = self.store.now_ms()
        declared: set[str] = set()
        for function in self.functions.values():
            if function.cron is None:
                continue
            zone = resolve_time_zone(function.time_zone or self.options.time_zone)
            cron = NewCron(
                id=cron_id_for(function.name, function.cron, zone.key, code=True),
                function=function.name,
                expression=function.cron,
                time_zone=zone.key,
                retries=function.retries,
                retry_intervals=function.retry_intervals,
            )
            declared.add(self.store.add_cron(cron, CronSchedule(function.cron, zone).next_after(now)).id)
        for stored in self.store.list_crons():  # crons our code declared before, but no longer does
            if stored.function in self.functions and ":code-" in stored.id and stored.id not in declared:
                log.info("removing cron %s (%s): no longer declared", stored.id, stored.function)
                self.store.remove_cron(stored.id)

    def _report(self) -> None:
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
        if not outcomes:
            return
        try:
            self.store.finish(outcomes, self.options.job_retention)
        except Exception:
            with self._lock:  # not lost: reported again next iteration
                self._outcomes[:0] = outcomes
            raise

    def _limits(self) -> tuple[list[FunctionLimits], int]:
        with self._lock:
            free = self.options.max_concurrency - len(self._running)
            per_function: dict[str, int] = {}
            for entry in self._running.values():
                per_function[entry.function.name] = per_function.get(entry.function.name, 0) + 1
        limits = []
        for function in self.functions.values():
            slots = free
            if function.max_concurrency is not None:
                slots = min(slots, function.max_concurrency - per_function.get(function.name, 0))
            if slots > 0:
                limits.append(
                    FunctionLimits(
                        name=function.name,
                        free_slots=slots,
                        cluster_concurrency=function.cluster_concurrency,
                        skip_if_running=function.skip_if_running,
                    )
                )
        return limits, free

    def _claim(self, now_ms: int | None, read_at: float) -> tuple[int | None, int | None, float]:
        """Report what ended and claim what can start now, in one round trip."""
        limits, free = self._limits()
        if free <= 0 or not limits or self.stopping:
            self._report()
            return None, now_ms, read_at  # a worker finishing wakes us
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
        # What we know we hold after the call: jobs running and outcomes queued since (the ones
        # given to the call hold nothing once recorded), plus the claims the call returns.
        known = len(self._known_claims())
        read_at = self.clock.monotonic()
        try:
            # start=True: the claimed jobs go to the workers now, so they are IN_PROGRESS from
            # the claim on (a cancel requested later reaches them through cancel_requests).
            batch = self.store.claim_due(
                self.node_id,
                limits,
                free,
                start=True,
                outcomes=outcomes,
                retention=self.options.job_retention,
            )
        except Exception:
            with self._lock:  # not lost: reported again next time (a stale fence is ignored)
                self._outcomes[:0] = outcomes
            self._claims_uncertain = True  # the store may have claimed and lost the reply
            raise
        self._last_store_ms, self._last_read_at = batch.now_ms, read_at
        if batch.held > known + len(batch.claims):
            # A claim whose reply we never got (or a retried one) holds jobs for us.
            self._claims_uncertain = True
        if batch.claims:
            try:
                self._start(self._skip_missed(batch.claims, batch.now_ms))
            except Exception:
                self._claims_uncertain = True  # the hand-back at a stop may have lost its reply
                raise
        return batch.next_due_ms, batch.now_ms, read_at

    def _skip_missed(self, claims: Sequence[Claim], now_ms: int) -> list[Claim]:
        """Claimed cron occurrences missed in downtime are reported SKIPPED (the policy's call)."""
        if not self.crons.functions:
            return list(claims)
        run: list[Claim] = []
        for claim in claims:
            if claim.job.cron_id is not None and self.crons.superseded(claim.job, now_ms):
                log.warning(
                    "cron %s (%s): occurrence %s missed by more than %.0f s: skipped",
                    claim.job.cron_id,
                    claim.job.function,
                    claim.job.id,
                    self.crons.threshold_ms / 1000,
                )
                with self._lock:
                    self._outcomes.append(
                        Outcome(job_id=claim.job.id, fence=claim.fence, kind=OutcomeKind.SKIPPED)
                    )
            else:
                run.append(claim)
        return run

    def _start(self, claims: list[Claim]) -> None:
        if self.stopping:  # claimed while asked to stop: hand them straight back
            # (claimed started, so the store marks them is_rerun: at-least-once errs on that side)
            self.store.finish([handed_back(claim) for claim in claims], self.options.job_retention)
            return
        for claim in claims:
            self._submit(claim)

    def _submit(self, claim: Claim) -> None:
        job = claim.job
        entry = self.runner.prepare(claim, self.functions[job.function])
        with self._lock:
            self._running[job.id] = entry
        try:
            description = f"ticker function {job.function} ({job.id})"
            self.workers.submit(self.runner.run, entry, description=description)
        except DispatcherStoppedError:
            with self._lock:
                del self._running[job.id]
                self._outcomes.append(handed_back(claim))

    def _ended(self, entry: RunningJob, outcome: Outcome) -> bool:
        """A worker's attempt ended: queue its outcome (unless abandoned) and wake the loop."""
        with self._lock:
            self._running.pop(outcome.job_id, None)
            reported = not entry.abandoned
            if reported:
                self._outcomes.append(outcome)
            self._idle.notify_all()
        self.wake()
        return reported

    def _chores(self) -> None:
        now = self.clock.monotonic()
        if self._running and now >= self._next_cancel_poll:
            self._next_cancel_poll = now + CANCEL_POLL
            with self._lock:
                ids = list(self._running)
            for job_id in self.store.cancel_requests(ids):
                with self._lock:
                    entry = self._running.get(job_id)
                    if entry is not None:
                        entry.cancel_requested = True
                if entry is not None:
                    entry.context.cancelled.set()
        if now >= self._next_expire:
            self._next_expire = now + min(EXPIRE_EVERY, self.options.job_retention.total_seconds())
            for _ in range(_EXPIRE_CALLS):  # keep up with any finishing rate, a bounded step at a time
                if self.store.expire_finished(EXPIRE_BATCH) < EXPIRE_BATCH:
                    break
            else:
                self._next_expire = now  # more is past retention: go on next iteration

    def _delay(self, next_due_ms: int | None, now_ms: int | None, read_at: float) -> float:
        delays = [self.options.poll_interval.total_seconds()]
        if self._outcomes:
            delays.append(0.0)
        if self._running:
            delays.append(max(0.0, self._next_cancel_poll - self.clock.monotonic()))
        if next_due_ms is not None and now_ms is not None:
            delays.append((next_due_ms - now_ms) / 1000 - (self.clock.monotonic() - read_at))
        if self.crons.functions and self._next_cron_ms > 0:
            delays.append((self._next_cron_ms - self._store_now_estimate()) / 1000)
        return max(0.0, min(delays))

    def failed(self, exc: Exception) -> float | None:
        """A store call failed (Redis down): logged once per outage; retried soon."""
        if self.stopping:  # interrupted by our own stop: not an outage
            log.debug("%s: stopped mid-call: %s", self.name, exc)
            return None
        self._outage.failed(exc, unexpected=not isinstance(exc, TickerQError))
        return min(1.0, self.options.poll_interval.total_seconds())

    # -- shutdown --------------------------------------------------------------------

    def finalize(self) -> None:
        """Let running jobs finish up to ``shutdown_timeout``, hand the rest back, report."""
        self.workers.request_stop()
        deadline = self.clock.monotonic() + self.options.shutdown_timeout.total_seconds()
        with self._lock:
            while self._running and (left := deadline - self.clock.monotonic()) > 0:
                self._idle.wait(min(left, 0.05))
            leftover = list(self._running.values())
            for entry in leftover:
                entry.abandoned = True
            self._running.clear()
            outcomes, self._outcomes = self._outcomes, []
        for entry in leftover:
            entry.context.cancelled.set()
            outcomes.append(handed_back(entry.claim))
        if leftover:
            log.warning(
                "%d job(s) still running after the %.1f s shutdown timeout: cancelled and handed back: %s",
                len(leftover),
                self.options.shutdown_timeout.total_seconds(),
                ", ".join(entry.claim.job.id for entry in leftover),
            )
        if outcomes:
            try:
                self.store.finish(outcomes, self.options.job_retention)
            except Exception:
                log.exception(
                    "could not report %d outcome(s) at shutdown; the node's release will", len(outcomes)
                )
