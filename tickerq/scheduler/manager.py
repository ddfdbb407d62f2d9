"""``TickerManager``: schedule, query and cancel jobs; add and control crons.

A manager only talks to the job store, so any process can use one: a web
request handler or a script schedules jobs that the worker nodes run.
Scheduling a function this process does not have is allowed (rolling deploys).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from tickerq.durations import to_timedelta
from tickerq.errors import ConfigurationError, SerializationError
from tickerq.scheduler.cron import CronSchedule, resolve_time_zone
from tickerq.scheduler.function import FunctionRegistry, check_retries
from tickerq.scheduler.model import CronRecord, JobRecord, NewCron, NewJob, TickerStatus
from tickerq.scheduler.store import JobStore
from tickerq.serialization import dumps, loads

__all__ = ["CronTickerRecord", "TickerManager", "TickerRecord", "TimeTicker", "cron_id_for", "to_datetime"]

#: Jobs per store call in ``schedule_many`` (one round trip each).
BATCH = 500


def to_datetime(ms: int | None) -> datetime | None:
    """Store-clock milliseconds as an aware UTC datetime."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def cron_id_for(function: str, expression: str, time_zone: str, *, code: bool = False) -> str:
    """The stable id of a cron: the same definition gets the same id on every node.

    Crons declared with ``@ticker_function(cron=...)`` get a ``code`` id, so a
    node can remove the ones its code no longer declares.
    """
    digest = hashlib.blake2b(f"{function}\0{expression}\0{time_zone}".encode(), digest_size=6).hexdigest()
    return f"{function}:{'code-' if code else ''}{digest}"


def _decoded(request: bytes | None) -> Any:
    if request is None:
        return None
    try:
        return loads(request)
    except SerializationError:
        return None


@attrs.frozen(kw_only=True)
class TickerRecord:
    """A job as ``TickerManager.get`` reports it (immutable; times are aware UTC datetimes)."""

    id: str
    function: str
    status: TickerStatus
    scheduled_for: datetime  #: when it is (or was) due
    request: Any = attrs.field(repr=False)  #: the decoded JSON request, or None
    retries: int
    retry_count: int
    node: str | None
    executed_at: datetime | None  #: when the last attempt started
    elapsed: timedelta | None  #: how long the last attempt ran
    exception_message: str | None
    is_rerun: bool
    cron_id: str | None
    created_at: datetime | None
    cancel_requested: bool

    @classmethod
    def from_job(cls, job: JobRecord) -> TickerRecord:
        """Build the public record from the store's."""
        return cls(
            id=job.id,
            function=job.function,
            status=job.status,
            scheduled_for=datetime.fromtimestamp(job.due_ms / 1000, UTC),
            request=_decoded(job.request),
            retries=job.retries,
            retry_count=job.retry_count,
            node=job.node,
            executed_at=to_datetime(job.executed_at_ms),
            elapsed=None if job.elapsed_ms is None else timedelta(milliseconds=job.elapsed_ms),
            exception_message=job.exception_message,
            is_rerun=job.is_rerun,
            cron_id=job.cron_id,
            created_at=to_datetime(job.created_ms or None),
            cancel_requested=job.cancel_requested,
        )


@attrs.frozen(kw_only=True)
class CronTickerRecord:
    """A cron as ``TickerManager.get_cron`` reports it."""

    id: str
    function: str
    expression: str
    time_zone: str
    enabled: bool
    next_occurrence: datetime | None
    skipped_count: int  #: occurrences skipped after downtime, without a record each
    request: Any = attrs.field(repr=False)

    @classmethod
    def from_cron(cls, cron: CronRecord) -> CronTickerRecord:
        """Build the public record from the store's."""
        return cls(
            id=cron.id,
            function=cron.function,
            expression=cron.expression,
            time_zone=cron.time_zone,
            enabled=cron.enabled,
            next_occurrence=to_datetime(cron.next_ms),
            skipped_count=cron.skipped_count,
            request=_decoded(cron.request),
        )


@attrs.frozen(kw_only=True)
class TimeTicker:
    """One job for ``TickerManager.schedule_many``; fields as in ``schedule``."""

    function: Any
    at: timedelta | datetime | int | float | None = None
    request: Any = None
    retries: int | None = None
    retry_intervals: Sequence[int] | None = None


class TickerManager:
    """Schedules, queries and cancels jobs; adds, removes and controls crons.

    Get one from ``container.ticker_manager()``. Without ``init_resources()``
    it is a producer: it writes to the store and runs nothing.

    Args:
        store: The job store.
        registry: The functions this process knows (for their defaults).
        time_zone: The default zone of crons added here (``SchedulerOptions.time_zone``).
    """

    def __init__(self, store: JobStore, registry: FunctionRegistry, time_zone: str = "UTC") -> None:
        self.store = store
        self.registry = registry
        self.time_zone = time_zone

    # -- timed jobs -------------------------------------------------------------

    def schedule(
        self,
        function: Any,
        at: timedelta | datetime | int | float | None = None,
        *,
        request: Any = None,
        retries: int | None = None,
        retry_intervals: Sequence[int] | None = None,
    ) -> str:
        """Schedule one run of ``function``.

        Args:
            function: The function's name, or the decorated callable.
            at: A ``timedelta`` (or seconds) from now on the store's clock (Redis
                ``TIME``), or an aware ``datetime``; None means now.
            request: JSON-able payload (dataclasses and attrs instances too).
            retries: Extra attempts after a failure (default: the function's).
            retry_intervals: Seconds between attempts, the last repeating
                (default: the function's).

        Returns:
            The job id.

        Raises:
            ConfigurationError: A value is invalid (named in the message).
            SerializationError: The request has no JSON form.
        """
        job = self._new_job(TimeTicker(function=function, at=at, request=request, retries=retries,
                                       retry_intervals=retry_intervals))  # fmt: skip
        self.store.add_jobs([job])
        return job.id

    def schedule_many(self, jobs: Iterable[TimeTicker | Mapping[str, Any]]) -> list[str]:
        """Schedule many jobs, one store round trip per batch of 500.

        Args:
            jobs: ``TimeTicker`` values, or mappings with ``schedule``'s
                arguments (``{"function": "SendEmail", "at": timedelta(...), ...}``).

        Returns:
            The job ids, in order. Every job is validated before any is stored.
        """
        new = [self._new_job(job if isinstance(job, TimeTicker) else _time_ticker(job)) for job in jobs]
        for start in range(0, len(new), BATCH):
            self.store.add_jobs(new[start : start + BATCH])
        return [job.id for job in new]

    def _new_job(self, spec: TimeTicker) -> NewJob:
        name = self.registry.name_of(spec.function)
        retries, intervals = self._retries(name, spec.retries, spec.retry_intervals)
        due_ms: int | None = None
        delay_ms: int | None = None
        if isinstance(spec.at, datetime):
            if spec.at.tzinfo is None or spec.at.utcoffset() is None:
                raise ConfigurationError(
                    f"at={spec.at!r} for {name!r} is not allowed: expected an aware datetime "
                    "(with tzinfo) or a timedelta"
                )
            due_ms = round(spec.at.timestamp() * 1000)
        elif spec.at is None:
            delay_ms = 0
        else:
            delta = to_timedelta(spec.at, field="at", allow_zero=True)
            delay_ms = round(delta.total_seconds() * 1000)
        body = None if spec.request is None else dumps(spec.request)
        return NewJob(
            id=uuid.uuid4().hex,
            function=name,
            request=body,
            due_ms=due_ms,
            delay_ms=delay_ms,
            retries=retries,
            retry_intervals=intervals,
        )

    def _retries(
        self, name: str, retries: int | None, intervals: Sequence[int] | None
    ) -> tuple[int, tuple[int, ...]]:
        known = self.registry.get(name)
        return check_retries(
            (known.retries if known else 0) if retries is None else retries,
            (known.retry_intervals if known else ()) if intervals is None else intervals,
            function=name,
        )

    def get(self, job_id: str) -> TickerRecord | None:
        """The job's record, or None for an unknown (or expired) id."""
        job = self.store.get_job(job_id)
        return None if job is None else TickerRecord.from_job(job)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: a waiting one at once; a running one is asked to stop
        (its ``context.cancelled`` is set) and is not retried.

        Returns:
            False when the id is unknown or the job had already finished.
        """
        before = self.store.get_job(job_id)
        if before is None or before.status.finished:
            return False
        after = self.store.cancel(job_id)
        return after is not None and (after.status is TickerStatus.CANCELLED or after.cancel_requested)

    # -- crons --------------------------------------------------------------------

    def add_cron(
        self,
        function: Any,
        expression: str,
        *,
        request: Any = None,
        time_zone: str | None = None,
        retries: int | None = None,
        retry_intervals: Sequence[int] | None = None,
    ) -> str:
        """Add a cron (idempotent for the same function, expression and time zone).

        Args:
            function: The function's name, or the decorated callable.
            expression: 6 fields, seconds first (5 fields: seconds = 0).
            request: The payload every occurrence gets.
            time_zone: IANA zone (default ``SchedulerOptions.time_zone``).

        Returns:
            The cron's id.

        Raises:
            ConfigurationError: The expression or zone is invalid (naming the function).
        """
        name = self.registry.name_of(function)
        zone = self.time_zone if time_zone is None else time_zone
        schedule = CronSchedule.parse(expression, zone, function=name)
        retries_, intervals = self._retries(name, retries, retry_intervals)
        return self.add_cron_definition(
            NewCron(
                id=cron_id_for(name, schedule.expression, schedule.zone.key),
                function=name,
                expression=schedule.expression,
                time_zone=schedule.zone.key,
                request=None if request is None else dumps(request),
                retries=retries_,
                retry_intervals=intervals,
            )
        ).id

    def add_cron_definition(self, cron: NewCron) -> CronRecord:
        """Store a validated cron, its first occurrence after the store's now."""
        schedule = CronSchedule(cron.expression, resolve_time_zone(cron.time_zone))
        return self.store.add_cron(cron, schedule.next_after(self.store.now_ms()))

    def remove_cron(self, cron_id: str) -> bool:
        """Delete a cron; returns False when unknown. Occurrences already due still run."""
        return self.store.remove_cron(cron_id)

    def get_cron(self, cron_id: str) -> CronTickerRecord | None:
        """The cron's record, or None."""
        cron = self.store.get_cron(cron_id)
        return None if cron is None else CronTickerRecord.from_cron(cron)

    def list_crons(self) -> list[CronTickerRecord]:
        """Every cron."""
        return [CronTickerRecord.from_cron(cron) for cron in self.store.list_crons()]

    def run_now(self, cron_id: str) -> str | None:
        """Run one extra occurrence of a cron now; returns its job id (None: unknown cron)."""
        return self.store.run_now(cron_id)

    def disable_cron(self, cron_id: str) -> bool:
        """Stop a cron's occurrences (until ``enable_cron``); False when unknown."""
        return self.store.set_cron_enabled(cron_id, False) is not None

    def enable_cron(self, cron_id: str) -> bool:
        """Resume a cron from its next occurrence after now (the ones missed while
        disabled are not run); False when unknown."""
        cron = self.store.set_cron_enabled(cron_id, True)
        if cron is None:
            return False
        if cron.next_ms is not None:
            schedule = CronSchedule(cron.expression, resolve_time_zone(cron.time_zone))
            now = self.store.now_ms()
            if cron.next_ms < now:
                self.store.materialize_cron(cron.id, cron.next_ms, None, schedule.next_after(now), 0)
        return True

    def __repr__(self) -> str:
        return f"TickerManager(store={self.store!r})"


def _time_ticker(fields: Mapping[str, Any]) -> TimeTicker:
    try:
        return TimeTicker(**fields)
    except TypeError as exc:
        raise ConfigurationError(
            f"schedule_many item {dict(fields)!r} is not allowed: expected a TimeTicker or a mapping "
            f"with function, at, request, retries, retry_intervals ({exc})"
        ) from exc
