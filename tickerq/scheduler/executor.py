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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import Dispatcher, DispatcherStoppedError
from tickerq._runtime.service import Service
from tickerq.errors import TickerQError
from tickerq.events import EventHub, TickerFailed, TickerFinished, TickerQueued, TickerStarted
from tickerq.options import SchedulerOptions
from tickerq.redis.outage import OutageTracker
from tickerq.scheduler.cron import CronSchedule, resolve_time_zone
from tickerq.scheduler.function import TickerFunction, TickerFunctionContext
from tickerq.scheduler.manager import TickerRecord, cron_id_for
from tickerq.scheduler.materializer import CronMaterializer
from tickerq.scheduler.model import (
    Claim,
    FunctionLimits,
    JobRecord,
    NewCron,
    Outcome,
    OutcomeKind,
    TickerStatus,
)
from tickerq.scheduler.store import JobStore
from tickerq.serialization import loads, structure

__all__ = ["SchedulerService"]

log = logging.getLogger(__name__)

#: How often running jobs are checked for cancel requests (one round trip).
CANCEL_POLL = 0.5

#: How often finished jobs past retention are dropped.
EXPIRE_EVERY = 60.0

#: Longest exception message stored with a job.
_MESSAGE_LIMIT = 2_000


@attrs.define
class _Running:
    claim: Claim
    function: TickerFunction
    context: TickerFunctionContext
    abandoned: bool = False  # handed back at shutdown: its late outcome is not reported
    cancel_requested: bool = False


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
        self.crons = CronMaterializer(
            store, self.functions, options.missed_occurrence_policy, options.missed_occurrence_threshold
        )
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: dict[str, _Running] = {}
        self._outcomes: list[Outcome] = []
        self._prepared = False
        self._claims_uncertain = False  # a claim's reply was lost: it may hold jobs we do not know
        self._next_cron_ms = 0
        self._next_cancel_poll = 0.0
        self._next_expire = 0.0
        self._last_store_ms: int | None = None  # the store's clock at our last read...
        self._last_read_at = 0.0  # ...and our monotonic clock then
        self._outage = OutageTracker("scheduler", log, self.events)

    # -- the owner's view ------------------------------------------------------

    @property
    def running_jobs(self) -> int:
        """How many attempts run on this node now."""
        return len(self._running)

    def start(self) -> None:
        """Start the loop (and accept work on the workers again)."""
        self.workers.start()
        super().start()

    def on_store_wake(self, _due_ms: int | None = None) -> None:
        """Wake-up from the store (new or returned work): look now."""
        self.wake()

    # -- the loop ----------------------------------------------------------------

    def run_once(self) -> float | None:
        """One iteration; returns the seconds to sleep."""
        if not self._prepared:
            self._prepare()
        if self._claims_uncertain and not self._running:
            self._report()  # before the release: it would hand back the jobs these outcomes finish
            self._release_own("a claim whose reply was lost")
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
        """Hand back every claim the store holds for this node (only while it runs nothing)."""
        released = self.store.release_node(self.node_id)
        self._claims_uncertain = False
        if released:
            log.info("node %s: handed back %d claim(s) of %s", self.node_id, len(released), why)

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
            with self._lock:  # not lost: reported again next iteration (a stale fence is ignored)
                self._outcomes[:0] = outcomes
            self._claims_uncertain = True  # it may have claimed in Redis and lost the reply
            raise
        self._last_store_ms, self._last_read_at = batch.now_ms, read_at
        if batch.claims:
            self._start(list(batch.claims))
        return batch.next_due_ms, batch.now_ms, read_at

    def _start(self, claims: list[Claim]) -> None:
        if self.stopping:  # claimed while asked to stop: hand them straight back
            # (claimed started, so the store marks them is_rerun: at-least-once errs on that side)
            self.store.finish([_handed_back(claim) for claim in claims], self.options.job_retention)
            return
        for claim in claims:
            self._submit(claim)

    def _submit(self, claim: Claim) -> None:
        job = claim.job
        function = self.functions[job.function]
        context = TickerFunctionContext(
            job_id=job.id,
            function=job.function,
            container=self.container,
            request=None,
            retry_count=job.retry_count,
            scheduled_for=_scheduled_for(job),
            is_rerun=job.is_rerun,
            node=self.node_id,
            fence=claim.fence,
        )
        entry = _Running(claim=claim, function=function, context=context)
        with self._lock:
            self._running[job.id] = entry
        try:
            self.workers.submit(
                self._execute, entry, description=f"ticker function {job.function} ({job.id})"
            )
        except DispatcherStoppedError:
            with self._lock:
                del self._running[job.id]
                self._outcomes.append(_handed_back(claim))

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
            self._next_expire = now + EXPIRE_EVERY
            self.store.expire_finished()

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

    # -- on a worker -------------------------------------------------------------

    def _execute(self, entry: _Running) -> None:
        job, context, function = entry.claim.job, entry.context, entry.function
        self.events.publish(
            TickerQueued(
                job_id=job.id, function=job.function, node=self.node_id, scheduled_for=context.scheduled_for
            )
        )
        self.events.publish(
            TickerStarted(
                job_id=job.id,
                function=job.function,
                node=self.node_id,
                fence=entry.claim.fence,
                retry_count=job.retry_count,
                is_rerun=job.is_rerun,
            )
        )
        started = self.clock.monotonic()
        kind, message, error = OutcomeKind.DONE, None, None
        try:
            request = _decode(job, function)
            context = attrs.evolve(context, request=request) if request is not None else context
            function.fn(context)
        except BaseException as exc:
            error = exc
            message = f"{type(exc).__name__}: {exc}"[:_MESSAGE_LIMIT]
            kind = OutcomeKind.CANCELLED if entry.cancel_requested else OutcomeKind.FAILED
        elapsed = max(0.0, self.clock.monotonic() - started)
        with self._lock:
            self._running.pop(job.id, None)
            if not entry.abandoned:
                self._outcomes.append(
                    Outcome(
                        job_id=job.id,
                        fence=entry.claim.fence,
                        kind=kind,
                        elapsed_ms=int(elapsed * 1000),
                        exception_message=message,
                    )
                )
            self._idle.notify_all()
        self.wake()
        if not entry.abandoned:
            self._announce(entry, kind, error, message, elapsed)
        if error is not None and not isinstance(error, Exception):
            raise error

    def _announce(
        self,
        entry: _Running,
        kind: OutcomeKind,
        error: BaseException | None,
        message: str | None,
        elapsed: float,
    ) -> None:
        job = entry.claim.job
        took = timedelta(seconds=elapsed)
        if kind is not OutcomeKind.FAILED:
            status = "Done" if kind is OutcomeKind.DONE else "Cancelled"
            self.events.publish(
                TickerFinished(
                    job_id=job.id, function=job.function, node=self.node_id, status=status, elapsed=took
                )
            )
            return
        count = job.retry_count + 1
        will_retry = count <= job.retries
        self.events.publish(
            TickerFailed(
                job_id=job.id,
                function=job.function,
                node=self.node_id,
                error=message or "",
                retry_count=count,
                will_retry=will_retry,
                elapsed=took,
            )
        )
        handler = self.options.exception_handler
        if handler is None or error is None:
            return
        record = TickerRecord.from_job(
            attrs.evolve(
                job,
                status=TickerStatus.IDLE if will_retry else TickerStatus.FAILED,
                retry_count=count,
                node=self.node_id,
                elapsed_ms=int(elapsed * 1000),
                exception_message=message,
            )
        )
        try:
            handler(record, error)
        except Exception:
            log.exception("the scheduler's exception handler failed for job %s", job.id)

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
            outcomes.append(_handed_back(entry.claim))
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


def _handed_back(claim: Claim) -> Outcome:
    return Outcome(job_id=claim.job.id, fence=claim.fence, kind=OutcomeKind.HANDED_BACK)


def _scheduled_for(job: JobRecord) -> datetime:
    """A cron occurrence's own time (its id ends in ``@ms``), else the job's due time."""
    ms = job.due_ms
    if job.cron_id is not None and job.retry_count == 0:
        suffix = job.id.rpartition("@")[2].partition(".")[0]
        if suffix.isdigit():
            ms = int(suffix)
    return datetime.fromtimestamp(ms / 1000, UTC)


def _decode(job: JobRecord, function: TickerFunction) -> Any:
    if job.request is None:
        return None
    value = loads(job.request)
    return structure(value, function.request_type) if function.request_type is not None else value
