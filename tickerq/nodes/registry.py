"""The node registry: heartbeats, membership and dead-node detection, shared with TickerQ .NET.

Keys follow the spec, and values are stored as TickerQ .NET stores them (``RedisCache``
hashes, see :mod:`tickerq._redis.entry`), so Python and .NET nodes can share one Redis:

- ``{instance}hb:{node}``: data ``{"Ts": unix_ms, "Node": id, "Instance": token}``
  (``Instance`` is tickerq's: a per-process token that exposes two processes using one
  node id), absolute expiry interval + grace;
- ``{instance}nodes:registry``: data a JSON array of node ids, sliding expiration 30 days.

tickerq keeps its own nodes in a set at ``{instance}tq:nodes``. TickerQ .NET updates the
registry by read-modify-write, so a .NET node can drop a Python node that joined at that
moment, and it removes dead nodes as soon as it sees them. The set is how our nodes get
back into the registry (every tickerq write merges in all live ones; a beat notices a
foreign rewrite in O(1) by the registry's length, and the scan checks in full once per
interval), and how a dead Python node still reaches our dead-node handlers after a .NET
node removed it. A dead node that is not ours (a .NET node) is left in the registry for
the .NET survivors for a grace period, then removed.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
from collections.abc import Iterable
from datetime import timedelta

import attrs
import redis

from tickerq._redis.entry import duration_ticks
from tickerq._redis.keys import Keys
from tickerq._redis.scripts import LuaScript
from tickerq._redis.translate import translate_errors
from tickerq.durations import to_milliseconds
from tickerq.errors import ConfigurationError

__all__ = ["REGISTRY_TTL", "Beat", "DuplicateNode", "NodeHealthStatus", "NodeRegistry", "process_token"]

log = logging.getLogger(__name__)

#: The registry's sliding expiration, as in the spec.
REGISTRY_TTL = timedelta(days=30)
#: Foreign dead nodes stay in the registry for this many heartbeat TTLs unless told otherwise.
FOREIGN_GRACE_TTLS = 10

_BEAT = LuaScript("heartbeat", package="tickerq.nodes")
_NODES = LuaScript("nodes", package="tickerq.nodes")
_REMOVE = LuaScript("remove_nodes", package="tickerq.nodes")

_token: tuple[int, str] = (0, "")


def process_token() -> str:
    """A random token for this process (a forked child gets its own), written into its heartbeats."""
    global _token  # noqa: PLW0603 - one token per process, renewed after fork
    pid = os.getpid()
    if _token[0] != pid:
        _token = (pid, secrets.token_hex(8))
    return _token[1]


@attrs.frozen(kw_only=True)
class NodeHealthStatus:
    """Counts of registered, dead and healthy nodes, with the ids behind them."""

    registered: tuple[str, ...]
    dead: tuple[str, ...]

    @property
    def total_nodes(self) -> int:
        """How many nodes are registered."""
        return len(self.registered)

    @property
    def dead_nodes(self) -> int:
        """How many registered nodes have no heartbeat key."""
        return len(self.dead)

    @property
    def healthy_nodes(self) -> int:
        """``total_nodes - dead_nodes``."""
        return self.total_nodes - self.dead_nodes

    @property
    def healthy(self) -> tuple[str, ...]:
        """The registered nodes whose heartbeat key exists."""
        dead = set(self.dead)
        return tuple(node for node in self.registered if node not in dead)


@attrs.frozen(kw_only=True)
class DuplicateNode:
    """A live heartbeat under our node id written by another process (or a .NET node)."""

    token: str  #: the other process's instance token ("" when it wrote none: a .NET node)
    age_ms: int  #: how old its heartbeat was (-1: unknown)
    refused: bool  #: this beat wrote nothing, as asked


@attrs.frozen(kw_only=True)
class Beat:
    """What one heartbeat did. ``dead`` is None unless this beat ran the scan."""

    timestamp_ms: int
    registered: bool
    repaired: bool
    dead: tuple[str, ...] | None
    foreign_removed: tuple[str, ...] = ()  #: dead foreign nodes removed after their grace
    restored: int = 0  #: live tickerq nodes put back into the registry
    duplicate: DuplicateNode | None = None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _texts(values: Iterable[bytes | str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_text(value) for value in values))


class NodeRegistry:
    """Registry operations for one node; each is one round trip.

    Args:
        client: The application's redis-py client.
        keys: Key names for the instance.
        node_id: This node's identifier.
        heartbeat_ttl: TTL of this node's heartbeat key (interval + grace).
        interval: The heartbeat interval (default: ``heartbeat_ttl``): at start, a heartbeat
            of another process under our id younger than this counts as a live duplicate.
        foreign_dead_node_grace: How long a dead node that is not ours stays in the registry
            (default: 10 heartbeat TTLs).
        instance_token: This process's token (default: :func:`process_token`).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        node_id: str,
        heartbeat_ttl: timedelta,
        *,
        interval: timedelta | None = None,
        foreign_dead_node_grace: timedelta | None = None,
        instance_token: str | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self.node_id = node_id
        self.instance_token = instance_token or process_token()
        self._heartbeat_ttl_ms = to_milliseconds(heartbeat_ttl)
        self._interval_ms = to_milliseconds(interval or heartbeat_ttl)
        grace = (
            foreign_dead_node_grace
            if foreign_dead_node_grace is not None
            else heartbeat_ttl * FOREIGN_GRACE_TTLS
        )
        self._foreign_grace_ms = grace // timedelta(milliseconds=1)
        self._registry_ttl_ms = to_milliseconds(REGISTRY_TTL)
        self._registry_ticks = duration_ticks(REGISTRY_TTL)
        self._warned: set[str] = set()

    def on_client(self, client: redis.Redis) -> NodeRegistry:
        """The same node's registry (TTLs, grace, instance token) on another client."""
        twin = copy.copy(self)
        twin._client = client
        twin._warned = set()
        return twin

    def beat(
        self, scan_lease: timedelta | None = None, *, first: bool = False, refuse_duplicate: bool = False
    ) -> Beat:
        """Write the heartbeat, keep the registry, and maybe take the scan lease.

        Args:
            scan_lease: When given, try to take the cluster-wide scan lease for
                this long; the node that gets it also finds the dead nodes.
            first: This process's first beat: a live heartbeat of another process under our
                node id is reported only when younger than one interval (an older one is a
                stopped process's). Later beats report any other token.
            refuse_duplicate: With ``first``, write nothing over another process's live
                heartbeat and raise.

        Raises:
            ConfigurationError: ``refuse_duplicate`` and another live process uses our node id.
            RedisUnavailableError: Redis did not answer.
            KeyTypeError: The registry or a bookkeeping key holds another Redis type.
        """
        keys = self._keys
        check = ("refuse" if refuse_duplicate else "first") if first else "later"
        with translate_errors("heartbeat"):
            reply = _BEAT(
                self._client,
                [
                    keys.heartbeat(self.node_id),
                    keys.registry,
                    keys.tickerq_nodes,
                    keys.scan_lease,
                    keys.registry_length,
                    keys.foreign_dead,
                    keys.unlisted,
                ],
                [
                    self.node_id,
                    self._heartbeat_ttl_ms,
                    self._registry_ttl_ms,
                    self._registry_ticks,
                    to_milliseconds(scan_lease) if scan_lease else 0,
                    keys.heartbeat_prefix,
                    self.instance_token,
                    check,
                    self._interval_ms,
                    self._foreign_grace_ms,
                ],
            )
        now, added, repaired, scanned, dead, gone, restored, duplicate = reply
        if repaired:
            log.warning("the node registry %s was corrupted; rebuilt it from tickerq's nodes", keys.registry)
        if restored:
            log.info(
                "put %d tickerq node(s) back into the node registry %s (rewritten by another writer)",
                restored,
                keys.registry,
            )
        found = self._duplicate(duplicate) if duplicate else None
        return Beat(
            timestamp_ms=int(now),
            registered=bool(added),
            repaired=bool(repaired),
            dead=_texts(dead) if scanned else None,
            foreign_removed=_texts(gone),
            restored=int(restored),
            duplicate=found,
        )

    def _duplicate(self, reply: list[bytes | int]) -> DuplicateNode:
        raw_token, age, refused = reply
        found = DuplicateNode(token=_text(raw_token), age_ms=int(age), refused=bool(refused))  # type: ignore[arg-type]
        who = (
            f"another process (instance {found.token})"
            if found.token
            else "a process that is not tickerq (a TickerQ .NET node?)"
        )
        age_text = f"{found.age_ms / 1000:.1f} s ago" if found.age_ms >= 0 else "at an unknown time"
        message = (
            f"node_identifier={self.node_id!r} is also used by {who}: its heartbeat in "
            f"{self._keys.heartbeat(self.node_id)} was written {age_text}. Two processes with one "
            "node identifier beat one key, so neither's death is detected: give every process its "
            'own (e.g. f"{socket.gethostname()}-{os.getpid()}"). A process that stopped less '
            "than one heartbeat interval ago also shows up here."
        )
        if found.refused:
            raise ConfigurationError(f"{message} Refused to start (on_duplicate_node='refuse').")
        if found.token not in self._warned:
            self._warned.add(found.token)
            log.warning("%s", message)
        return found

    def health(self) -> NodeHealthStatus:
        """Registered and dead nodes, read in one round trip.

        Registered nodes are those in the registry plus tickerq nodes it lacks (dropped by a
        .NET node's rewrite, or dead and not yet handled). A corrupted registry is logged.
        """
        registered, dead = self._nodes("health")
        return NodeHealthStatus(registered=registered, dead=dead)

    def registered(self) -> tuple[str, ...]:
        """The registered nodes (as in :meth:`health`), without checking heartbeats."""
        return self._nodes("registered")[0]

    def dead(self) -> tuple[str, ...]:
        """The registered nodes without a heartbeat key; only those cross the wire."""
        return self._nodes("dead")[1]

    def _nodes(self, what: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        keys = self._keys
        with translate_errors("node health"):
            status, registered, dead = _NODES(
                self._client,
                [keys.registry, keys.tickerq_nodes, keys.registry_length, keys.unlisted],
                [keys.heartbeat_prefix, what],
            )
        if _text(status) == "corrupt":
            log.warning(
                "the node registry %s is corrupted; the next heartbeat scan repairs it", keys.registry
            )
        return _texts(registered), _texts(dead)

    def remove(self, node_ids: Iterable[str]) -> list[str]:
        """Atomically drop nodes from the registry and tickerq's nodes, only those still without a heartbeat.

        Returns:
            The ids that were removed.
        """
        ids = list(node_ids)
        if not ids:
            return []
        keys = self._keys
        with translate_errors("remove_nodes"):
            removed = _REMOVE(
                self._client,
                [
                    keys.registry,
                    keys.tickerq_nodes,
                    keys.registry_length,
                    keys.foreign_dead,
                    keys.unlisted,
                    *(keys.heartbeat(node) for node in ids),
                ],
                [self._registry_ttl_ms, self._registry_ticks, keys.heartbeat_prefix, *ids],
            )
        return [_text(node) for node in removed]
