"""Plain values of the scheduler: statuses, job and cron records, store inputs.

Times cross the store boundary as integer milliseconds since the Unix epoch
on the store's clock (Redis ``TIME`` for the Redis store); the public records
the manager returns carry aware datetimes and timedeltas instead.
"""

from __future__ import annotations

import enum

import attrs

from tickerq.errors import InvalidKeyError

__all__ = [
    "Claim",
    "ClaimBatch",
    "CronRecord",
    "FunctionLimits",
    "JobRecord",
    "NewCron",
    "NewJob",
    "Outcome",
    "OutcomeKind",
    "TickerStatus",
]


class TickerStatus(enum.Enum):
    """Where a job is in its life (part of the public contract)."""

    IDLE = "Idle"  #: waiting: not yet due, waiting for a retry, or handed back
    QUEUED = "Queued"  #: claimed by a node, not yet started
    IN_PROGRESS = "InProgress"  #: running on ``node``
    DONE = "Done"
    FAILED = "Failed"  #: the last attempt failed and no retry is left (or it could not be decoded)
    CANCELLED = "Cancelled"
    SKIPPED = "Skipped"  #: a cron occurrence not run (previous still running, or missed in downtime)

    @property
    def finished(self) -> bool:
        """True for the statuses a job never leaves."""
        return self in _FINISHED


_FINISHED = frozenset({TickerStatus.DONE, TickerStatus.FAILED, TickerStatus.CANCELLED, TickerStatus.SKIPPED})


@attrs.frozen(kw_only=True)
class NewJob:
    """A timed job to add to the store.

    Exactly one of ``due_ms`` (absolute) and ``delay_ms`` (relative to the
    store's clock at the moment it is stored) is set.
    """

    id: str
    function: str
    request: bytes | None = None  #: JSON (orjson) or None
    due_ms: int | None = None
    delay_ms: int | None = None
    retries: int = 0  #: extra attempts after a failure
    retry_intervals: tuple[int, ...] = ()  #: seconds; the last one repeats


def _no_at_sign(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    # An occurrence's job id is f"{cron_id}@{ms}": an '@' in the cron id would make one
    # cron's occurrences look like another's (skip_if_running looks them up by prefix).
    if "@" in value:
        raise InvalidKeyError(f"{attribute.name}={value!r} contains '@', which occurrence ids reserve")


@attrs.frozen(kw_only=True)
class NewCron:
    """A cron definition to add (idempotent per function, expression and time zone)."""

    id: str = attrs.field(validator=_no_at_sign)  #: no '@' (occurrence ids are ``f"{id}@{ms}"``)
    function: str
    expression: str  #: normalised 6-field form, seconds first
    time_zone: str  #: IANA name, e.g. "UTC", "Europe/Berlin"
    request: bytes | None = None
    retries: int = 0
    retry_intervals: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class JobRecord:
    """A job as the store holds it (times in store-clock milliseconds)."""

    id: str
    function: str
    status: TickerStatus
    due_ms: int
    request: bytes | None = None
    retries: int = 0
    retry_intervals: tuple[int, ...] = ()
    retry_count: int = 0  #: failed attempts so far
    node: str | None = None  #: the node that holds or held the claim
    fence: int = 0  #: the claim's fence; 0 before the first claim
    is_rerun: bool = False  #: handed back after its node died (or a shutdown) mid-attempt
    cron_id: str | None = None  #: set for a cron occurrence
    created_ms: int = 0
    executed_at_ms: int | None = None  #: when the last attempt started
    elapsed_ms: int | None = None  #: how long the last attempt ran
    exception_message: str | None = None
    cancel_requested: bool = False  #: cancel() was called while it ran


@attrs.frozen(kw_only=True)
class CronRecord:
    """A cron definition as the store holds it."""

    id: str
    function: str
    expression: str
    time_zone: str
    request: bytes | None = None
    retries: int = 0
    retry_intervals: tuple[int, ...] = ()
    enabled: bool = True
    next_ms: int | None = None  #: the next occurrence not yet materialised
    skipped_count: int = 0  #: occurrences accounted as SKIPPED without a record (downtime)


@attrs.frozen(kw_only=True)
class FunctionLimits:
    """What a node may claim of one function."""

    name: str
    free_slots: int  #: how many more this node may start now (per-node ``max_concurrency``)
    cluster_concurrency: int | None = None  #: at most this many running in the whole cluster
    skip_if_running: bool = False  #: a cron occurrence is SKIPPED while the previous runs anywhere


@attrs.frozen(kw_only=True)
class Claim:
    """One job this node now holds; ``fence`` proves it when reporting the outcome."""

    job: JobRecord
    fence: int


@attrs.frozen(kw_only=True)
class ClaimBatch:
    """What one claim call got, and when to look again."""

    claims: tuple[Claim, ...]
    skipped: tuple[str, ...] = ()  #: ids marked SKIPPED (skip_if_running) by this call
    next_due_ms: int | None = None  #: earliest due time among what this node could claim, if any
    now_ms: int = 0  #: the store's clock at the claim
    #: How many claims the store holds for the node after the call (its new ones included);
    #: more than the node knows of means a claim's reply was lost, see ``release_node``.
    held: int = 0
    finished: tuple[bool, ...] = ()  #: per outcome given to the claim: whether its fence held


class OutcomeKind(enum.Enum):
    """How an attempt ended."""

    DONE = "done"
    FAILED = "failed"  #: retried if retries are left, else FAILED
    CANCELLED = "cancelled"
    HANDED_BACK = "handed_back"  #: not finished (shutdown): IDLE again, is_rerun set, due now
    SKIPPED = "skipped"  #: a cron occurrence not run: missed by more than the threshold (downtime)


@attrs.frozen(kw_only=True)
class Outcome:
    """The result of one attempt, reported under the claim's fence."""

    job_id: str
    fence: int
    kind: OutcomeKind
    executed_at_ms: int | None = None
    elapsed_ms: int | None = None
    exception_message: str | None = None
