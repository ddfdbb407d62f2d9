"""The in-memory job store: one process, the embedded default (no Redis).

It keeps the contract of :mod:`tickerq.scheduler.store` within one process:
every verb runs under one lock, so threads racing ``claim_due`` claim each job
once. Time is the injected clock's wall time in milliseconds (a
:class:`~tickerq._runtime.clock.ManualClock` makes tests drive it).

Wake-ups: :meth:`MemoryJobStore.add_wake_listener` registers a callable that
gets the earliest due time (ms) whenever jobs become due-able. Listeners run on
the calling thread, after the store's lock is released, so a listener may call
the store; it should only set an event and return.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from typing import Any

import attrs

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq.durations import to_milliseconds
from tickerq.scheduler.model import (
    Claim,
    ClaimBatch,
    CronRecord,
    FunctionLimits,
    JobRecord,
    NewCron,
    NewJob,
    Outcome,
    OutcomeKind,
    TickerStatus,
)
from tickerq.scheduler.store import DEFAULT_RETENTION

__all__ = ["MemoryJobStore", "WakeListener", "retry_delay_ms"]

log = logging.getLogger(__name__)

#: Called with the earliest due time (store-clock ms) of work that just became due-able.
WakeListener = Callable[[int], None]

_CLAIMED = frozenset({TickerStatus.QUEUED, TickerStatus.IN_PROGRESS})


def retry_delay_ms(intervals: Sequence[int], retry_count: int) -> int:
    """The delay before retry number ``retry_count`` (1-based): the last interval repeats."""
    if not intervals:
        return 0
    return int(intervals[min(retry_count, len(intervals)) - 1]) * 1000


class MemoryJobStore:
    """A thread-safe job store in this process's memory.

    Args:
        clock: Where "now" comes from (wall time, in ms).
        retention: How long finished jobs are kept when a verb has no retention of its own.
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, retention: timedelta = DEFAULT_RETENTION) -> None:
        self._clock = clock
        self._retention_ms = to_milliseconds(retention)
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._expires: dict[str, int] = {}  # finished job id -> when it is dropped
        self._finished: list[tuple[int, str]] = []  # heap of (expiry, id): what expire_finished trims
        self._due: dict[str, list[tuple[int, str]]] = {}  # function -> sorted (due, id) of IDLE jobs
        self._running: dict[str, set[str]] = {}  # function -> QUEUED/IN_PROGRESS ids
        self._claims: dict[str, set[str]] = {}  # node -> ids it holds
        self._fence = 0
        self._crons: dict[str, CronRecord] = {}
        self._listeners: list[WakeListener] = []

    def __repr__(self) -> str:
        return f"MemoryJobStore(jobs={len(self._jobs)}, crons={len(self._crons)})"

    # -- wake-ups -------------------------------------------------------------

    def add_wake_listener(self, listener: WakeListener) -> None:
        """Call ``listener(earliest_due_ms)`` whenever jobs become due-able."""
        with self._lock:
            self._listeners.append(listener)

    def remove_wake_listener(self, listener: WakeListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _wake(self, due_ms: int | None) -> None:
        if due_ms is None:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(due_ms)
            except Exception:
                log.exception("scheduler wake listener %r failed", listener)

    # -- internals (called with the lock held) -------------------------------

    def now_ms(self) -> int:
        """See :meth:`JobStore.now_ms`: the clock's wall time in ms."""
        return int(self._clock.time() * 1000)

    def _live(self, job_id: str, now: int) -> JobRecord | None:
        expires = self._expires.get(job_id)
        if expires is not None and expires <= now:
            del self._expires[job_id]
            self._jobs.pop(job_id, None)
            return None
        return self._jobs.get(job_id)

    def _enqueue(self, job: JobRecord) -> JobRecord:
        self._jobs[job.id] = job
        bisect.insort(self._due.setdefault(job.function, []), (job.due_ms, job.id))
        return job

    def _dequeue(self, job: JobRecord) -> None:
        entries = self._due.get(job.function)
        if not entries:
            return
        at = bisect.bisect_left(entries, (job.due_ms, job.id))
        if at < len(entries) and entries[at] == (job.due_ms, job.id):
            del entries[at]
        if not entries:
            del self._due[job.function]

    def _hold(self, job: JobRecord) -> None:
        self._running.setdefault(job.function, set()).add(job.id)
        if job.node is not None:
            self._claims.setdefault(job.node, set()).add(job.id)

    def _unhold(self, job: JobRecord) -> None:
        for index, member in ((self._running, job.function), (self._claims, job.node)):
            if member is None:
                continue
            ids = index.get(member)
            if ids is not None:
                ids.discard(job.id)
                if not ids:
                    del index[member]

    def _close(
        self, job: JobRecord, status: TickerStatus, now: int, retention_ms: int, **changes: Any
    ) -> None:
        job = attrs.evolve(job, status=status, **changes)
        self._jobs[job.id] = job
        expires = now + retention_ms
        self._expires[job.id] = expires
        heapq.heappush(self._finished, (expires, job.id))

    def _return(self, job: JobRecord, now: int, *, never_ran: bool = False, **changes: Any) -> JobRecord:
        """An attempt did not finish: IDLE and due now, or CANCELLED when asked to."""
        self._unhold(job)
        if job.cancel_requested:
            self._close(job, TickerStatus.CANCELLED, now, self._retention_ms, **changes)
            return self._jobs[job.id]
        rerun = job.is_rerun or (job.status is TickerStatus.IN_PROGRESS and not never_ran)
        return self._enqueue(
            attrs.evolve(job, status=TickerStatus.IDLE, due_ms=now, is_rerun=rerun, **changes)
        )

    # -- timed jobs -----------------------------------------------------------

    def add_jobs(self, jobs: Sequence[NewJob]) -> list[int]:
        """See :meth:`JobStore.add_jobs`."""
        result: list[int] = []
        earliest: int | None = None
        with self._lock:
            now = self.now_ms()
            for new in jobs:
                existing = self._live(new.id, now)
                if existing is not None:
                    result.append(existing.due_ms)
                    continue
                due = new.due_ms if new.due_ms is not None else now + (new.delay_ms or 0)
                self._enqueue(
                    JobRecord(
                        id=new.id,
                        function=new.function,
                        status=TickerStatus.IDLE,
                        due_ms=due,
                        request=new.request,
                        retries=new.retries,
                        retry_intervals=tuple(new.retry_intervals),
                        created_ms=now,
                    )
                )
                result.append(due)
                earliest = due if earliest is None else min(earliest, due)
        self._wake(earliest)
        return result

    def get_job(self, job_id: str) -> JobRecord | None:
        """See :meth:`JobStore.get_job`."""
        with self._lock:
            return self._live(job_id, self.now_ms())

    def cancel(self, job_id: str) -> JobRecord | None:
        """See :meth:`JobStore.cancel`."""
        with self._lock:
            now = self.now_ms()
            job = self._live(job_id, now)
            if job is None or job.status.finished:
                return job
            if job.status is TickerStatus.IDLE:
                self._dequeue(job)
                self._close(job, TickerStatus.CANCELLED, now, self._retention_ms)
            else:
                self._jobs[job_id] = attrs.evolve(job, cancel_requested=True)
            return self._jobs[job_id]

    # -- claiming and running -------------------------------------------------

    def claim_due(
        self,
        node: str,
        functions: Sequence[FunctionLimits],
        limit: int,
        *,
        start: bool = False,
        outcomes: Sequence[Outcome] = (),
        retention: timedelta | None = None,
    ) -> ClaimBatch:
        """See :meth:`JobStore.claim_due`."""
        claims: list[Claim] = []
        skipped: list[str] = []
        next_due: int | None = None
        with self._lock:
            now = self.now_ms()
            # Outcomes first, under the same lock (as Redis does in one script): the slots they
            # free are claimable in this very call.
            finished, earliest = self._record(outcomes, retention, now)
            left = limit
            for limits in functions:
                running = self._running.get(limits.name, set())
                room = min(limits.free_slots, left)
                if limits.cluster_concurrency is not None:
                    room = min(room, limits.cluster_concurrency - len(running))
                entries = self._due.get(limits.name, [])
                while room > 0 and entries and entries[0][0] <= now:
                    _, job_id = entries.pop(0)
                    job = self._jobs[job_id]
                    if (
                        limits.skip_if_running
                        and job.cron_id is not None
                        and _occurrence_running(job, running)
                    ):
                        self._close(job, TickerStatus.SKIPPED, now, self._retention_ms)
                        skipped.append(job_id)
                        continue
                    self._fence += 1
                    job = attrs.evolve(job, status=TickerStatus.QUEUED, node=node, fence=self._fence)
                    if start:
                        job = attrs.evolve(job, status=TickerStatus.IN_PROGRESS, executed_at_ms=now)
                    self._jobs[job_id] = job
                    self._hold(job)
                    running = self._running[limits.name]
                    claims.append(Claim(job=job, fence=job.fence))
                    room -= 1
                    left -= 1
                if not entries:
                    self._due.pop(limits.name, None)
                taken = sum(1 for claim in claims if claim.job.function == limits.name)
                cluster_room = limits.cluster_concurrency is None or len(running) < limits.cluster_concurrency
                if entries and limits.free_slots > taken and cluster_room:
                    next_due = entries[0][0] if next_due is None else min(next_due, entries[0][0])
            held = len(self._claims.get(node, ()))
        self._wake(earliest)
        return ClaimBatch(
            claims=tuple(claims),
            skipped=tuple(skipped),
            next_due_ms=next_due,
            now_ms=now,
            held=held,
            finished=tuple(finished),
        )

    def start(self, claims: Sequence[tuple[str, int]], started_ms: int | None = None) -> list[bool]:
        """See :meth:`JobStore.start`."""
        result: list[bool] = []
        with self._lock:
            now = self.now_ms()
            for job_id, fence in claims:
                job = self._live(job_id, now)
                if job is None or job.fence != fence or job.status not in _CLAIMED:
                    result.append(False)
                elif job.cancel_requested:
                    self._unhold(job)
                    self._close(job, TickerStatus.CANCELLED, now, self._retention_ms)
                    result.append(False)
                else:
                    if job.status is TickerStatus.QUEUED:
                        at = now if started_ms is None else started_ms
                        self._jobs[job_id] = attrs.evolve(
                            job, status=TickerStatus.IN_PROGRESS, executed_at_ms=at
                        )
                    result.append(True)
        return result

    def finish(self, outcomes: Sequence[Outcome], retention: timedelta | None = None) -> list[bool]:
        """See :meth:`JobStore.finish`."""
        with self._lock:
            result, earliest = self._record(outcomes, retention, self.now_ms())
        self._wake(earliest)
        return result

    def _record(
        self, outcomes: Sequence[Outcome], retention: timedelta | None, now: int
    ) -> tuple[list[bool], int | None]:
        """Record outcomes (under the lock); returns finish's result and the earliest due again."""
        retention_ms = self._retention_ms if retention is None else to_milliseconds(retention)
        result: list[bool] = []
        earliest: int | None = None
        for outcome in outcomes:
            job = self._live(outcome.job_id, now)
            if job is None or job.fence != outcome.fence or job.status not in _CLAIMED:
                result.append(False)
                continue
            result.append(True)
            changes: dict[str, Any] = {}
            for field in ("executed_at_ms", "elapsed_ms", "exception_message"):
                value = getattr(outcome, field)
                if value is not None:
                    changes[field] = value
            kind = outcome.kind
            if kind is OutcomeKind.DONE:
                self._unhold(job)
                self._close(job, TickerStatus.DONE, now, retention_ms, **changes)
            elif kind is OutcomeKind.SKIPPED:
                self._unhold(job)
                changes["executed_at_ms"] = None  # never ran (a claim that started it set it)
                self._close(job, TickerStatus.SKIPPED, now, retention_ms, **changes)
            elif kind is OutcomeKind.CANCELLED or (kind is OutcomeKind.FAILED and job.cancel_requested):
                self._unhold(job)
                self._close(job, TickerStatus.CANCELLED, now, retention_ms, **changes)
            elif kind is OutcomeKind.FAILED:
                self._unhold(job)
                count = job.retry_count + 1
                if count <= job.retries:
                    due = now + retry_delay_ms(job.retry_intervals, count)
                    self._enqueue(
                        attrs.evolve(job, status=TickerStatus.IDLE, due_ms=due, retry_count=count, **changes)
                    )
                    earliest = due if earliest is None else min(earliest, due)
                else:
                    self._close(job, TickerStatus.FAILED, now, retention_ms, retry_count=count, **changes)
            else:
                back = self._return(job, now, **changes)
                if back.status is TickerStatus.IDLE:
                    earliest = now
        return result, earliest

    def cancel_requests(self, job_ids: Sequence[str]) -> set[str]:
        """See :meth:`JobStore.cancel_requests`."""
        with self._lock:
            now = self.now_ms()
            return {job_id for job_id in job_ids if (job := self._live(job_id, now)) and job.cancel_requested}

    def release_node(self, node: str, keep: Collection[tuple[str, int]] | None = None) -> list[str]:
        """See :meth:`JobStore.release_node` (in one step: nothing else shares this store)."""
        released: list[str] = []
        kept = dict(keep or ())
        with self._lock:
            now = self.now_ms()
            for job_id in sorted(self._claims.get(node, set())):
                job = self._live(job_id, now)
                if job is None or job.node != node or job.status not in _CLAIMED:
                    self._claims.get(node, set()).discard(job_id)
                elif kept.get(job_id) != job.fence:
                    self._return(job, now, never_ran=keep is not None)
                    released.append(job_id)
            if not self._claims.get(node, True):
                del self._claims[node]
        self._wake(now if released else None)
        return released

    def next_due_ms(self, functions: Sequence[str]) -> int | None:
        """See :meth:`JobStore.next_due_ms`."""
        with self._lock:
            dues = [entries[0][0] for name in functions if (entries := self._due.get(name))]
        return min(dues, default=None)

    # -- crons ----------------------------------------------------------------

    def add_cron(self, cron: NewCron, first_ms: int) -> CronRecord:
        """See :meth:`JobStore.add_cron`."""
        with self._lock:
            for existing in self._crons.values():
                if (existing.function, existing.expression, existing.time_zone) == (
                    cron.function,
                    cron.expression,
                    cron.time_zone,
                ):
                    return existing
            if cron.id in self._crons:
                return self._crons[cron.id]
            record = CronRecord(
                id=cron.id,
                function=cron.function,
                expression=cron.expression,
                time_zone=cron.time_zone,
                request=cron.request,
                retries=cron.retries,
                retry_intervals=tuple(cron.retry_intervals),
                next_ms=first_ms,
            )
            self._crons[cron.id] = record
        self._wake(first_ms)
        return record

    def get_cron(self, cron_id: str) -> CronRecord | None:
        """See :meth:`JobStore.get_cron`."""
        with self._lock:
            return self._crons.get(cron_id)

    def list_crons(self) -> list[CronRecord]:
        """See :meth:`JobStore.list_crons` (ordered by id)."""
        with self._lock:
            return [self._crons[cron_id] for cron_id in sorted(self._crons)]

    def remove_cron(self, cron_id: str) -> bool:
        """See :meth:`JobStore.remove_cron`."""
        with self._lock:
            return self._crons.pop(cron_id, None) is not None

    def set_cron_enabled(self, cron_id: str, enabled: bool) -> CronRecord | None:
        """See :meth:`JobStore.set_cron_enabled`."""
        with self._lock:
            cron = self._crons.get(cron_id)
            if cron is not None:
                cron = self._crons[cron_id] = attrs.evolve(cron, enabled=enabled)
        if cron is not None and enabled and cron.next_ms is not None:
            self._wake(cron.next_ms)
        return cron

    def materialize_cron(
        self, cron_id: str, expected_next_ms: int, occurrence_ms: int | None, new_next_ms: int, skipped: int
    ) -> bool:
        """See :meth:`JobStore.materialize_cron`."""
        with self._lock:
            cron = self._crons.get(cron_id)
            if cron is None or not cron.enabled or cron.next_ms != expected_next_ms:
                return False
            self._crons[cron_id] = attrs.evolve(
                cron, next_ms=new_next_ms, skipped_count=cron.skipped_count + skipped
            )
            if occurrence_ms is not None:
                self._add_occurrence(cron, f"{cron_id}@{occurrence_ms}", occurrence_ms, self.now_ms())
        self._wake(occurrence_ms)
        return True

    def _add_occurrence(self, cron: CronRecord, job_id: str, due_ms: int, now: int) -> None:
        if self._live(job_id, now) is not None:
            return
        self._enqueue(
            JobRecord(
                id=job_id,
                function=cron.function,
                status=TickerStatus.IDLE,
                due_ms=due_ms,
                request=cron.request,
                retries=cron.retries,
                retry_intervals=cron.retry_intervals,
                cron_id=cron.id,
                created_ms=now,
            )
        )

    def run_now(self, cron_id: str) -> str | None:
        """See :meth:`JobStore.run_now`."""
        with self._lock:
            cron = self._crons.get(cron_id)
            if cron is None:
                return None
            now = self.now_ms()
            n = 1
            while self._live(f"{cron_id}@{now}.{n}", now) is not None:
                n += 1
            job_id = f"{cron_id}@{now}.{n}"
            self._add_occurrence(cron, job_id, now, now)
        self._wake(now)
        return job_id

    # -- housekeeping ---------------------------------------------------------

    def expire_finished(self, limit: int = 1000) -> int:
        """See :meth:`JobStore.expire_finished`."""
        dropped = 0
        with self._lock:
            now = self.now_ms()
            while self._finished and dropped < limit and self._finished[0][0] <= now:
                expires, job_id = heapq.heappop(self._finished)
                if self._expires.get(job_id) == expires:
                    del self._expires[job_id]
                    self._jobs.pop(job_id, None)
                dropped += 1
        return dropped


def _occurrence_running(job: JobRecord, running: set[str]) -> bool:
    prefix = f"{job.cron_id}@"
    return any(other.startswith(prefix) for other in running)
