"""The job store contract: few verbs, each saying what it guarantees.

Two stores implement it: the Redis store (many nodes; every verb is one round
trip, atomic in a Lua script) and the in-memory store (the embedded default,
one process). One contract test suite runs against both.

Guarantees every implementation keeps:

- **One claim per attempt.** ``claim_due`` moves a due IDLE job to QUEUED
  under this node atomically and gives it a fence higher than any fence given
  before; no other call can claim it until it is IDLE again.
- **Fenced outcomes.** ``start`` and ``finish`` act only when the job's
  current fence equals the one given; a stale report (from a node declared
  dead, whose job was handed back and claimed again) changes nothing.
- **Claims live as long as their node.** A claim has no timeout of its own;
  only ``release_node`` (the node is dead, or restarted under the same id, or
  a live node handing back claims it does not know it holds, e.g. after a lost
  claim reply) hands claims back, as IDLE and due now; ``is_rerun`` is set on
  the ones that had started (IN_PROGRESS), since a QUEUED job never ran.
  ``ClaimBatch.held`` tells a node how many claims the store holds for it, so
  it can notice claims it does not know about.
- **Cancels win.** A job with ``cancel_requested`` is never run again: ``start``
  refuses it (CANCELLED), and a failed, handed-back or released attempt makes
  it CANCELLED instead of IDLE.
- **One clock.** "Is it due" is decided on the store's clock (Redis ``TIME``),
  never the caller's, so clock skew between nodes cannot start a job early.
- **Idempotent chores.** ``materialize_cron``, ``release_node`` and
  ``expire_finished`` are safe when several nodes run them at once.
- **Bounded storage.** Finished jobs are deleted ``retention`` after they
  finish; no index keeps them longer. A store has a default retention
  (:data:`DEFAULT_RETENTION` unless given) for the jobs that finish inside
  other verbs (cancel, skip, undecodable records).
- **Wake-ups.** Whenever a job becomes due-able (added, retried, handed back,
  an occurrence materialised), the store tells idle nodes the earliest due
  time: the Redis store PUBLISHes on a channel, the memory store calls its
  listeners (see each store's docstring).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Protocol

from tickerq.scheduler.model import (
    ClaimBatch,
    CronRecord,
    FunctionLimits,
    JobRecord,
    NewCron,
    NewJob,
    Outcome,
)

__all__ = ["DEFAULT_RETENTION", "JobStore"]

#: How long finished jobs are kept unless the store or the call says otherwise.
DEFAULT_RETENTION = timedelta(days=7)


class JobStore(Protocol):
    """Where jobs and crons live; see the module docstring for the guarantees."""

    def now_ms(self) -> int:
        """The store's clock, in Unix milliseconds."""
        ...

    # -- timed jobs ---------------------------------------------------------

    def add_jobs(self, jobs: Sequence[NewJob]) -> list[int]:
        """Store new IDLE jobs (one round trip for the batch) and wake the nodes.

        A job whose id exists already is left as it is (its due time is
        returned). A job with neither ``due_ms`` nor ``delay_ms`` is due now.

        Returns:
            Each job's due time (store clock ms), in the order given.
        """
        ...

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None when unknown (or expired after retention)."""
        ...

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a job: IDLE becomes CANCELLED at once; QUEUED or IN_PROGRESS
        gets ``cancel_requested`` (the running node sees it in ``cancel_requests``).

        Returns:
            The job after the call, or None when unknown. A finished job is unchanged.
        """
        ...

    # -- claiming and running -----------------------------------------------

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
        """Claim up to ``limit`` due IDLE jobs of the given functions for ``node``.

        ``outcomes`` are recorded first, as ``finish(outcomes, retention)``
        records them (``ClaimBatch.finished`` holds its result), in the same
        round trip: a node's loop reports what ended and takes new work in one
        call, and the slots the outcomes free are claimable at once.
        ``ClaimBatch.held`` counts the node's claims after both.

        With ``start``, the claimed jobs are IN_PROGRESS at once (``executed_at_ms``
        = the claim's time), for a node that runs them right away: it saves the
        ``start`` round trip, and a cancel requested afterwards reaches the job
        through ``cancel_requests`` instead of ``start`` refusing it.

        Respects each function's ``free_slots``, ``cluster_concurrency`` and
        ``skip_if_running`` (a cron occurrence is SKIPPED while another
        occurrence of the same cron is QUEUED or IN_PROGRESS anywhere); never
        claims a function not listed (rolling deploys: a job for a function no
        live node has stays IDLE). Jobs whose stored record cannot be decoded
        are marked FAILED with the reason and never block the others. Due jobs
        are claimed earliest first.

        ``ClaimBatch.next_due_ms`` is the earliest due time among the listed
        functions this node still has room for after the call (it may be in
        the past when ``limit`` stopped the call); None when there is none.
        """
        ...

    def start(self, claims: Sequence[tuple[str, int]], started_ms: int | None = None) -> list[bool]:
        """Mark claimed jobs IN_PROGRESS; each ``(job_id, fence)``.

        ``executed_at_ms`` becomes ``started_ms`` (default: the store's clock).
        A claimed job whose cancel was requested meanwhile becomes CANCELLED
        and gets False.

        Returns:
            For each, whether the fence still held (False: do not run it).
        """
        ...

    def finish(self, outcomes: Sequence[Outcome], retention: timedelta | None = None) -> list[bool]:
        """Record how attempts ended (one round trip for the batch).

        DONE, CANCELLED and SKIPPED finish the job; FAILED schedules a retry when one
        is left (IDLE, due after the next retry interval; no intervals: due
        now) else finishes it; HANDED_BACK makes it IDLE and due now, with
        ``is_rerun`` when it had started. A finished job is deleted
        ``retention`` (default: the store's) after it finished.

        Returns:
            For each outcome, whether its fence still held (False: ignored).
        """
        ...

    def cancel_requests(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these running jobs were asked to cancel."""
        ...

    def release_node(self, node: str, keep: Collection[tuple[str, int]] | None = None) -> list[str]:
        """Hand back every claim ``node`` holds (it is dead, or restarted), except ``keep``.

        ``keep`` (given, even empty) lists ``(job_id, fence)`` claims a live node
        knows it holds (running, or finished but not reported yet); only a claim
        with that very fence is kept. The node never ran the claims it hands back
        so (it does not know them: a lost claim reply), so they are not marked
        ``is_rerun``, even when claimed started. A store may hand back a large number of claims in
        several bounded steps, so that no single step blocks a shared server
        for long; each step is atomic and the verb is idempotent.

        Returns:
            The ids handed back (IDLE, due now; without ``keep``, ``is_rerun`` set
            on those that had started; CANCELLED instead when a cancel was requested).
        """
        ...

    def next_due_ms(self, functions: Sequence[str]) -> int | None:
        """The earliest due time among IDLE jobs of these functions, if any."""
        ...

    # -- crons ----------------------------------------------------------------

    def add_cron(self, cron: NewCron, first_ms: int) -> CronRecord:
        """Store a cron whose first occurrence is ``first_ms``; idempotent per
        (function, expression, time zone): an existing one is returned unchanged."""
        ...

    def get_cron(self, cron_id: str) -> CronRecord | None:
        """The cron, or None when unknown."""
        ...

    def list_crons(self) -> list[CronRecord]:
        """Every cron definition."""
        ...

    def remove_cron(self, cron_id: str) -> bool:
        """Delete a cron; its occurrences already materialised still run."""
        ...

    def set_cron_enabled(self, cron_id: str, enabled: bool) -> CronRecord | None:
        """Disable (no new occurrences) or enable a cron."""
        ...

    def materialize_cron(
        self, cron_id: str, expected_next_ms: int, occurrence_ms: int | None, new_next_ms: int, skipped: int
    ) -> bool:
        """Advance a cron from ``expected_next_ms`` to ``new_next_ms`` (compare-and-set).

        When ``occurrence_ms`` is set, an IDLE job ``f"{cron_id}@{occurrence_ms}"``
        is created for it in the same step (so an occurrence exists once, however
        many nodes materialise at once). ``skipped`` occurrences missed during
        downtime are added to the cron's count.

        Returns:
            False when another node advanced the cron first, or the cron is
            unknown or disabled (nothing changed).
        """
        ...

    def run_now(self, cron_id: str) -> str | None:
        """Add one extra occurrence of the cron, due now (also when disabled).

        Returns:
            Its job id (``f"{cron_id}@{now_ms}.{n}"``), or None for an unknown cron.
        """
        ...

    # -- housekeeping -----------------------------------------------------------

    def expire_finished(self, limit: int = 1000) -> int:
        """Drop index entries of finished jobs past retention; returns how many."""
        ...
