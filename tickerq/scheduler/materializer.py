"""Turning cron definitions into occurrence jobs, with an explicit downtime policy.

Each running node materialises the crons of the functions it has, a little
ahead of time (``LOOKAHEAD``), so an occurrence is stored before it is due and
starts on time. The store's compare-and-set (``materialize_cron``) makes this
safe when several nodes do it at once: each occurrence exists once.

Occurrences more than ``threshold`` in the past (the cluster was down, or no
node had the function) are *missed*: at most one of them runs (the latest,
``run_once``) or none (``skip``); the rest are counted on the cron as skipped
and logged once, never replayed one by one. Occurrences stored ahead of time
(``LOOKAHEAD_MS``) before the cluster went down are missed too: a node that
claims one finds it :meth:`CronMaterializer.superseded` and marks it SKIPPED,
unless it is the one to run.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import timedelta

import attrs

from tickerq.scheduler.cron import CronSchedule, resolve_time_zone
from tickerq.scheduler.model import CronRecord, JobRecord
from tickerq.scheduler.store import JobStore

__all__ = ["LOOKAHEAD_MS", "CronMaterializer"]

log = logging.getLogger(__name__)

#: Occurrences are stored this long before they are due.
LOOKAHEAD_MS = 2_000

#: How often the cron list is read again (to see crons added elsewhere).
REFRESH_MS = 1_000

#: Missed occurrences are counted no further than this (the log says "at least").
_COUNT_CAP = 100_000

#: At most this many occurrences per cron per pass (a per-second cron needs ~3).
_PER_PASS = 50


class CronMaterializer:
    """Materialises due occurrences of the crons of ``functions``.

    Args:
        store: The job store.
        functions: The functions whose crons this node materialises.
        policy: ``"run_once"`` or ``"skip"`` for missed occurrences.
        threshold: How late an occurrence may be and still run normally.
    """

    def __init__(
        self, store: JobStore, functions: Collection[str], policy: str, threshold: timedelta
    ) -> None:
        self.store = store
        self.functions = frozenset(functions)
        self.policy = policy
        self.threshold_ms = int(threshold.total_seconds() * 1000)
        self._crons: dict[str, CronRecord] = {}
        self._schedules: dict[tuple[str, str], CronSchedule] = {}
        self._refresh_at = 0

    def run(self, now_ms: int) -> int:
        """Materialise what is due by ``now_ms + LOOKAHEAD_MS``.

        Returns:
            When (store-clock ms) to call again.
        """
        if now_ms >= self._refresh_at:
            self._crons = {c.id: c for c in self.store.list_crons() if c.function in self.functions}
            self._refresh_at = now_ms + REFRESH_MS
        for cron_id in list(self._crons):
            self._advance(cron_id, now_ms)
        upcoming = [
            c.next_ms - LOOKAHEAD_MS for c in self._crons.values() if c.enabled and c.next_ms is not None
        ]
        return min([self._refresh_at, *upcoming])

    def superseded(self, job: JobRecord, now_ms: int) -> bool:
        """Whether a claimed cron occurrence was missed and must be SKIPPED, not run.

        An occurrence more than the threshold late is missed: with ``skip`` it
        never runs; with ``run_once`` it runs only when no later occurrence of its
        cron was missed too (the latest missed one runs, on whichever node claims
        it). Retries, re-runs and ``run_now`` occurrences always run.
        """
        occurrence = occurrence_ms(job)
        boundary = now_ms - self.threshold_ms
        if occurrence is None or occurrence > boundary:
            return False
        if self.policy != "run_once":
            return True
        cron = self._crons.get(job.cron_id or "") or self.store.get_cron(job.cron_id or "")
        if cron is None:
            return False  # removed meanwhile: nothing later will run, so this one does
        return self._schedule(cron).last_between(occurrence, boundary) is not None

    def forget(self) -> None:
        """Read the cron list again on the next run (a cron was added or changed)."""
        self._refresh_at = 0

    def _schedule(self, cron: CronRecord) -> CronSchedule:
        key = (cron.expression, cron.time_zone)
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = self._schedules[key] = CronSchedule(cron.expression, resolve_time_zone(cron.time_zone))
        return schedule

    def _advance(self, cron_id: str, now_ms: int) -> None:
        for _ in range(_PER_PASS):
            cron = self._crons.get(cron_id)
            if (
                cron is None
                or not cron.enabled
                or cron.next_ms is None
                or cron.next_ms > now_ms + LOOKAHEAD_MS
            ):
                return
            schedule = self._schedule(cron)
            expected = cron.next_ms
            boundary = now_ms - self.threshold_ms
            if expected <= boundary:
                missed = schedule.count_between(expected - 1, boundary, _COUNT_CAP)
                occurrence = (
                    schedule.last_between(expected - 1, boundary) if self.policy == "run_once" else None
                )
                skipped = missed - (1 if occurrence is not None else 0)
                new_next = schedule.next_after(boundary)
            else:
                occurrence, skipped, new_next = expected, 0, schedule.next_after(expected)
            if not self.store.materialize_cron(cron_id, expected, occurrence, new_next, skipped):
                # Another node advanced it first (or it was removed or disabled): read it again.
                fresh = self.store.get_cron(cron_id)
                if fresh is None:
                    self._crons.pop(cron_id, None)
                    return
                self._crons[cron_id] = fresh
                if fresh.next_ms == expected:  # disabled meanwhile: nothing to do
                    return
                continue
            if skipped:
                log.warning(
                    "cron %s (%s): %s%d occurrence(s) missed by more than %.0f s were skipped; %s",
                    cron_id,
                    cron.function,
                    "at least " if missed >= _COUNT_CAP else "",
                    skipped,
                    self.threshold_ms / 1000,
                    "the latest one runs now" if occurrence is not None else "none runs",
                )
            self._crons[cron_id] = _advanced(cron, new_next, skipped)


def occurrence_ms(job: JobRecord) -> int | None:
    """A scheduled cron occurrence's own time (its id ends in ``@ms``); None for
    other jobs, retries, re-runs and ``run_now`` occurrences (``@ms.n``)."""
    if job.cron_id is None or job.retry_count or job.is_rerun:
        return None
    suffix = job.id.rpartition("@")[2]
    return int(suffix) if suffix.isdigit() else None


def _advanced(cron: CronRecord, next_ms: int, skipped: int) -> CronRecord:
    return attrs.evolve(cron, next_ms=next_ms, skipped_count=cron.skipped_count + skipped)
