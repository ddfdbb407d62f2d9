"""The worker side of the scheduler: running one claimed job and building its outcome.

:class:`JobRunner` runs on a ``tickerq-worker-N`` thread: it publishes the
job's ``TickerQueued`` and ``TickerStarted`` events, decodes the request, calls
the function, turns how it ended into an :class:`Outcome` (handed to the
scheduler loop, which reports it with its next claim), then publishes
``TickerFinished`` or ``TickerFailed`` and calls the exception handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from tickerq._runtime.clock import Clock
from tickerq.events import EventHub, TickerFailed, TickerFinished, TickerQueued, TickerStarted
from tickerq.options import SchedulerOptions
from tickerq.scheduler.function import TickerFunction, TickerFunctionContext
from tickerq.scheduler.manager import TickerRecord
from tickerq.scheduler.model import Claim, JobRecord, Outcome, OutcomeKind, TickerStatus
from tickerq.serialization import loads, structure

__all__ = ["JobRunner", "RunningJob", "handed_back"]

log = logging.getLogger(__name__)

#: Longest exception message stored with a job.
MESSAGE_LIMIT = 2_000


@attrs.define
class RunningJob:
    """One attempt this node runs (or is about to)."""

    claim: Claim
    function: TickerFunction
    context: TickerFunctionContext
    abandoned: bool = False  # handed back at shutdown: its late outcome is not reported
    cancel_requested: bool = False


class JobRunner:
    """Runs claimed jobs on worker threads; see the module docstring.

    Args:
        node_id: This node's identifier.
        options: The scheduler options (its ``exception_handler``).
        container: Handed to job functions as ``context.container``.
        events: Where lifecycle events are published.
        clock: Measures how long an attempt took.
        ended: Called with each attempt and its outcome as it ends; returns whether
            the outcome is reported (False once the attempt was abandoned), and so
            announced.
    """

    def __init__(
        self,
        node_id: str,
        options: SchedulerOptions,
        *,
        container: Any,
        events: EventHub,
        clock: Clock,
        ended: Callable[[RunningJob, Outcome], bool],
    ) -> None:
        self.node_id = node_id
        self.options = options
        self.container = container
        self.events = events
        self.clock = clock
        self._ended = ended

    def prepare(self, claim: Claim, function: TickerFunction) -> RunningJob:
        """The attempt of a claimed job, with the context its function gets."""
        job = claim.job
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
        return RunningJob(claim=claim, function=function, context=context)

    def run(self, entry: RunningJob) -> None:
        """Run the attempt (on a worker thread) and hand its outcome to ``ended``."""
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
            message = f"{type(exc).__name__}: {exc}"[:MESSAGE_LIMIT]
            kind = OutcomeKind.CANCELLED if entry.cancel_requested else OutcomeKind.FAILED
        elapsed = max(0.0, self.clock.monotonic() - started)
        outcome = Outcome(
            job_id=job.id,
            fence=entry.claim.fence,
            kind=kind,
            elapsed_ms=int(elapsed * 1000),
            exception_message=message,
        )
        if self._ended(entry, outcome):
            self._announce(entry, kind, error, message, elapsed)
        if error is not None and not isinstance(error, Exception):
            raise error

    def _announce(
        self,
        entry: RunningJob,
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


def handed_back(claim: Claim) -> Outcome:
    """The outcome of an attempt not finished (shutdown): IDLE again, due now."""
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
