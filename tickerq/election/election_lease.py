"""An election's lease in Redis: its timings, one Lua script per operation, and a pool for the thread.

The lease is the hash ``{instance}tq:election:{name}`` (``node``, ``token``,
``term``) with a PX TTL; ``{instance}tq:election:{name}:term`` counts terms.
Each operation is one script, so one round trip, and every change is a
compare-and-set on the token inside it (see ``lua/election_*.lua``).
"""

from __future__ import annotations

import enum
import time
from typing import Any

import attrs
import redis
from redis.exceptions import NoScriptError

from tickerq._redis.keys import Keys
from tickerq._redis.scripts import LuaScript
from tickerq.election.election_timings import LeaseTimings

__all__ = ["ElectionLease", "LeaseReply", "LeaseTimings", "Status"]

_ACQUIRE = LuaScript("election_acquire", package="tickerq.election")
_RENEW = LuaScript("election_renew", package="tickerq.election")
_RELEASE = LuaScript("election_release", package="tickerq.election")
_READ = LuaScript("election_read", package="tickerq.election")


class Status(enum.IntEnum):
    """What a script found in the lease key."""

    HELD = 0  #: another token holds it (``holder`` None: kept vacant after Redis lost its data)
    OURS = 1  #: our token holds it (now, or again after a retry whose reply was lost)
    #: nobody holds it: a read's candidate takes it; a renewal's leadership is over (a later
    #: term, the reply's ``term``, began while the lease was gone)
    VACANT = 2
    CORRUPT = -1  #: the key is not a lease tickerq wrote (``holder`` names its Redis type)


@attrs.frozen
class LeaseReply:
    """A script's reply: the status, the holder's node id, its term and the TTL left (ms)."""

    status: Status
    holder: str | None
    term: int
    pttl_ms: int

    @classmethod
    def parse(cls, reply: Any) -> LeaseReply:
        """Build from the raw ``{status, node, term, pttl}`` reply (bytes or str)."""
        status, holder, term, pttl = reply
        if isinstance(holder, bytes):
            holder = holder.decode("utf-8", "replace")
        return cls(Status(int(status)), holder or None, int(term), int(pttl))

    @property
    def loss_reason(self) -> str:
        """Why a renewal that got this reply (not ``OURS``) ends the leadership."""
        if self.status == Status.HELD:
            if self.holder is None:
                return "Redis lost its data: the lease is kept vacant for one lease"
            return f"lease taken by {self.holder!r}, term {self.term}"
        if self.status == Status.VACANT:
            return f"lease vanished and term {self.term} began since"
        return "lease key overwritten"


@attrs.frozen
class ElectionLease:
    """The operations on one election's lease, for one node. Holds no state; any thread may use it.

    Args:
        keys: Key names for this instance.
        name: The election's name.
        node_id: The node that campaigns.
        lease_ms: The lease's TTL in milliseconds.
    """

    keys: Keys
    name: str
    node_id: str
    lease_ms: int

    @property
    def key(self) -> str:
        """The lease hash."""
        return self.keys.election(self.name)

    def acquire(self, client: redis.Redis, token: str, seen_term: int) -> LeaseReply:
        """Take the lease when vacant with a new term, else report its holder.

        ``seen_term`` is the highest term this node has seen: when the counter is
        below it, Redis lost its data and the lease is kept vacant for one lease.
        """
        keys = [self.key, self.keys.election_term(self.name)]
        return LeaseReply.parse(_ACQUIRE(client, keys, [self.node_id, token, self.lease_ms, seen_term]))

    def renew(self, client: redis.Redis, token: str, term: int) -> LeaseReply:
        """Extend the lease while ``token`` holds it; re-create it if it vanished and no later term began.

        ``VACANT`` when it vanished after a later term began. A holder with a
        lower term than ``term`` means Redis lost its data: the lease is then
        kept vacant for one lease (``HELD``, holder None) so that the next term
        is above every term handed out. The counter is raised to ``term`` if below.
        """
        keys = [self.key, self.keys.election_term(self.name)]
        return LeaseReply.parse(_RENEW(client, keys, [self.node_id, token, term, self.lease_ms]))

    def release(self, client: redis.Redis, token: str, timeout: float | None = None) -> bool:
        """Delete the lease if ``token`` holds it; returns whether it did.

        With ``timeout``, waits at most that long (s) for the reply, whatever
        the client's socket timeout, and raises ``redis.TimeoutError`` after.
        """
        if timeout is None:
            return bool(_RELEASE(client, [self.key], [token]))
        return bool(_run_within(client, _RELEASE, [self.key], [token], timeout))

    def read(self, client: redis.Redis) -> LeaseReply:
        """Who holds the lease (``HELD`` or ``VACANT``; ``CORRUPT`` for garbage). Writes nothing."""
        return LeaseReply.parse(_READ(client, [self.key]))


def _run_within(
    client: redis.Redis, script: LuaScript, keys: list[str], args: list[str], timeout: float
) -> Any:
    """Run ``script`` on one of ``client``'s pooled connections, waiting at most ``timeout`` s for replies.

    The connection is normally connected already (taking it may connect,
    within the pool's own timeout). After any error it is disconnected, so a
    late reply is never read as the next call's.
    """
    ends = time.monotonic() + timeout
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    try:
        try:
            return _round_trip(connection, ("EVALSHA", script.sha, len(keys), *keys, *args), ends)
        except NoScriptError:  # a fresh server: send the body
            return _round_trip(connection, ("EVAL", script.source, len(keys), *keys, *args), ends)
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _round_trip(connection: Any, command: tuple[str | int, ...], ends: float) -> Any:
    connection.send_command(*command, check_health=False)
    if not connection.can_read(timeout=max(0.0, ends - time.monotonic())):
        raise redis.TimeoutError("no reply from Redis in the time allowed")
    return connection.read_response()
