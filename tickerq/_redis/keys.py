"""The one place that knows tickerq's Redis key names.

Every key lives under the instance name, so two applications can share one Redis
and an ACL rule such as ``~tickerq:*`` fences an application in. The spec's keys
(``hb:``, ``nodes:registry``, cache entries) are kept exactly, and their values are
stored as TickerQ .NET stores them (see ``tickerq._redis.entry``); tickerq's own
bookkeeping lives under ``tq:`` so it never collides with a cache key.
"""

from __future__ import annotations

import attrs

from tickerq.errors import InvalidKeyError

__all__ = ["RESERVED_PREFIXES", "Keys"]

#: Cache keys may not start with these: they belong to tickerq's own keys.
RESERVED_PREFIXES = ("hb:", "nodes:", "lock:", "tq:")


@attrs.frozen
class Keys:
    """Builds every key name for one instance prefix.

    Args:
        instance: The instance name, e.g. ``"tickerq:"`` or ``"{tickerq}:"``
            (the hash tag puts every key in one Redis Cluster slot).
    """

    instance: str

    @property
    def heartbeat_prefix(self) -> str:
        """The prefix of heartbeat keys; Lua scripts append node ids to it."""
        return f"{self.instance}hb:"

    def heartbeat(self, node: str) -> str:
        """``{instance}hb:{node}``: a node's heartbeat, ``{"Ts": unix_ms, "Node": id, ...}``, with a TTL."""
        return f"{self.instance}hb:{node}"

    @property
    def registry(self) -> str:
        """``{instance}nodes:registry``: JSON array of node ids, 30-day sliding expiration."""
        return f"{self.instance}nodes:registry"

    @property
    def tickerq_nodes(self) -> str:
        """The set of tickerq (Python) nodes, ours as opposed to TickerQ .NET nodes in the registry."""
        return f"{self.instance}tq:nodes"

    @property
    def registry_length(self) -> str:
        """The registry data's length as tickerq last wrote or checked it: a changed length tells a
        beat, in O(1), that another writer (a .NET node) rewrote the registry."""
        return f"{self.instance}tq:registry-length"

    @property
    def unlisted(self) -> str:
        """tickerq nodes the registry lacks (dead ones a .NET node removed), exact while
        ``registry_length`` matches: readers need not compare the whole node set with the registry."""
        return f"{self.instance}tq:unlisted"

    @property
    def foreign_dead(self) -> str:
        """A hash of dead nodes that are not ours, with when the scan first saw each dead (ms)."""
        return f"{self.instance}tq:foreign-dead"

    @property
    def scan_lease(self) -> str:
        """Held by the one node that scans for dead nodes this interval."""
        return f"{self.instance}tq:scan-lease"

    def cache(self, key: str) -> str:
        """``{instance}{key}``: a cache entry.

        Raises:
            InvalidKeyError: The key is empty or starts with a reserved prefix.
        """
        check_user_key("cache_key", key)
        if key.startswith(RESERVED_PREFIXES):
            raise InvalidKeyError(
                f"cache_key={key!r} starts with a prefix reserved for tickerq's "
                f"own keys ({', '.join(RESERVED_PREFIXES)}); choose another key"
            )
        return f"{self.instance}{key}"

    def cache_recompute_lock(self, key: str) -> str:
        """The short lock one computer holds while it fills a cache entry."""
        return f"{self.instance}tq:cache-lock:{key}"

    def lock(self, name: str) -> str:
        """``{instance}lock:{name}``: a distributed lock's owner token.

        Raises:
            InvalidKeyError: The name is empty, or ends in ``:fence`` (it would be
                another lock's fence counter).
        """
        check_user_key("name", name)
        if name.endswith(":fence"):
            raise InvalidKeyError(
                f"name={name!r} ends in ':fence', which would collide with the fence counter "
                f"of lock {name.removesuffix(':fence')!r}: choose another lock name"
            )
        return f"{self.instance}lock:{name}"

    def lock_fence(self, name: str) -> str:
        """``{instance}lock:{name}:fence``: the lock's fencing counter."""
        return f"{self.lock(name)}:fence"

    def lock_queue(self, name: str) -> str:
        """The lock's list of waiters, woken in turn on release."""
        check_user_key("name", name)
        return f"{self.instance}tq:lock-queue:{name}"

    def lock_turn(self, name: str) -> str:
        """Holds the id of the waiter whose turn it is to take a free lock (short TTL)."""
        check_user_key("name", name)
        return f"{self.instance}tq:lock-turn:{name}"

    def lock_waiters(self, name: str) -> str:
        """Sorted set of queued waiters, scored by the server time their place expires."""
        check_user_key("name", name)
        return f"{self.instance}tq:lock-waiters:{name}"

    def lock_wake_prefix(self, name: str) -> str:
        """Prefix of the per-waiter lists a waiter blocks on; Lua appends the waiter id."""
        check_user_key("name", name)
        return f"{self.instance}tq:lock-wake:{name}:"

    def election(self, name: str) -> str:
        """A leader election's lease: a hash of the leader's ``node``, ``token`` and ``term``, with a TTL."""
        check_user_key("name", name)
        return f"{self.instance}tq:election:{name}"

    def election_term(self, name: str) -> str:
        """A leader election's term counter."""
        return f"{self.election(name)}:term"

    # -- the scheduler's job store (tickerq.scheduler.redis_store) ---------------
    # A small IDLE job record lives in a hash bucket (``jobs:`` + the first 4 hex
    # digits of the id's SHA-1, picked inside the Lua scripts), so a pending job costs
    # a listpack entry instead of a key; any other record (claimed, large, finished)
    # has a key of its own, which PEXPIRE deletes after retention once it finished.

    @property
    def sched_jobs_prefix(self) -> str:
        """Prefix of the hash buckets of small IDLE job records; the scripts append the bucket."""
        return f"{self.instance}tq:jobs:"

    @property
    def sched_job_prefix(self) -> str:
        """Prefix of :meth:`sched_job`, for the scripts."""
        return f"{self.instance}tq:job:"

    def sched_job(self, job_id: str) -> str:
        """``{instance}tq:job:{id}``: a job record outside the buckets (expires once finished)."""
        check_user_key("job_id", job_id)
        return f"{self.sched_job_prefix}{job_id}"

    @property
    def sched_due_prefix(self) -> str:
        """Prefix of :meth:`sched_due`, for the scripts."""
        return f"{self.instance}tq:due:"

    def sched_due(self, function: str) -> str:
        """``{instance}tq:due:{function}``: IDLE job ids scored by due time (ms)."""
        check_user_key("function", function)
        return f"{self.sched_due_prefix}{function}"

    @property
    def sched_running_prefix(self) -> str:
        """Prefix of :meth:`sched_running`, for the scripts."""
        return f"{self.instance}tq:running:"

    def sched_running(self, function: str) -> str:
        """``{instance}tq:running:{function}``: QUEUED and IN_PROGRESS ids (score 0, ranged by lex)."""
        check_user_key("function", function)
        return f"{self.sched_running_prefix}{function}"

    @property
    def sched_claims_prefix(self) -> str:
        """Prefix of :meth:`sched_claims`, for the scripts."""
        return f"{self.instance}tq:claims:"

    def sched_claims(self, node: str) -> str:
        """``{instance}tq:claims:{node}``: the ids a node holds (no TTL: valid while it lives)."""
        check_user_key("node", node)
        return f"{self.sched_claims_prefix}{node}"

    @property
    def sched_cron_prefix(self) -> str:
        """Prefix of :meth:`sched_cron`, for the scripts."""
        return f"{self.instance}tq:cron:"

    def sched_cron(self, cron_id: str) -> str:
        """``{instance}tq:cron:{id}``: a cron definition (hash)."""
        check_user_key("cron_id", cron_id)
        return f"{self.sched_cron_prefix}{cron_id}"

    @property
    def sched_crons(self) -> str:
        """``{instance}tq:crons``: hash of cron signature (function, expression, zone) to cron id."""
        return f"{self.instance}tq:crons"

    @property
    def sched_fence(self) -> str:
        """``{instance}tq:fence``: the claim fence counter; it never goes backwards."""
        return f"{self.instance}tq:fence"

    @property
    def sched_finished(self) -> str:
        """``{instance}tq:finished``: finished job ids scored by when their record expires."""
        return f"{self.instance}tq:finished"

    @property
    def sched_wake_channel(self) -> str:
        """``{instance}tq:wake``: pub/sub channel; a message is the earliest due time (ms) of new work."""
        return f"{self.instance}tq:wake"


def check_user_key(field: str, value: object) -> None:
    """Reject names that cannot be part of a key: non-strings and empty strings.

    Raises:
        InvalidKeyError: Naming the field and the value.
    """
    if not isinstance(value, str) or not value:
        raise InvalidKeyError(f"{field}={value!r} is not usable: expected a non-empty string")
