"""The node registry: heartbeats, membership and dead-node detection.

Keys follow the spec exactly: ``{instance}hb:{node}`` holds
``{"node": id, "ts": unix_ms}`` with TTL = interval + grace, and
``{instance}nodes:registry`` holds a JSON array of node ids with a 30-day
sliding TTL. A set at ``{instance}tq:nodes`` mirrors the registry so that a
heartbeat checks membership in O(1): the array is rewritten only when
membership changes, and its TTL is refreshed without rewriting it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

import attrs
import redis

from tickerq.durations import to_milliseconds
from tickerq.redis.keys import Keys
from tickerq.redis.scripts import LuaScript
from tickerq.redis.translate import translate_errors

__all__ = ["REGISTRY_TTL", "Beat", "NodeHealthStatus", "NodeRegistry"]

log = logging.getLogger(__name__)

#: The registry's sliding expiration, as in the spec.
REGISTRY_TTL = timedelta(days=30)

_BEAT = LuaScript("heartbeat")
_NODES = LuaScript("nodes")
_REMOVE = LuaScript("remove_nodes")


@attrs.frozen(kw_only=True)
class NodeHealthStatus:
    """Counts of registered, dead and healthy nodes, with the ids behind them."""

    registered: tuple[str, ...]
    dead: tuple[str, ...]

    @property
    def total_nodes(self) -> int:
        """How many nodes the registry lists."""
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
class Beat:
    """What one heartbeat did. ``dead`` is None unless this beat ran the scan."""

    timestamp_ms: int
    registered: bool
    repaired: bool
    dead: tuple[str, ...] | None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class NodeRegistry:
    """Registry operations for one node; each is one round trip.

    Args:
        client: The application's redis-py client.
        keys: Key names for the instance.
        node_id: This node's identifier.
        heartbeat_ttl: TTL of this node's heartbeat key (interval + grace).
    """

    def __init__(self, client: redis.Redis, keys: Keys, node_id: str, heartbeat_ttl: timedelta) -> None:
        self._client = client
        self._keys = keys
        self.node_id = node_id
        self._heartbeat_ttl_ms = to_milliseconds(heartbeat_ttl)
        self._registry_ttl_ms = to_milliseconds(REGISTRY_TTL)

    def beat(self, scan_lease: timedelta | None = None) -> Beat:
        """Write the heartbeat, keep the registry, and maybe take the scan lease.

        Args:
            scan_lease: When given, try to take the cluster-wide scan lease for
                this long; the node that gets it also finds the dead nodes.

        Raises:
            RedisUnavailableError: Redis did not answer.
            KeyTypeError: The registry or index key holds another Redis type.
        """
        keys = self._keys
        with translate_errors("heartbeat"):
            reply = _BEAT(
                self._client,
                [keys.heartbeat(self.node_id), keys.registry, keys.node_index, keys.scan_lease],
                [
                    self.node_id,
                    self._heartbeat_ttl_ms,
                    self._registry_ttl_ms,
                    to_milliseconds(scan_lease) if scan_lease else 0,
                    keys.heartbeat_prefix,
                ],
            )
        now, added, repaired, scanned, dead = reply
        if repaired:
            log.warning("the node registry %s was corrupted; rebuilt it from the node index", keys.registry)
        return Beat(
            timestamp_ms=int(now),
            registered=bool(added),
            repaired=bool(repaired),
            dead=tuple(_text(node) for node in dead) if scanned else None,
        )

    def health(self) -> NodeHealthStatus:
        """Registered and dead nodes, read in one round trip; changes nothing.

        A corrupted registry is logged and read from the node index instead.
        """
        keys = self._keys
        with translate_errors("node health"):
            status, registered, dead = _NODES(
                self._client, [keys.registry, keys.node_index], [keys.heartbeat_prefix]
            )
        if _text(status) == "corrupt":
            log.warning("the node registry %s is corrupted; the next heartbeat repairs it", keys.registry)
        return NodeHealthStatus(
            registered=tuple(_text(node) for node in registered), dead=tuple(_text(node) for node in dead)
        )

    def remove(self, node_ids: Iterable[str]) -> list[str]:
        """Atomically drop nodes from the registry, only those still without a heartbeat.

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
                [keys.registry, keys.node_index, *(keys.heartbeat(node) for node in ids)],
                [self._registry_ttl_ms, *ids],
            )
        return [_text(node) for node in removed]
