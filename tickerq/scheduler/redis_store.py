"""The Redis job store: many nodes, every verb one round trip, atomic in Lua.

Layout (key names come from :class:`~tickerq._redis.keys.Keys`, all under
``{instance}tq:``):

- A job is one compact JSON record. A pending (IDLE) record that fits a
  listpack entry (64 bytes; a job without a request and a function name up to
  about 25 characters) lives in a hash bucket ``tq:jobs:{bucket}`` (field = job
  id; 65,536 buckets chosen by the id's SHA-1 inside the scripts), so a pending
  job costs a listpack entry and a due-index entry rather than a key of its
  own. Every other record (claimed, larger, finished) has its own key
  ``tq:job:{id}``; once the job finished, PEXPIRE deletes it after retention,
  and ``tq:finished`` (scored by expiry) is trimmed by
  :meth:`RedisJobStore.expire_finished`.
- ``tq:due:{function}`` (IDLE ids by due ms), ``tq:running:{function}``
  (claimed ids), ``tq:claims:{node}`` (no TTL: a claim lives as long as its
  node), ``tq:cron:{id}`` and ``tq:crons``, ``tq:fence`` (one counter for
  every claim's fence).

"Is it due" is decided with Redis ``TIME`` inside the scripts; claims read the
due index with ``ZRANGEBYSCORE ... LIMIT``, never a whole set.

Wake-ups: scripts that make work due-able PUBLISH its earliest due time (ms,
as decimal text) on :attr:`RedisJobStore.wake_channel`. A node's scheduler
loop subscribes with :meth:`RedisJobStore.subscribe_wake` (a redis-py
``PubSub`` it owns and closes) and reads messages with
:func:`parse_wake`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

import orjson
import redis
import redis.client

from tickerq._redis.keys import Keys, check_user_key
from tickerq._redis.scripts import LuaScript
from tickerq._redis.translate import translate_errors
from tickerq.durations import to_milliseconds
from tickerq.errors import KeyTypeError, SerializationError
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

__all__ = ["RELEASE_BATCH", "RedisJobStore", "parse_wake"]

#: Most claims one release_node script call hands back (about 10 ms of server time).
RELEASE_BATCH = 500


def _script(name: str) -> LuaScript:
    return LuaScript(name, package="tickerq.scheduler")


_ADD = _script("sched_add")
_CLAIM = _script("sched_claim")
_START = _script("sched_start")
_FINISH = _script("sched_finish")
_RELEASE = _script("sched_release")
_READ = _script("sched_read")
_CANCEL = _script("sched_cancel")
_EXPIRE = _script("sched_expire")
_CRON_ADD = _script("sched_cron_add")
_CRON_LIST = _script("sched_cron_list")
_CRON_REMOVE = _script("sched_cron_remove")
_CRON_ENABLE = _script("sched_cron_enable")
_CRON_MATERIALIZE = _script("sched_cron_materialize")
_CRON_RUN_NOW = _script("sched_cron_run_now")

_STATUSES = {
    None: TickerStatus.IDLE,
    "Q": TickerStatus.QUEUED,
    "P": TickerStatus.IN_PROGRESS,
    "D": TickerStatus.DONE,
    "F": TickerStatus.FAILED,
    "C": TickerStatus.CANCELLED,
    "S": TickerStatus.SKIPPED,
}
_KINDS = {
    OutcomeKind.DONE: "D",
    OutcomeKind.FAILED: "F",
    OutcomeKind.CANCELLED: "C",
    OutcomeKind.HANDED_BACK: "H",
    OutcomeKind.SKIPPED: "S",
}


def parse_wake(message: Any) -> int | None:
    """The due time (ms) carried by a wake message from ``PubSub.get_message()``, if any."""
    if not isinstance(message, dict) or message.get("type") != "message":
        return None
    try:
        return int(message["data"])
    except (TypeError, ValueError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _request_text(field: str, request: bytes | None) -> str | None:
    if request is None:
        return None
    try:
        return request.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerializationError(f"{field}: the request is not UTF-8 JSON ({exc})") from exc


def decode_job(job_id: str, raw: bytes | str) -> JobRecord:
    """A job record as the scripts store it.

    Raises:
        KeyTypeError: The record cannot be decoded (naming the job and why).
    """
    try:
        data = orjson.loads(raw)
        due = int(data["d"])
        request = data.get("r")
        return JobRecord(
            id=job_id,
            function=str(data["f"]),
            status=_STATUSES[data.get("s")],
            due_ms=due,
            request=None if request is None else str(request).encode("utf-8"),
            retries=int(data.get("n", 0)),
            retry_intervals=tuple(int(seconds) for seconds in data.get("v") or ()),
            retry_count=int(data.get("k", 0)),
            node=data.get("o"),
            fence=int(data.get("e", 0)),
            is_rerun=bool(data.get("x")),
            cron_id=data.get("y"),
            created_ms=due - int(data.get("c", 0)),
            executed_at_ms=_opt_int(data.get("a")),
            elapsed_ms=_opt_int(data.get("l")),
            exception_message=data.get("m"),
            cancel_requested=bool(data.get("z")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise KeyTypeError(
            f"job_id={job_id!r}: the stored job record cannot be decoded ({type(exc).__name__}: {exc})"
        ) from exc


def _decode_read(job_id: str, where: bytes | str, raw: bytes | str) -> JobRecord | None:
    """A ``{where, raw}`` pair from the read scripts: the record, None, or KeyTypeError."""
    where = _text(where)
    if where == "x":
        raise KeyTypeError(f"job_id={job_id!r}: the stored job record cannot be read ({_text(raw)})")
    return decode_job(job_id, raw) if where else None


def _decode_cron(cron_id: bytes | str, flat: Sequence[bytes | str]) -> CronRecord:
    fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
    try:
        request = fields.get("r")
        intervals = fields.get("v")
        return CronRecord(
            id=_text(cron_id),
            function=fields["f"],
            expression=fields["x"],
            time_zone=fields["z"],
            request=None if request is None else request.encode("utf-8"),
            retries=int(fields.get("n", 0)),
            retry_intervals=tuple(int(s) for s in orjson.loads(intervals)) if intervals else (),
            enabled=fields.get("e") == "1",
            next_ms=_opt_int(fields.get("t")),
            skipped_count=int(fields.get("k", 0)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise KeyTypeError(
            f"cron_id={_text(cron_id)!r}: the stored cron cannot be decoded ({type(exc).__name__}: {exc})"
        ) from exc


class RedisJobStore:
    """The job store shared by every node on one Redis.

    Args:
        client: A plain ``redis.Redis`` (the container's ``redis_connections``
            provides it); used, never closed.
        keys: Key names of this instance.
        retention: How long finished jobs are kept when a verb has no retention of its own.
    """

    def __init__(self, client: redis.Redis, keys: Keys, *, retention: timedelta = DEFAULT_RETENTION) -> None:
        self._client = client
        self._keys = keys
        self._base_keys = [keys.sched_finished, keys.sched_fence, keys.sched_crons]
        self._base_args: list[str | int] = [
            keys.sched_jobs_prefix,
            keys.sched_job_prefix,
            keys.sched_due_prefix,
            keys.sched_running_prefix,
            keys.sched_claims_prefix,
            keys.sched_wake_channel,
            to_milliseconds(retention),
        ]

    def __repr__(self) -> str:
        return f"RedisJobStore(instance={self._keys.instance!r})"

    def _run(
        self, verb: str, script: LuaScript, args: Sequence[str | int | bytes], keys: Sequence[str] = ()
    ) -> Any:
        with translate_errors(f"scheduler {verb}"):
            return script(self._client, [*self._base_keys, *keys], [*self._base_args, *args])

    # -- wake-ups -------------------------------------------------------------

    @property
    def wake_channel(self) -> str:
        """The pub/sub channel on which new due times are published."""
        return self._keys.sched_wake_channel

    def subscribe_wake(self) -> redis.client.PubSub:
        """A ``PubSub`` subscribed to :attr:`wake_channel`; the caller reads and closes it.

        Read it with ``get_message(timeout=...)`` and :func:`parse_wake`.
        """
        with translate_errors("scheduler subscribe_wake"):
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.wake_channel)
            return pubsub

    # -- clock and timed jobs -------------------------------------------------

    def now_ms(self) -> int:
        """See :meth:`JobStore.now_ms`: Redis ``TIME`` in ms."""
        with translate_errors("scheduler now_ms"):
            seconds, micros = self._client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def add_jobs(self, jobs: Sequence[NewJob]) -> list[int]:
        """See :meth:`JobStore.add_jobs`."""
        if not jobs:
            return []
        args: list[str | int | bytes] = []
        for new in jobs:
            check_user_key("job_id", new.id)
            check_user_key("function", new.function)
            partial: dict[str, object] = {"f": new.function}
            request = _request_text(f"job_id={new.id!r}", new.request)
            if request is not None:
                partial["r"] = request
            if new.retries:
                partial["n"] = new.retries
            if new.retry_intervals:
                partial["v"] = list(new.retry_intervals)
            args += [
                new.id,
                orjson.dumps(partial),
                "" if new.due_ms is None else new.due_ms,
                "" if new.delay_ms is None else new.delay_ms,
            ]
        return [int(due) for due in self._run("add_jobs", _ADD, args)]

    def _read(self, verb: str, script: LuaScript, args: Sequence[str]) -> list[JobRecord | None]:
        records: list[JobRecord | None] = []
        reply = self._run(verb, script, args)
        for job_id, (where, raw) in zip(args, reply, strict=True):
            records.append(_decode_read(job_id, where, raw))
        return records

    def get_job(self, job_id: str) -> JobRecord | None:
        """See :meth:`JobStore.get_job`.

        Raises:
            KeyTypeError: The stored record cannot be decoded.
        """
        return self._read("get_job", _READ, [job_id])[0]

    def cancel(self, job_id: str) -> JobRecord | None:
        """See :meth:`JobStore.cancel`."""
        check_user_key("job_id", job_id)
        where, raw = self._run("cancel", _CANCEL, [job_id])
        return _decode_read(job_id, where, raw)

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
        args: list[str | int | bytes] = [node, limit, "1" if start else "0", len(outcomes)]
        args += self._outcome_args(outcomes, retention, final=False)
        for limits in functions:
            check_user_key("function", limits.name)
            cap = -1 if limits.cluster_concurrency is None else limits.cluster_concurrency
            args += [limits.name, limits.free_slots, cap, "1" if limits.skip_if_running else "0"]
        now, next_due, flat, skipped, held, finished = self._run(
            "claim_due", _CLAIM, args, [self._keys.sched_claims(node)]
        )
        claims: list[Claim] = []
        undecodable: list[Outcome] = []
        for i in range(0, len(flat), 3):
            job_id, fence = _text(flat[i]), int(flat[i + 1])
            try:
                job = decode_job(job_id, flat[i + 2])
            except KeyTypeError as exc:
                # The script checks every field's type; this is the last line of defence.
                undecodable.append(
                    Outcome(job_id=job_id, fence=fence, kind=OutcomeKind.FAILED, exception_message=str(exc))
                )
                continue
            claims.append(Claim(job=job, fence=fence))
        if undecodable:
            self._finish(undecodable, None, final=True)
        return ClaimBatch(
            claims=tuple(claims),
            skipped=tuple(_text(job_id) for job_id in skipped),
            next_due_ms=None if int(next_due) < 0 else int(next_due),
            now_ms=int(now),
            held=int(held),
            finished=tuple(bool(ok) for ok in finished),
        )

    def start(self, claims: Sequence[tuple[str, int]], started_ms: int | None = None) -> list[bool]:
        """See :meth:`JobStore.start`."""
        if not claims:
            return []
        args: list[str | int | bytes] = ["" if started_ms is None else started_ms]
        for job_id, fence in claims:
            args += [job_id, fence]
        return [bool(ok) for ok in self._run("start", _START, args)]

    def finish(self, outcomes: Sequence[Outcome], retention: timedelta | None = None) -> list[bool]:
        """See :meth:`JobStore.finish`."""
        return self._finish(outcomes, retention, final=False)

    def _finish(self, outcomes: Sequence[Outcome], retention: timedelta | None, *, final: bool) -> list[bool]:
        if not outcomes:
            return []
        args = self._outcome_args(outcomes, retention, final=final)
        return [bool(ok) for ok in self._run("finish", _FINISH, args)]

    def _outcome_args(
        self, outcomes: Sequence[Outcome], retention: timedelta | None, *, final: bool
    ) -> list[str | int | bytes]:
        """The retention, then 7 values per outcome (see ``sched_finish_lib.lua``)."""
        args: list[str | int | bytes] = [
            self._base_args[-1] if retention is None else to_milliseconds(retention)
        ]
        for outcome in outcomes:
            message = outcome.exception_message
            args += [
                outcome.job_id,
                outcome.fence,
                "X" if final else _KINDS[outcome.kind],
                "" if outcome.executed_at_ms is None else outcome.executed_at_ms,
                "" if outcome.elapsed_ms is None else outcome.elapsed_ms,
                "0" if message is None else "1",
                "" if message is None else message,
            ]
        return args

    def cancel_requests(self, job_ids: Sequence[str]) -> set[str]:
        """See :meth:`JobStore.cancel_requests`."""
        if not job_ids:
            return set()
        records = self._read("cancel_requests", _READ, list(job_ids))
        return {record.id for record in records if record is not None and record.cancel_requested}

    def release_node(self, node: str, keep: Collection[tuple[str, int]] | None = None) -> list[str]:
        """See :meth:`JobStore.release_node`.

        Without ``keep``, claims are handed back ``RELEASE_BATCH`` per script call
        (each about a millisecond per hundred claims), so that releasing a dead node
        with thousands of claims lets every other client's commands (heartbeats)
        through in between.
        """
        claims_key = [self._keys.sched_claims(node)]
        args: list[str | int | bytes] = [node, RELEASE_BATCH, "0" if keep is None else "1"]
        for job_id, fence in keep or ():
            args += [job_id, fence]
        released: list[str] = []
        while True:
            ids, left = self._run("release_node", _RELEASE, args, claims_key)
            released += (_text(job_id) for job_id in ids)
            if keep is not None or not int(left):
                return sorted(released)

    def next_due_ms(self, functions: Sequence[str]) -> int | None:
        """See :meth:`JobStore.next_due_ms`."""
        if not functions:
            return None
        with translate_errors("scheduler next_due_ms"), self._client.pipeline(transaction=False) as pipe:
            for name in functions:
                pipe.zrange(self._keys.sched_due(name), 0, 0, withscores=True)
            heads = pipe.execute()
        return min((int(head[0][1]) for head in heads if head), default=None)

    # -- crons ----------------------------------------------------------------

    def _cron_args(self, *args: str | int | bytes) -> list[str | int | bytes]:
        return [self._keys.sched_cron_prefix, *args]

    def add_cron(self, cron: NewCron, first_ms: int) -> CronRecord:
        """See :meth:`JobStore.add_cron`."""
        check_user_key("cron_id", cron.id)
        check_user_key("function", cron.function)
        signature = f"{cron.function}\n{cron.expression}\n{cron.time_zone}"
        fields: list[str | int | bytes] = ["f", cron.function, "x", cron.expression, "z", cron.time_zone]
        request = _request_text(f"cron_id={cron.id!r}", cron.request)
        if request is not None:
            fields += ["r", request]
        if cron.retries:
            fields += ["n", cron.retries]
        if cron.retry_intervals:
            fields += ["v", orjson.dumps(list(cron.retry_intervals))]
        cron_id, flat = self._run(
            "add_cron", _CRON_ADD, self._cron_args(cron.id, signature, first_ms, *fields)
        )
        return _decode_cron(cron_id, flat)

    def get_cron(self, cron_id: str) -> CronRecord | None:
        """See :meth:`JobStore.get_cron`."""
        with translate_errors("scheduler get_cron"):
            fields = self._client.hgetall(self._keys.sched_cron(cron_id))
        return _decode_cron(cron_id, [item for pair in fields.items() for item in pair]) if fields else None

    def list_crons(self) -> list[CronRecord]:
        """See :meth:`JobStore.list_crons` (ordered by id)."""
        flat = self._run("list_crons", _CRON_LIST, self._cron_args())
        crons = [_decode_cron(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        return sorted(crons, key=lambda cron: cron.id)

    def remove_cron(self, cron_id: str) -> bool:
        """See :meth:`JobStore.remove_cron`."""
        check_user_key("cron_id", cron_id)
        return bool(self._run("remove_cron", _CRON_REMOVE, self._cron_args(cron_id)))

    def set_cron_enabled(self, cron_id: str, enabled: bool) -> CronRecord | None:
        """See :meth:`JobStore.set_cron_enabled`."""
        check_user_key("cron_id", cron_id)
        flat = self._run("set_cron_enabled", _CRON_ENABLE, self._cron_args(cron_id, "1" if enabled else "0"))
        return _decode_cron(cron_id, flat) if flat else None

    def materialize_cron(
        self, cron_id: str, expected_next_ms: int, occurrence_ms: int | None, new_next_ms: int, skipped: int
    ) -> bool:
        """See :meth:`JobStore.materialize_cron`."""
        check_user_key("cron_id", cron_id)
        occurrence = "" if occurrence_ms is None else str(occurrence_ms)
        args = self._cron_args(cron_id, expected_next_ms, occurrence, new_next_ms, skipped)
        return bool(self._run("materialize_cron", _CRON_MATERIALIZE, args))

    def run_now(self, cron_id: str) -> str | None:
        """See :meth:`JobStore.run_now`."""
        check_user_key("cron_id", cron_id)
        job_id = self._run("run_now", _CRON_RUN_NOW, self._cron_args(cron_id))
        return None if job_id is None else _text(job_id)

    # -- housekeeping ---------------------------------------------------------

    def expire_finished(self, limit: int = 1000) -> int:
        """See :meth:`JobStore.expire_finished`."""
        return int(self._run("expire_finished", _EXPIRE, [limit]))
